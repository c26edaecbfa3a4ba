"""The console essentials' store side, one contract on three stores: the in-memory fake of
the core's fast tests, SqlDeskStore on a real SQLite file and on a real PostgreSQL server.
Search over every conversation (text, customer, channel, status, dates, pages) and a
customer's history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bot.core import csat
from bot.core.desk import SearchQuery
from bot.core.errors import ConflictError, NotFoundError
from bot.core.ports import ConversationStore, DeskStore
from bot.core.records import Route, Turn
from bot.settings import ConsoleSettings
from bot.store.accounts import SqlAccountStore
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from tests.fakes.clock import ManualClock
from tests.fakes.store import InMemoryConversationStore, InMemoryDeskStore
from tests.helpers import angry, needs_postgres, pg_schema, understanding

Stores = tuple[ConversationStore, DeskStore]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=needs_postgres),
    ]
)
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Stores]:
    if request.param == "memory":
        memory = InMemoryConversationStore(clock)
        await memory.start()
        try:
            yield memory, InMemoryDeskStore(memory)
        finally:
            await memory.stop()
        return
    if request.param == "sqlite":
        store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", clock=clock)
        await store.start()
        try:
            yield store, SqlDeskStore(store)
        finally:
            await store.stop()
        return
    async with pg_schema() as url:
        store = SqlConversationStore(url, clock=clock)
        await store.start()
        try:
            yield store, SqlDeskStore(store)
        finally:
            await store.stop()


async def turn(
    store: ConversationStore, conversation_id: str, text: str, route: Route, **extra: object
) -> int:
    """A customer message and what the bot did with it (a reply unless an agent has it)."""
    received = await store.receive(conversation_id, text)
    await store.record_turn(
        conversation_id,
        Turn(
            message_id=received.message.id,
            understanding=understanding(),
            route=route,
            latency_ms=5.0,
            reply_text=None if route == Route.AGENT else f"re: {text}",
            **extra,  # type: ignore[arg-type]
        ),
    )
    return received.message.id


async def three_customers(stores: Stores, clock: ManualClock) -> tuple[str, str, str]:
    """Ada on REST (escalated, resolved, yesterday), Ada again in the widget (the bot
    answered, today) and an unnamed Telegram sender (waiting in the queue, today)."""
    store, desk = stores
    ada = (await store.conversation("rest", "ada-1", "Ada Lovelace")).id
    await turn(store, ada, "my parcel never arrived", Route.HANDOFF, escalation=angry())
    await store.claim(ada, "ana")
    await desk.close(ada, "ana", False, "resolved", "Glad we sorted it out.")
    clock.advance(days=1)
    widget = (await store.conversation("widget", "w-9f2c", "ada lovelace")).id
    await turn(store, widget, "where is my PARCEL", Route.ANSWER)
    clock.advance(minutes=5)
    telegram = (await store.conversation("telegram", "t-77")).id
    await turn(store, telegram, "100%_off code does not work", Route.HANDOFF, escalation=angry())
    return ada, widget, telegram


async def found(desk: DeskStore, **query: object) -> list[str]:
    page = await desk.search(SearchQuery(**query))  # type: ignore[arg-type]
    return [hit.conversation.id for hit in page.hits]


async def test_search_finds_conversations_by_text_customer_channel_status_and_dates(
    stores: Stores, clock: ManualClock
) -> None:
    _, desk = stores
    start = clock.now
    ada, widget, telegram = await three_customers(stores, clock)

    # Everything, most recently active first; the resolved conversation is there.
    assert await found(desk) == [telegram, widget, ada]
    # Text in any message, case ignored; the snippet is the newest message that matched.
    page = await desk.search(SearchQuery(text="parcel"))
    assert [h.conversation.id for h in page.hits] == [widget, ada] and page.total == 2
    assert [h.snippet.text for h in page.hits if h.snippet] == [
        "re: where is my PARCEL",
        "re: my parcel never arrived",
    ]
    # LIKE's wildcards are searched for literally.
    assert await found(desk, text="100%_") == [telegram]
    assert await found(desk, text="%") == [telegram]
    assert await found(desk, text="nothing like this") == []
    # The customer's name or sender id.
    assert await found(desk, customer="ADA") == [widget, ada]
    assert await found(desk, customer="t-7") == [telegram]
    assert await found(desk, channel="telegram") == [telegram]
    # Status: with the bot, resolved (back with the bot after an agent), waiting.
    assert await found(desk, status="bot") == [widget, ada]
    assert await found(desk, status="resolved") == [ada]
    assert await found(desk, status="waiting") == [telegram]
    assert await found(desk, status="claimed") == []
    assert await found(desk, text="parcel", status="resolved", customer="lovelace") == [ada]
    # Dates: a message in [since, until).
    first_day = {"since": start, "until": start + timedelta(hours=1)}
    assert await found(desk, **first_day) == [ada]
    assert await found(desk, since=start + timedelta(days=1)) == [telegram, widget]
    assert await found(desk, text="parcel", since=start + timedelta(hours=2)) == [widget]

    # Pages: the same order, cut; the total counts every match.
    second = await desk.search(SearchQuery(page=2, per_page=2))
    assert [h.conversation.id for h in second.hits] == [ada]
    assert (second.total, second.pages) == (3, 2)
    assert (await desk.search(SearchQuery(page=3, per_page=2))).hits == ()
    # Each hit has its latest escalation and its size.
    [hit] = (await desk.search(SearchQuery(status="resolved"))).hits
    assert hit.escalation is not None and hit.escalation.outcome == "resolved"
    assert hit.messages == 3  # the question, the bot's hand-off reply, the agent's notice
    [waiting] = (await desk.search(SearchQuery(channel="telegram"))).hits
    assert waiting.escalation is not None and waiting.escalation.status == "open"
    [plain] = (await desk.search(SearchQuery(channel="widget"))).hits
    assert plain.escalation is None and plain.snippet is not None


async def test_history_shows_earlier_hand_offs_and_the_same_customers_other_conversations(
    stores: Stores, clock: ManualClock
) -> None:
    store, desk = stores
    ada, widget, telegram = await three_customers(stores, clock)
    # Ada comes back on REST, angry again: the same conversation, a second hand-off.
    clock.advance(hours=1)
    await turn(store, ada, "it happened again!", Route.HANDOFF, escalation=angry())

    history = await desk.history(ada)
    assert [e.outcome for e in history.episodes] == ["resolved"]  # the open one is current
    assert [h.conversation.id for h in history.others] == [widget]
    assert history.others[0].snippet is not None
    assert history.others[0].snippet.text == "re: where is my PARCEL"
    # Her widget conversation sees the REST one; the unnamed sender has no others.
    assert [h.conversation.id for h in (await desk.history(widget)).others] == [ada]
    unnamed = await desk.history(telegram)
    assert (unnamed.episodes, unnamed.others) == ((), ())
    with pytest.raises(NotFoundError):
        await desk.history("0" * 32)


async def test_canned_responses_and_notes_are_kept(stores: Stores, clock: ManualClock) -> None:
    store, desk = stores
    ada, widget, _ = await three_customers(stores, clock)
    first = await desk.save_canned(None, "late", "Parcel late", "Sorry {name}!", "ana")
    clock.advance(minutes=1)
    second = await desk.save_canned(None, "hello", "Hello", "Hi, {agent} here.", "bo")
    assert [c.shortcut for c in await desk.canned_responses()] == ["hello", "late"]
    with pytest.raises(ConflictError, match="'late' is taken"):
        await desk.save_canned(None, "late", "Twice", "again", "bo")
    with pytest.raises(ConflictError):
        await desk.save_canned(second.id, "late", "Renamed onto another", "x", "bo")
    edited = await desk.save_canned(first.id, "late2", "Parcel late", "Sorry!", "bo")
    assert (edited.id, edited.shortcut, edited.author) == (first.id, "late2", "bo")
    assert edited.created_at == first.created_at and edited.updated_at == clock.now
    await desk.delete_canned(second.id)
    with pytest.raises(NotFoundError):
        await desk.delete_canned(second.id)
    with pytest.raises(NotFoundError):
        await desk.save_canned(second.id, "gone", "Gone", "x", "bo")
    assert [(c.shortcut, c.text) for c in await desk.canned_responses()] == [("late2", "Sorry!")]

    note = await desk.add_note(ada, "ana", "called her back, refund sent")
    await desk.add_note(widget, "bo", "another conversation's note")
    view = await desk.view(ada)
    assert [(n.id, n.author, n.text) for n in view.notes] == [
        (note.id, "ana", "called her back, refund sent")
    ]
    assert all("refund sent" not in m.text for m in await store.transcript(ada))
    with pytest.raises(NotFoundError):
        await desk.add_note("0" * 32, "ana", "lost")


async def test_transfer_moves_the_claim_and_colleagues_are_the_accounts(
    stores: Stores, clock: ManualClock
) -> None:
    store, desk = stores
    _, _, telegram = await three_customers(stores, clock)
    clock.advance(minutes=1)
    assigned = await desk.transfer(telegram, "ana", False, "bo")
    assert (assigned.status, assigned.assignee, assigned.claimed_at) == ("claimed", "bo", clock.now)
    conversation = await store.get_conversation(telegram)
    assert (conversation.status, conversation.assignee) == ("claimed", "bo")
    with pytest.raises(ConflictError, match="claimed by bo"):
        await desk.transfer(telegram, "ana", False, "ana")
    assert (await desk.transfer(telegram, "olga", True, "ana")).assignee == "ana"
    assert [i.escalation.assignee for i in await desk.queue()] == ["ana"]
    if isinstance(desk, SqlDeskStore):
        assert isinstance(store, SqlConversationStore)
        accounts = SqlAccountStore(store, ConsoleSettings())
        for name in ("bo", "ana", "cy"):
            await accounts.add(name, "agent", "a long enough password")
        await accounts.disable("cy")
        assert await desk.colleagues() == ["ana", "bo"]


async def test_the_dashboard_sums_up_the_ratings_of_its_window(
    stores: Stores, clock: ManualClock
) -> None:
    store, desk = stores
    ada, widget, telegram = await three_customers(stores, clock)  # no rating yet
    assert (await desk.dashboard(7)).csat.count == 0
    for conversation_id, rating in ((ada, 5), (widget, 4), (telegram, 4)):
        received = await store.receive(conversation_id, str(rating))
        await store.record_turn(
            conversation_id,
            Turn(
                message_id=received.message.id,
                understanding=understanding(),
                route=csat.ROUTE,
                latency_ms=3.0,
                details={"csat": rating, "agent": "ana"},
                reply_text="Thanks!",
            ),
        )
    # Some other turn's details never count.
    await turn(store, widget, "5", Route.ANSWER)
    figures = (await desk.dashboard(7)).csat
    assert figures.counts == (0, 0, 0, 2, 1) and round(figures.mean or 0, 3) == 4.333
    clock.advance(days=8)
    assert (await desk.dashboard(7)).csat.count == 0

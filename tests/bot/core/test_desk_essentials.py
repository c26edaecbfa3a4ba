"""The console essentials' core decisions, fast: canned responses with variables, private
notes (never sent), search input rules; the real `AgentDesk` on the in-memory stores (the
harness of test_service.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.core.csat import QUESTION, SCORES, CsatFigures, parse_rating
from bot.core.desk import (
    SearchQuery,
    check_search,
    conversation_variables,
    fill_variables,
)
from bot.core.errors import BadRequestError, ConflictError, NotFoundError
from bot.core.records import Agent, AgentRole, Conversation, ConversationStatus, Role, StoredMessage
from tests.bot.core.test_service import InMemoryCore, in_memory_core, message

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
async def core() -> AsyncIterator[InMemoryCore]:
    async with in_memory_core() as started:
        yield started


def said(text: str, *entities: dict[str, object], role: Role = Role.CUSTOMER) -> StoredMessage:
    return StoredMessage(0, "c", role, text, NOW, details={"entities": list(entities)})


def test_variables_are_filled_and_unknown_ones_kept_for_the_agent() -> None:
    text, missing = fill_variables(
        "Hi {name}, {agent} here. Order {order_id}: {order_id}. {Nope} {tracking}, {x",
        {"name": "Ada", "agent": "ana", "order_id": "BC-1"},
    )
    assert text == "Hi Ada, ana here. Order BC-1: BC-1. {Nope} {tracking}, {x"
    assert missing == ("tracking",)


def test_a_conversation_gives_the_name_the_agent_and_the_latest_entity_values() -> None:
    conversation = Conversation("c", "widget", "w1", ConversationStatus.BOT, NOW, NOW, "Ada King")
    agent = Agent(1, "ana", AgentRole.AGENT, NOW)
    messages = [
        said("order bc-1", {"type": "order_id", "value": "BC-1", "text": "bc-1"}),
        said("no, bc-2", {"type": "order_id", "text": "BC-2"}, {"type": "amount", "value": 24.5}),
        said("bot said bc-9", {"type": "order_id", "value": "BC-9"}, role=Role.BOT),
        said("junk", {"type": "Bad Type", "value": "x"}, {"type": "flag", "value": True}),
    ]
    assert conversation_variables(conversation, agent, messages) == {
        "agent": "ana",
        "name": "Ada King",
        "first_name": "Ada",
        "order_id": "BC-2",
        "amount": "24.5",
    }
    nameless = Conversation("c", "widget", "w1", ConversationStatus.BOT, NOW, NOW)
    assert conversation_variables(nameless, agent, []) == {"agent": "ana"}


def test_search_rules() -> None:
    cleaned = check_search(SearchQuery(text="  parcel ", customer=" ", status="resolved"))
    assert (cleaned.text, cleaned.customer, cleaned.status) == ("parcel", None, "resolved")
    for bad, says in (
        (SearchQuery(status="open"), "status must be one of"),
        (SearchQuery(page=0), "page must be"),
        (SearchQuery(per_page=101), "per_page must be"),
        (SearchQuery(text="x" * 201), "at most 200"),
        (SearchQuery(since=NOW, until=NOW), "the date range is empty"),
    ):
        with pytest.raises(BadRequestError, match=says):
            check_search(bad)


async def test_canned_responses_are_the_teams_filled_for_the_open_conversation(
    core: InMemoryCore,
) -> None:
    ana, bo = core.agent("ana"), core.agent("bo")
    await core.service.request_handoff(message("/human", "ada"))
    cid = (await core.conversation()).id
    late = await core.desk.save_canned(ana, " Late ", "Parcel late", "Sorry {name}, {agent} here.")
    assert (late.shortcut, late.author) == ("late", "ana")
    await core.desk.save_canned(ana, "track", "Tracking", "Your tracking: {tracking}")
    with pytest.raises(ConflictError, match="'late' is taken"):
        await core.desk.save_canned(bo, "late", "Again", "another text")
    with pytest.raises(BadRequestError, match="shortcut"):
        await core.desk.save_canned(bo, "no spaces", "T", "text")
    with pytest.raises(BadRequestError, match="text"):
        await core.desk.save_canned(bo, "empty", "T", "   ")

    filled = await core.desk.canned_responses(bo, cid)
    assert [(f.response.shortcut, f.text, f.missing) for f in filled] == [
        ("late", "Sorry Ada, bo here.", ()),
        ("track", "Your tracking: {tracking}", ("tracking",)),
    ]
    # A colleague edits it (keeping its shortcut); then deletes it.
    edited = await core.desk.save_canned(bo, "late", "Parcel late", "Hello {first_name}!", late.id)
    assert (edited.id, edited.text, edited.author) == (late.id, "Hello {first_name}!", "bo")
    assert [f.text for f in await core.desk.canned_responses(bo, cid)][0] == "Hello Ada!"
    await core.desk.delete_canned(bo, late.id)
    with pytest.raises(NotFoundError):
        await core.desk.delete_canned(bo, late.id)
    with pytest.raises(NotFoundError):
        await core.desk.save_canned(bo, "late", "T", "text", late.id)
    assert [f.response.shortcut for f in await core.desk.canned_responses(bo)] == ["track"]


async def test_a_private_note_is_shown_to_agents_and_never_sent(core: InMemoryCore) -> None:
    ana = core.agent("ana")
    await core.service.request_handoff(message("/human", "ada"))
    cid = (await core.conversation()).id
    delivered = len(core.deliverer.delivered)
    note = await core.desk.add_note(cid, ana, "  VIP customer, refund approved by Olga  ")
    assert (note.author, note.text) == ("ana", "VIP customer, refund approved by Olga")
    assert [(n.id, n.text) for n in (await core.desk.view(cid)).notes] == [(note.id, note.text)]
    assert ("note", cid) in [
        (e["type"], e.get("conversation_id")) for e in await core.console.events()
    ]
    # Not a message: nothing was pushed, the customer's transcript does not hold it.
    assert len(core.deliverer.delivered) == delivered
    assert all("VIP" not in m.text for m in await core.transcript())
    with pytest.raises(BadRequestError, match="empty"):
        await core.desk.add_note(cid, ana, " ")
    with pytest.raises(NotFoundError):
        await core.desk.add_note("0" * 32, ana, "lost")


async def test_a_conversation_is_assigned_and_transferred_to_a_colleague(
    core: InMemoryCore,
) -> None:
    sam, kim, boss = core.agent("sam"), core.agent("kim"), core.agent("boss", AgentRole.OPERATOR)
    core.desk_store.tables.agents.extend(["sam", "kim", "boss"])
    await core.service.request_handoff(message("/human", "ada"))
    cid = (await core.conversation()).id
    assert await core.desk.colleagues() == ["boss", "kim", "sam"]

    # From the queue, anyone may assign it; the customer hears who joined.
    assigned = await core.desk.transfer(cid, sam, "kim")
    assert (assigned.status, assigned.assignee) == ("claimed", "kim")
    assert (await core.conversation()).assignee == "kim"
    assert core.deliverer.delivered[-1][1].text.startswith("kim")
    # Only the assignee (or an operator) passes a claim on.
    with pytest.raises(ConflictError, match="claimed by kim"):
        await core.desk.transfer(cid, sam, "sam")
    moved = await core.desk.transfer(cid, kim, "sam")
    assert moved.assignee == "sam" and moved.claimed_at == core.clock.now
    taken = await core.desk.transfer(cid, boss, "kim")
    assert taken.assignee == "kim"
    sent = len(core.deliverer.delivered)
    assert (await core.desk.transfer(cid, kim, "kim")).assignee == "kim"  # no-op, no notice
    assert len(core.deliverer.delivered) == sent
    events = [(e["type"], e.get("to")) for e in await core.console.events()]
    assert events.count(("escalation.transferred", "kim")) == 3
    # Nobody else: a name that is no account; nothing unresolved after a resolve.
    with pytest.raises(BadRequestError, match="pick one of boss, kim, sam"):
        await core.desk.transfer(cid, kim, "mallory")
    await core.desk.resolve(cid, kim)
    with pytest.raises(NotFoundError, match="no open escalation to transfer"):
        await core.desk.transfer(cid, kim, "sam")


# -- CSAT ----------------------------------------------------------------------------------------


def test_ratings_are_read_from_what_customers_tap_or_write() -> None:
    for text, rating in (("4", 4), (" 5 ", 5), ("3/5", 3), ("2 stars", 2), ("⭐⭐⭐⭐", 4)):
        assert parse_rating(text) == rating, text
    for text in ("0", "6", "45", "4 is my order number", "thanks!", "", "⭐⭐⭐⭐⭐⭐"):
        assert parse_rating(text) is None, text
    figures = CsatFigures.of([5, 4, 4, None, "x", 9, True, 1])
    assert figures.counts == (1, 0, 0, 2, 1) and figures.count == 4
    assert figures.mean == 3.5 and CsatFigures().mean is None


async def test_after_resolve_the_customer_rates_the_help_and_the_dashboard_counts_it(
    core: InMemoryCore,
) -> None:
    sam, boss = core.agent("sam"), core.agent("boss", AgentRole.OPERATOR)
    for sender, rating in (("ada", "5"), ("bob", "3/5")):
        await core.service.request_handoff(message("/human", sender))
        cid = (await core.conversation(sender)).id
        await core.desk.claim(cid, sam)
        await core.desk.resolve(cid, sam)
        # The question goes out on the customer's channel, with the scores as buttons.
        _, question = core.deliverer.delivered[-1]
        assert (question.text, question.quick_replies) == (QUESTION, SCORES)
        result = await core.say(rating, sender=sender)
        [thanks] = result.replies
        assert thanks.text == f"Thank you for rating us {rating[0]}/5!"
        said = [m for m in await core.transcript(sender) if m.role == Role.CUSTOMER][-1]
        assert (said.route, said.details["csat"], said.details["agent"]) == (
            "csat",
            int(rating[0]),
            "sam",
        )
    # Only right after the question: a later "4" is the bot's to answer.
    later = await core.say("4", sender="ada")
    assert all("rating" not in r.text for r in later.replies)
    dashboard = await core.desk.dashboard(boss, 7)
    assert dashboard.csat.counts == (0, 0, 1, 0, 1) and dashboard.csat.mean == 4.0


async def test_no_rating_is_asked_after_a_hand_back_and_other_answers_go_to_the_bot(
    core: InMemoryCore,
) -> None:
    sam = core.agent("sam")
    await core.service.request_handoff(message("/human", "ada"))
    cid = (await core.conversation()).id
    await core.desk.claim(cid, sam)
    await core.desk.hand_back(cid, sam)
    assert all(r.text != QUESTION for _, r in core.deliverer.delivered)
    await core.service.request_handoff(message("/human", "ada"))
    await core.desk.claim(cid, sam)
    await core.desk.resolve(cid, sam)
    result = await core.say("where is my order", sender="ada")
    said = [m for m in await core.transcript() if m.role == Role.CUSTOMER][-1]
    assert said.route != "csat" and "csat" not in said.details
    assert all("rating" not in r.text for r in result.replies)


async def test_the_rating_texts_come_from_the_routing_file_and_csat_can_be_switched_off() -> None:
    from tests.bot.core.test_service import ROUTING

    document = {
        **ROUTING,
        "messages": {
            **ROUTING["messages"],
            "csat_question": "How did {name} find our help? 1-5",
            "csat_thanks": "Merci, {rating}/5!",
        },
    }
    async with in_memory_core(document) as core:
        sam = core.agent("sam")
        await core.service.request_handoff(message("/human", "ada"))
        cid = (await core.conversation()).id
        await core.desk.claim(cid, sam)
        await core.desk.resolve(cid, sam)
        _, question = core.deliverer.delivered[-1]
        assert (question.text, question.quick_replies) == ("How did Ada find our help? 1-5", SCORES)
        [thanks] = (await core.say("4", sender="ada")).replies
        assert thanks.text == "Merci, 4/5!"
        # `handoff.csat: false`: nothing is asked after resolving.
        core.desk.ask_rating = False
        await core.service.request_handoff(message("/human", "ada"))
        await core.desk.claim(cid, sam)
        await core.desk.resolve(cid, sam)
        assert core.deliverer.delivered[-1][1].text != question.text
        assert [m.text for m in await core.transcript()][-1] == "Resolved, Ada. Write any time."

"""The answer library's core decisions, fast (issue 14, part 4): which question "Save as
approved answer" pairs a reply with, and what disabling, editing and approving an indexed
answer do to what the bot serves. The real service and `AgentDesk` on the in-memory fakes
(`in_memory_core` of test_service.py), the service wired to the desk store's decisions as
the app factory wires it to the database's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.core.desk import (
    LibraryQuery,
    MessageLabels,
    approval_draft,
    check_library,
    suggest_question,
)
from bot.core.errors import BadRequestError, NotFoundError
from bot.core.escalation import EscalationPolicy
from bot.core.library import AnswerControl, controlled
from bot.core.records import Answer, Feedback, Role, Route, StoredMessage
from bot.core.service import ConversationService
from bot.retrieval.sources import AnswerPair
from bot.settings import EscalationSettings
from tests.bot.core.test_service import (
    CHANNEL,
    MIN_ANSWER_SCORE,
    InMemoryCore,
    in_memory_core,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
REFUND = "where is my refund for the blue jacket?"
PERSONAL = "I checked BC-206315: the refund went out yesterday."
GENERAL = "Refunds reach your card within 5 working days."
PAIRS = (
    AnswerPair(REFUND, PERSONAL, "refund_status", "logs.jsonl:12", "conversation"),
    AnswerPair("when will my money come back", GENERAL, "refund_status", "faq.csv:3", "faq"),
    AnswerPair("do you ship abroad", "We ship to the EU and the UK.", None, "faq.csv:7", "faq"),
)


def msg(
    id: int,
    role: Role,
    text: str,
    intent: str | None = None,
    route: str | None = None,
) -> StoredMessage:
    return StoredMessage(id, "c", role, text, NOW, intent=intent, route=route)


# -- which question a reply answers ----------------------------------------------------------


def test_the_question_skips_the_hand_off_request_and_the_bots_notices() -> None:
    messages = [
        msg(1, Role.CUSTOMER, "hi", intent="greeting"),
        msg(2, Role.BOT, "Hi! How can I help?", route=Route.RESPONSE),
        msg(3, Role.CUSTOMER, REFUND, intent="refund_status"),
        msg(4, Role.BOT, "Could you rephrase that?", route=Route.REPHRASE),
        msg(5, Role.CUSTOMER, "I want a human", intent="talk_to_human"),
        msg(6, Role.BOT, "I'm handing you to a person.", route=Route.HANDOFF),
        msg(7, Role.SYSTEM, "ana joined the conversation."),
        msg(8, Role.AGENT, GENERAL, route=Route.AGENT),
    ]
    assert [m.id for m in suggest_question(messages, 8)] == [3]
    draft = approval_draft(messages, messages[-1])
    assert (draft.question, draft.intent) == (REFUND, "refund_status")


def test_hand_off_requests_and_small_talk_are_skipped_by_their_words_too() -> None:
    # Messages written while waiting for an agent are not classified: no intent to go by.
    messages = [
        msg(1, Role.CUSTOMER, "my parcel arrived damaged, the box was crushed"),
        msg(2, Role.CUSTOMER, "hello??"),
        msg(3, Role.CUSTOMER, "can I talk to a real person please"),
        msg(4, Role.CUSTOMER, "ok thanks"),
        msg(5, Role.AGENT, "Sorry! Send us a photo and we replace it."),
    ]
    assert [m.id for m in suggest_question(messages, 5)] == [1]
    # A longer message naming an agent is a question all the same.
    asked = msg(6, Role.CUSTOMER, "can an agent tell me whether the replacement ships today")
    assert [m.id for m in suggest_question([*messages, asked, msg(7, Role.AGENT, "Yes.")], 7)] == [
        6
    ]


def test_every_question_since_the_previous_answer_counts_and_earlier_ones_do_not() -> None:
    messages = [
        msg(1, Role.CUSTOMER, "do you ship abroad at all", intent="shipping"),
        msg(2, Role.AGENT, "We ship to the EU and the UK.", route=Route.AGENT),
        msg(3, Role.CUSTOMER, "thanks!", intent="thanks"),
        msg(4, Role.CUSTOMER, "how long does it take to Norway", intent="shipping"),
        msg(5, Role.CUSTOMER, "the order is BC-204719", intent="order_status"),
        msg(6, Role.AGENT, "3-5 days to Norway.", route=Route.AGENT),
    ]
    assert [m.id for m in suggest_question(messages, 6)] == [4, 5]
    draft = approval_draft(messages, messages[-1])
    assert draft.question == "how long does it take to Norway\nthe order is BC-204719"
    assert draft.intent == "shipping"
    assert [m.id for m in suggest_question(messages, 2)] == [1]


def test_with_only_a_hand_off_request_since_the_last_answer_the_earlier_question_is_taken() -> None:
    messages = [
        msg(1, Role.CUSTOMER, "my parcel arrived damaged", intent="damaged_item"),
        msg(2, Role.BOT, "Sorry! Send us a photo.", route=Route.ANSWER),
        msg(3, Role.CUSTOMER, "human please", intent="talk_to_human"),
        msg(4, Role.AGENT, "Hi, I'm ana: a replacement is on its way.", route=Route.AGENT),
    ]
    assert [m.id for m in suggest_question(messages, 4)] == [1]


def test_an_agents_intent_correction_decides_over_the_models() -> None:
    messages = [
        msg(1, Role.CUSTOMER, "where is my refund", intent="refund_status"),
        msg(2, Role.CUSTOMER, "good morning everyone", intent="refund_status"),
        msg(3, Role.AGENT, "Good morning! It went out yesterday.", route=Route.AGENT),
    ]
    assert [m.id for m in suggest_question(messages, 3)] == [1, 2]
    labels = {2: MessageLabels(intent="greeting", by="ana")}
    assert [m.id for m in suggest_question(messages, 3, labels)] == [1]
    relabelled = {1: MessageLabels(intent="refund_late", by="ana"), **labels}
    assert approval_draft(messages, messages[-1], relabelled).intent == "refund_late"


def test_without_any_question_the_last_customer_message_is_proposed_and_none_without_any() -> None:
    messages = [msg(1, Role.CUSTOMER, "hi", intent="greeting"), msg(2, Role.AGENT, "Hello!")]
    draft = approval_draft(messages, messages[-1])
    assert ([m.id for m in draft.questions], draft.question, draft.intent) == ([1], "hi", None)
    alone = msg(1, Role.AGENT, "Welcome!")
    assert approval_draft([alone], alone).questions == ()


# -- serving what the library decided -------------------------------------------------------


def control(source: str, disabled: bool = False, answer: str | None = None) -> AnswerControl:
    return AnswerControl(source, disabled, answer, "x", None, "ana", NOW)


def test_disabled_answers_are_left_out_and_edited_ones_served_with_the_agents_text() -> None:
    found = [
        Answer(PERSONAL, 0.9, "logs.jsonl:12", REFUND),
        Answer(GENERAL, 0.8, "faq.csv:3", "when"),
        Answer("Order {x}", 0.7, "logs.jsonl:40", "q"),
    ]
    controls = {
        "logs.jsonl:12": control("logs.jsonl:12", disabled=True),
        "faq.csv:3": control("faq.csv:3", answer="Hi {name}, refunds take {days} days."),
    }
    kept, disabled = controlled(found, controls, {"days": "5"})
    assert [(a.source, a.text) for a in kept] == [
        ("faq.csv:3", "Hi, refunds take 5 days."),
        ("logs.jsonl:40", "Order {x}"),
    ]
    assert [a.source for a in disabled] == ["logs.jsonl:12"]
    # An edit needing a detail the conversation has not given is not served.
    kept, _ = controlled(found[1:2], controls, {})
    assert kept == []


@asynccontextmanager
async def library_core() -> AsyncIterator[InMemoryCore]:
    """`in_memory_core` with its service reading the desk store's decisions and its desk
    listing `PAIRS` as the live index, as `bot/app/factory.py` wires them."""
    async with in_memory_core() as core:
        core.service = ConversationService(
            core.store,
            core.understander,
            core.answers,
            core.router,
            EscalationPolicy(EscalationSettings()),
            core.metrics,
            MIN_ANSWER_SCORE,
            bus=core.desk.bus,
            clock=core.clock,
            controls=core.desk_store,
        )
        core.desk.answer_pairs = lambda: PAIRS
        core.answers.add(PERSONAL, 0.9, question=REFUND, source="logs.jsonl:12")
        core.answers.add(GENERAL, 0.8, question=REFUND, source="faq.csv:3")
        yield core


async def served(core: InMemoryCore, sender: str) -> tuple[str, dict[str, Any]]:
    result = await core.say(REFUND, sender=sender, intent="refund_status")
    (reply,) = result.replies
    assert reply.route == Route.ANSWER
    asked = (await core.transcript(sender))[0]
    return reply.text, asked.details


async def test_a_disabled_answer_is_not_served_from_the_next_message_until_enabled() -> None:
    async with library_core() as core:
        ana = core.agent("ana")
        assert (await served(core, "c1"))[0] == PERSONAL
        entry = await core.desk.disable_answer(ana, "logs.jsonl:12")
        assert entry.control is not None and entry.control.disabled
        assert (entry.control.action, entry.control.author) == ("disabled", "ana")
        assert entry.usage.served == 1

        text, details = await served(core, "c2")
        assert text == GENERAL
        assert details["disabled"] == ["logs.jsonl:12"]
        # The search asked for one more answer per disabled one, to take its place.
        assert core.answers.searches[-1][1] == 3 + 1

        await core.desk.disable_answer(core.agent("bo"), "logs.jsonl:12", disabled=False)
        assert (await served(core, "c3"))[0] == PERSONAL
        (decision,) = await core.desk_store.answer_controls()
        assert (decision.disabled, decision.action, decision.author) == (False, "enabled", "bo")
        assert [e["type"] for e in await core.console.events()].count("answer.changed") == 2


async def test_an_edit_is_served_at_once_and_kept_as_an_approved_answer() -> None:
    async with library_core() as core:
        ana = core.agent("ana")
        await core.desk.disable_answer(ana, "logs.jsonl:12")
        clean = "  Refunds go out the day we receive the parcel; your bank needs 3-5 days.  "
        entry = await core.desk.edit_answer(ana, "logs.jsonl:12", clean)
        assert entry.served_text == clean.strip()
        assert entry.answer == PERSONAL  # the index's text, kept for the list
        text, details = await served(core, "c1")
        assert text == clean.strip()
        assert details["source"] == "logs.jsonl:12"  # the same indexed pair, edited
        (approved,) = core.desk_store.tables.approved
        assert (approved.question, approved.answer, approved.intent, approved.author) == (
            REFUND,
            clean.strip(),
            "refund_status",
            "ana",
        )
        # Editing again changes the same approved answer, with the intent the agent gives.
        await core.desk.edit_answer(core.agent("bo"), "logs.jsonl:12", "Within 5 days.", "refund")
        (approved,) = core.desk_store.tables.approved
        assert (approved.answer, approved.intent, approved.author) == (
            "Within 5 days.",
            "refund",
            "bo",
        )
        for bad, says in (("   ", "is empty"), ("x" * 4001, "at most 4000")):
            with pytest.raises(BadRequestError, match=says):
                await core.desk.edit_answer(ana, "logs.jsonl:12", bad)
        with pytest.raises(BadRequestError, match="neither a known intent"):
            await core.desk.edit_answer(ana, "logs.jsonl:12", "ok", "Bad Intent!")


async def test_approving_keeps_a_conversation_answer_once_and_refuses_trusted_ones() -> None:
    async with library_core() as core:
        ana = core.agent("ana")
        entry = await core.desk.approve_indexed(ana, "logs.jsonl:12")
        assert entry.control is not None and entry.control.action == "approved"
        again = await core.desk.approve_indexed(core.agent("bo"), "logs.jsonl:12")
        assert again.control is not None
        assert again.control.approved_answer_id == entry.control.approved_answer_id
        (approved,) = core.desk_store.tables.approved
        assert (approved.question, approved.answer, approved.conversation_id) == (
            REFUND,
            PERSONAL,
            None,
        )
        with pytest.raises(BadRequestError, match="faq answer, trusted as written"):
            await core.desk.approve_indexed(ana, "faq.csv:3")
        for action in (
            core.desk.approve_indexed(ana, "gone.jsonl:1"),
            core.desk.disable_answer(ana, "gone.jsonl:1"),
            core.desk.edit_answer(ana, "gone.jsonl:1", "text"),
        ):
            with pytest.raises(NotFoundError, match="holds no answer from 'gone.jsonl:1'"):
                await action
        # Enabling what a rebuilt index dropped is allowed: it only lifts the decision.
        entry = await core.desk.disable_answer(ana, "gone.jsonl:1", disabled=False)
        assert entry.control is not None and not entry.control.disabled


async def test_the_library_lists_use_and_ratings_filters_and_pages() -> None:
    async with library_core() as core:
        ana = core.agent("ana")
        for sender in ("c1", "c2"):
            await served(core, sender)
        await core.desk.disable_answer(ana, "logs.jsonl:12")
        await served(core, "c3")  # GENERAL now
        replies = [m for m in await core.transcript("c1") if m.role == Role.BOT]
        await core.service.record_customer_feedback(
            CHANNEL, "c1", Feedback(replies[0].id, rating="down")
        )
        page = await core.desk.library(LibraryQuery())
        assert [(e.source, e.usage.served, e.usage.up, e.usage.down) for e in page.entries] == [
            ("logs.jsonl:12", 2, 0, 1),
            ("faq.csv:3", 1, 0, 0),
            ("faq.csv:7", 0, 0, 0),
        ]
        assert (page.total, page.indexed, page.intents) == (3, 3, ("refund_status",))

        async def sources(**query: Any) -> list[str]:
            found = await core.desk.library(LibraryQuery(**query))
            return [e.source for e in found.entries]

        assert await sources(rated_down=True) == ["logs.jsonl:12"]
        assert await sources(disabled=True) == ["logs.jsonl:12"]
        assert await sources(kind="faq") == ["faq.csv:3", "faq.csv:7"]
        assert await sources(intent="refund_status", kind="faq") == ["faq.csv:3"]
        assert await sources(text="EU AND") == ["faq.csv:7"]
        assert await sources(text="faq.csv:3") == ["faq.csv:3"]
        await core.desk.edit_answer(ana, "faq.csv:7", "We ship everywhere in Europe.")
        assert await sources(text="everywhere") == ["faq.csv:7"]
        second = await core.desk.library(LibraryQuery(page=2, per_page=2))
        assert ([e.source for e in second.entries], second.pages) == (["faq.csv:7"], 2)


def test_library_query_rules() -> None:
    cleaned = check_library(LibraryQuery(text="  refund ", intent=" ", kind="faq"))
    assert (cleaned.text, cleaned.intent, cleaned.kind) == ("refund", None, "faq")
    for bad, says in (
        (LibraryQuery(kind="manual"), "kind must be one of conversation, faq, approved"),
        (LibraryQuery(page=0), "page must be"),
        (LibraryQuery(per_page=101), "per_page must be"),
        (LibraryQuery(text="x" * 201), "at most 200"),
    ):
        with pytest.raises(BadRequestError, match=says):
            check_library(bad)


# -- "Save as approved answer" through the desk ---------------------------------------------


async def test_saving_a_reply_pairs_it_with_the_customers_question_not_the_hand_off_request() -> (
    None
):
    async with in_memory_core() as core:
        ana = core.agent("ana")
        await core.say(REFUND, intent="refund_status")
        await core.say("I want a human", intent="talk_to_human")
        cid = (await core.conversation()).id
        await core.desk.claim(cid, ana)
        reply, _ = await core.desk.reply(cid, ana, GENERAL)

        draft = await core.desk.approval_draft(reply.id)
        assert (draft.question, draft.intent, draft.answer.text) == (
            REFUND,
            "refund_status",
            GENERAL,
        )
        await core.desk.approve_answer(ana, reply.id)
        # The agent edits the pair in the dialog; the edited pair is what is kept.
        await core.desk.approve_answer(
            ana,
            reply.id,
            question_message_id=draft.questions[0].id,
            question="Where is my refund?",
            intent="refund_status",
            answer="Refunds reach your card within 5 working days of our e-mail.",
        )
        first, edited = core.desk_store.tables.approved
        assert (first.question, first.answer, first.intent) == (REFUND, GENERAL, "refund_status")
        assert first.question_message_id == draft.questions[0].id
        assert (edited.question, edited.answer) == (
            "Where is my refund?",
            "Refunds reach your card within 5 working days of our e-mail.",
        )
        customer = next(m for m in await core.transcript() if m.role == Role.CUSTOMER)
        with pytest.raises(BadRequestError, match="only agents' replies"):
            await core.desk.approval_draft(customer.id)
        with pytest.raises(BadRequestError, match='"answer" is empty'):
            await core.desk.approve_answer(ana, reply.id, answer="  ")


async def test_an_edit_replaces_a_rated_down_original_and_its_own_ratings_count() -> None:
    async with library_core() as core:
        first = await core.say(REFUND, sender="c1", intent="refund_status")
        (reply,) = first.replies
        await core.service.record_customer_feedback(
            CHANNEL, "c1", Feedback(reply.message_id, rating="down")
        )
        assert (await served(core, "c2"))[0] == GENERAL  # demoted
        await core.desk.edit_answer(core.agent("ana"), "logs.jsonl:12", "Within 5 days.")
        assert (await served(core, "c3"))[0] == "Within 5 days."
        # A thumbs-down on the edited text demotes it in turn.
        edited = [m for m in await core.transcript("c3") if m.role == Role.BOT][0]
        await core.service.record_customer_feedback(
            CHANNEL, "c3", Feedback(edited.id, rating="down")
        )
        assert (await served(core, "c4"))[0] == GENERAL


async def test_a_decision_holds_only_for_the_pair_it_was_taken_about() -> None:
    async with library_core() as core:
        await core.desk.disable_answer(core.agent("ana"), "logs.jsonl:12")
        (decision,) = await core.desk_store.answer_controls()
        assert decision.question == REFUND
        assert (await served(core, "c1"))[0] == GENERAL
        # The logs were rewritten: line 12 now holds another pair; the decision is not about it.
        other = AnswerPair("can I pay by card", "Yes, every card.", None, "logs.jsonl:12", "faq")
        core.desk.answer_pairs = lambda: (other, *PAIRS[1:])
        core.answers.entries.clear()
        core.answers.add("Yes, every card.", 0.9, question=other.question, source=other.source)
        found = await core.say(other.question, sender="c2", intent="payment")
        assert found.replies[0].text == "Yes, every card."
        page = await core.desk.library(LibraryQuery(disabled=True))
        assert page.entries == ()
        [entry] = (await core.desk.library(LibraryQuery(text="every card"))).entries
        assert entry.control is None

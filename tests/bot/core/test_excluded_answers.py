"""The answer library, part 2 (issue 14, parts 3 and 4), fast, on the in-memory fakes: the
answers curation excluded (listed the most frequent first, filtered, paged) and "Approve a
clean version" of one; and an edited answer served once, not twice, after its approved
replacement joined the index (`controlled`, `replaced_by`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.core.desk import LibraryQuery
from bot.core.errors import BadRequestError, NotFoundError
from bot.core.library import (
    AnswerControl,
    ExcludedAnswer,
    approved_source,
    controlled,
    excluded_page,
    replaced_by,
)
from bot.core.records import Answer
from bot.retrieval.sources import AnswerPair
from tests.bot.core.test_answer_library import GENERAL, PAIRS, PERSONAL, REFUND, library_core

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
EXCLUDED = (
    ExcludedAnswer(
        "where is {order_id}?",
        "I checked BC-204719: it left our warehouse yesterday.",
        ("first-person action", "states one order's status"),
        "logs.jsonl:3",
        "order_status",
        7,
    ),
    ExcludedAnswer(
        "can you call me?",
        "Sure, I'll call you at +49 30 555 0101.",
        ("phone number",),
        "logs.jsonl:9",
        None,
        2,
    ),
)


def edit(
    source: str, answer: str | None, approved_id: int | None, question: str | None = None
) -> AnswerControl:
    return AnswerControl(source, False, answer, "edited", approved_id, "ana", NOW, question)


# -- pure rules --------------------------------------------------------------------------------


def test_an_edited_original_and_its_indexed_approved_answer_are_served_once() -> None:
    clean = "Refunds reach your card within 5 working days of our receiving the parcel."
    found = [
        Answer(PERSONAL, 0.91, "logs.jsonl:12", REFUND),
        Answer(clean, 0.88, approved_source(4), "refund time?"),
        Answer(GENERAL, 0.80, "faq.csv:3", "when"),
    ]
    controls = {"logs.jsonl:12": edit("logs.jsonl:12", clean, 4)}
    kept, disabled = controlled(found, controls)
    # The original (best score) serves the edit; the approved pair with the same text is
    # dropped, so the next different answer is second (what the score margin compares).
    assert [(a.source, a.text) for a in kept] == [("logs.jsonl:12", clean), ("faq.csv:3", GENERAL)]
    assert disabled == []
    # Case and spacing do not make two answers different.
    twice = [
        Answer("Ship  in 2 days.", 0.9, "a:1", "q"),
        Answer("ship in 2 days.", 0.8, "b:2", "r"),
    ]
    assert [a.source for a in controlled(twice, {})[0]] == ["a:1"]


def test_an_edit_is_replaced_only_once_its_approved_answer_is_indexed() -> None:
    control = edit("logs.jsonl:12", "Clean.", 4)
    assert replaced_by(control, {"logs.jsonl:12"}) is None  # not rebuilt yet
    assert replaced_by(control, {"logs.jsonl:12", approved_source(4)}) == approved_source(4)
    # An approval without an edit serves the original text: nothing to replace.
    approval = AnswerControl("logs.jsonl:12", False, None, "approved", 4, "ana", NOW)
    assert replaced_by(approval, {approved_source(4)}) is None
    assert replaced_by(None, {approved_source(4)}) is None


def test_excluded_answers_are_filtered_paged_and_carry_the_decision_about_the_same_pair() -> None:
    page = excluded_page(EXCLUDED, {}, None, 1, 1)
    assert ([e.excluded.source for e in page.entries], page.total, page.pages) == (
        ["logs.jsonl:3"],
        2,
        2,
    )
    assert [e.excluded.source for e in excluded_page(EXCLUDED, {}, None, 2, 1).entries] == [
        "logs.jsonl:9"
    ]
    # The text filter looks in question, answer, source and reasons, case ignored.
    for text, expected in (
        ("PHONE", ["logs.jsonl:9"]),
        ("warehouse", ["logs.jsonl:3"]),
        ("zzz", []),
    ):
        assert [e.excluded.source for e in excluded_page(EXCLUDED, {}, text).entries] == expected
    mine = edit("logs.jsonl:3", "Clean.", 5, question="where is {order_id}?")
    other = edit("logs.jsonl:9", "Clean.", 6, question="another pair at this line")
    entries = excluded_page(EXCLUDED, {c.source: c for c in (mine, other)}).entries
    assert [(e.approved, e.control is not None) for e in entries] == [(True, True), (False, False)]


# -- through the desk --------------------------------------------------------------------------


async def test_approving_a_clean_version_saves_an_approved_answer_with_the_agents_pair() -> None:
    async with library_core() as core:
        core.desk.excluded_answers = lambda: EXCLUDED
        page = await core.desk.excluded()
        assert [(e.excluded.conversations, e.approved) for e in page.entries] == [
            (7, False),
            (2, False),
        ]
        entry = await core.desk.approve_excluded(
            core.agent("ana"),
            "logs.jsonl:3",
            "  Where is my order?  ",
            "Track it under My orders; parcels leave within 1 business day.",
        )
        assert entry.approved and entry.control is not None
        assert (
            entry.control.answer == "Track it under My orders; parcels leave within 1 business day."
        )
        (approved,) = core.desk_store.tables.approved
        assert (approved.question, approved.intent, approved.author) == (
            "Where is my order?",
            "order_status",  # the excluded pair's intent unless the agent gives one
            "ana",
        )
        # Saving again (a colleague's better wording) updates the same approved answer.
        await core.desk.approve_excluded(
            core.agent("bo"), "logs.jsonl:3", "Where is my order?", "See My orders.", "tracking"
        )
        (approved,) = core.desk_store.tables.approved
        assert (approved.answer, approved.intent, approved.author) == (
            "See My orders.",
            "tracking",
            "bo",
        )
        assert (await core.desk.excluded(text="warehouse")).entries[0].approved
        events = [e for e in await core.console.events() if e["type"] == "answer.changed"]
        assert [e["action"] for e in events] == ["approved", "approved"]


async def test_approving_a_clean_version_refuses_what_it_cannot_save() -> None:
    async with library_core() as core:
        core.desk.excluded_answers = lambda: EXCLUDED
        ana = core.agent("ana")
        with pytest.raises(NotFoundError, match="lists no excluded answer from 'nowhere:1'"):
            await core.desk.approve_excluded(ana, "nowhere:1", "q", "a")
        for question, answer, says in (
            ("  ", "a", '"question" is empty'),
            ("x" * 4001, "a", '"question" is 4001 characters'),
            ("q", " ", '"answer" is empty'),
        ):
            with pytest.raises(BadRequestError, match=says):
                await core.desk.approve_excluded(ana, "logs.jsonl:3", question, answer)
        with pytest.raises(BadRequestError, match="neither a known intent"):
            await core.desk.approve_excluded(ana, "logs.jsonl:3", "q", "a", "Bad Intent!")
        with pytest.raises(BadRequestError, match="page must be 1 or more"):
            await core.desk.excluded(page=0)
        assert core.desk_store.tables.approved == []


async def test_after_a_rebuild_the_library_marks_the_edited_original_and_serves_the_text_once() -> (
    None
):
    async with library_core() as core:
        ana = core.agent("ana")
        clean = "Refunds go out the day we receive the parcel; your bank needs 3-5 days."
        entry = await core.desk.edit_answer(ana, "logs.jsonl:12", clean)
        assert entry.replaced_by is None
        assert entry.control is not None and entry.control.approved_answer_id is not None
        indexed = approved_source(entry.control.approved_answer_id)
        # `supportbot index build` indexed the approved answer (a new index is swapped in).
        rebuilt = (*PAIRS, AnswerPair("refund time?", clean, "refund_status", indexed, "approved"))
        core.desk.answer_pairs = lambda: rebuilt
        core.answers.add(clean, 0.85, question="refund time?", source=indexed)
        page = await core.desk.library(LibraryQuery(text="bank needs"))
        assert [(e.source, e.replaced_by) for e in page.entries] == [
            ("logs.jsonl:12", indexed),
            (indexed, None),
        ]
        result = await core.say(REFUND, sender="c1", intent="refund_status")
        (reply,) = result.replies
        assert reply.text == clean
        details = (await core.transcript("c1"))[0].details
        assert details["source"] == "logs.jsonl:12"

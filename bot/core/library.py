"""What agents decided about indexed answers in the console's answer library: disabled ones are
not served, edited ones are served with the agent's text in place of the original.

An answer is named by its index source (`file:line`, `store:approved_answers:<id>`), the name
the served reply keeps in its details, so a decision holds across restarts, on every replica
(the store keeps it and the service reads it for each answer it chooses) and through a
rebuild from the same data. An edited answer keeps the original's question and embedding row:
only the text served changes, at once; the edit is also saved as an approved answer, which
joins the index at the next `supportbot index build` or `supportbot retrain`. From then on the
original and its approved replacement serve the same text: `controlled` keeps the first of
answers whose served texts are the same, so a customer never gets it twice (and the library
marks the original as replaced).

Answers that curation kept out of the index (`ExcludedAnswer`, saved with the index) are
listed too, so an agent can approve a clean version of the most frequent ones.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from bot.core.datafiles import normalize
from bot.core.entities import fill
from bot.core.records import Answer

# The last thing an agent did to an answer (`AnswerControl.action`).
ACTIONS = ("disabled", "enabled", "edited", "approved")


@dataclass(frozen=True, slots=True)
class AnswerControl:
    """The agents' decision about one indexed answer, and the last action taken on it.

    Attributes:
        source: the answer's index source.
        question: the pair's question when the decision was taken: the decision holds only
            while the source names that pair (a rewritten data file may put another pair
            at the same `file:line`); None: any.
        disabled: not served any more.
        answer: the agent's edited text, served instead of the indexed one (None: not edited).
        action: what was done last: one of `ACTIONS`.
        approved_answer_id: the approved answer an edit or approval saved (for the next index
            build or retrain), if any.
        author, updated_at: who did the last action, and when.
    """

    source: str
    disabled: bool
    answer: str | None
    action: str
    approved_answer_id: int | None
    author: str
    updated_at: datetime
    question: str | None = None

    def holds_for(self, question: str) -> bool:
        """Whether the decision is about the pair of this question (see `question`)."""
        return self.question is None or self.question == question


@dataclass(frozen=True, slots=True)
class ExcludedAnswer:
    """An answer curation kept out of the index (bot/retrieval/curation.py), as saved with it.

    Attributes:
        question: the customer's question (scrubbed of slot values and sensitive details).
        answer: the agent's answer as written (it holds the details that excluded it).
        reasons: why it was excluded ("first-person action", "email address", ...).
        source: where it was read (`file:line`), the first of its conversations.
        intent: the question's intent, when the data gave one.
        conversations: how many conversations had the same answer (case and spacing ignored).
    """

    question: str
    answer: str
    reasons: tuple[str, ...]
    source: str
    intent: str | None = None
    conversations: int = 1


def approved_source(approved_answer_id: int) -> str:
    """The index source of an approved answer from the store."""
    return f"store:approved_answers:{approved_answer_id}"


def controlled(
    answers: Sequence[Answer],
    controls: Mapping[str, AnswerControl],
    slots: Mapping[str, str] | None = None,
) -> tuple[list[Answer], list[Answer]]:
    """(`answers` as they may be served, the disabled ones), each in order.

    A disabled answer is left out; an edited one comes back with the agent's text, its
    `{slot}` placeholders filled from `slots` (left out when a slot it needs is unknown, as
    the index leaves out such templates). Of answers whose texts are then the same (an
    edited original and the approved answer its edit became, once indexed), only the first
    is kept.
    """
    kept: list[Answer] = []
    disabled: list[Answer] = []
    seen: set[str] = set()

    def keep(answer: Answer) -> None:
        key = normalize(answer.text)
        if key not in seen:
            seen.add(key)
            kept.append(answer)

    for answer in answers:
        control = controls.get(answer.source)
        if control is None or not control.holds_for(answer.question):
            keep(answer)
        elif control.disabled:
            disabled.append(answer)
        elif control.answer is not None:
            text = fill(control.answer, slots or {})
            if text is not None:
                keep(replace(answer, text=text))
        else:
            keep(answer)
    return kept, disabled


def by_source(controls: Iterable[AnswerControl]) -> dict[str, AnswerControl]:
    """The controls keyed by the answer's source."""
    return {control.source: control for control in controls}


def edited_sources(answers: Iterable[Answer], controls: Mapping[str, AnswerControl]) -> set[str]:
    """The sources of `answers` served with an agent's edit (ratings of the original text no
    longer hold for them)."""
    return {
        a.source
        for a in answers
        if (c := controls.get(a.source)) is not None
        and c.answer is not None
        and c.holds_for(a.question)
    }


@dataclass(frozen=True, slots=True)
class ExcludedEntry:
    """An excluded answer and what agents did about it (`control.approved_answer_id`: a
    clean version was approved)."""

    excluded: ExcludedAnswer
    control: AnswerControl | None

    @property
    def approved(self) -> bool:
        return self.control is not None and self.control.approved_answer_id is not None


@dataclass(frozen=True, slots=True)
class ExcludedPage:
    """One page of the excluded answers a filter found, the most frequent first.

    Attributes:
        total: how many the filter found; listed: how many were saved with the index.
    """

    entries: tuple[ExcludedEntry, ...]
    total: int
    page: int
    per_page: int
    listed: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def excluded_page(
    excluded: Sequence[ExcludedAnswer],
    controls: Mapping[str, AnswerControl],
    text: str | None = None,
    page: int = 1,
    per_page: int = 20,
) -> ExcludedPage:
    """Page `page` of `excluded` (kept in their order, the most frequent first) whose question,
    answer, source or reasons contain `text` (case ignored; None: all), each with the agents'
    decision about its source (one taken about the same pair: see `AnswerControl.holds_for`).
    """
    wanted = (text or "").strip().casefold()
    found = [
        e
        for e in excluded
        if not wanted
        or wanted in f"{e.question}\n{e.answer}\n{e.source}\n{' '.join(e.reasons)}".casefold()
    ]
    start = (page - 1) * per_page
    entries = []
    for e in found[start : start + per_page]:
        control = controls.get(e.source)
        if control is not None and not control.holds_for(e.question):
            control = None
        entries.append(ExcludedEntry(e, control))
    return ExcludedPage(tuple(entries), len(found), page, per_page, len(excluded))


def replaced_by(control: AnswerControl | None, indexed: Container[str]) -> str | None:
    """The source of the approved answer that replaces an edited answer in the index (the
    approved answer its edit became, once `supportbot index build` or retrain indexed it);
    None while it is not indexed."""
    if control is None or control.answer is None or control.approved_answer_id is None:
        return None
    source = approved_source(control.approved_answer_id)
    return source if source in indexed and source != control.source else None

"""Reading what agents and customers said from the conversation store, for retraining.

What counts as a training label (see README, "Retraining"):

- intent and sentiment corrections (`feedback.corrected_intent` / `corrected_sentiment`) on
  customer messages, written by an agent account (an `author` that is a name in the `agents`
  table, which is how the console stores labels). Customers' own feedback never labels
  anything: it only rates bot answers;
- approved answers (`approved_answers`) by an agent account, for the answer index;
- optionally (`include_rated`) weak intent labels: a bot answer rated "up" (its latest rating)
  confirms the intent the live model predicted for the customer message it answered.

"Since the last model" is read as: every agent label ever given, one per message (the newest
wins), because an earlier label is still true and the replay pool of a retrained version
already holds the labels it learned from, so reading them again changes nothing. Labels a
rejected candidate saw are therefore never lost. How many labels are newer than the live model
is counted, and a task with none is not retrained.

Rows that cannot be used (a malformed intent name, a label on a message that no longer
exists or is not a customer's, an unknown sentiment) are reported with their feedback id and
the fix, and skipped; nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import aliased

from bot.core.datafiles import normalize
from bot.retrieval.sources import AnswerPair
from bot.store.conversations import SqlConversationStore
from bot.store.schema import AgentRow, ApprovedAnswerRow, FeedbackRow, MessageRow
from training.data import Example

#: The console's rule for intent names (docs/console.md).
INTENT_NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
SENTIMENTS = ("negative", "neutral", "positive")
FEEDBACK_SOURCE = "store:feedback"


@dataclass(frozen=True, slots=True)
class StoredLabel:
    """One usable label of one customer message.

    Attributes:
        message_id: the labelled customer message.
        text: its text.
        label: the intent or sentiment.
        feedback_id: the feedback row it came from.
        author: the agent (or `customer` for weak labels).
        created_at: when the label was given.
        weak: True for a label inferred from a positive rating (never used for evaluation).
    """

    message_id: int
    text: str
    label: str
    feedback_id: int
    author: str
    created_at: datetime
    weak: bool = False

    def example(self) -> Example:
        """As a training example; `source:line` points at the feedback row."""
        kind = "rating" if self.weak else "label"
        return Example(self.text, self.label, f"{FEEDBACK_SOURCE}:{kind}", self.feedback_id)


@dataclass(frozen=True, slots=True)
class FeedbackProblem:
    """A feedback row that could not be used, and what to do about it."""

    feedback_id: int
    message_id: int
    problem: str

    def __str__(self) -> str:
        return f"feedback row {self.feedback_id} (message {self.message_id}): {self.problem}"


@dataclass
class FeedbackSet:
    """Everything a retrain can learn from, read from the store in one pass."""

    intents: list[StoredLabel] = field(default_factory=list)
    sentiments: list[StoredLabel] = field(default_factory=list)
    weak_intents: list[StoredLabel] = field(default_factory=list)
    approved: list[AnswerPair] = field(default_factory=list)
    problems: list[FeedbackProblem] = field(default_factory=list)
    superseded: int = 0
    ignored_customer_corrections: int = 0
    approved_by_non_agents: int = 0

    def labels(self, task: str) -> list[StoredLabel]:
        """The agent labels for `intent` or `sentiment`."""
        return self.intents if task == "intent" else self.sentiments

    def counts(self) -> dict[str, int]:
        return {
            "intent_labels": len(self.intents),
            "sentiment_labels": len(self.sentiments),
            "weak_intent_labels": len(self.weak_intents),
            "approved_answers": len(self.approved),
            "superseded_labels": self.superseded,
            "skipped_rows": len(self.problems),
            "ignored_customer_corrections": self.ignored_customer_corrections,
            "approved_answers_by_non_agents": self.approved_by_non_agents,
        }


def _newest_per_text(labels: Sequence[StoredLabel]) -> tuple[list[StoredLabel], int]:
    """One label per message and per text (case and spacing ignored): the newest wins."""
    best: dict[str, StoredLabel] = {}
    by_message: dict[int, StoredLabel] = {}
    for label in sorted(labels, key=lambda x: (x.created_at, x.feedback_id)):
        by_message[label.message_id] = label
    for label in sorted(by_message.values(), key=lambda x: (x.created_at, x.feedback_id)):
        best[normalize(label.text)] = label
    kept = sorted(best.values(), key=lambda x: x.feedback_id)
    return kept, len(labels) - len(kept)


def _intent_problem(feedback: FeedbackRow, known: Collection[str]) -> str | None:
    """What is wrong with the row's corrected intent, if anything (None when there is none)."""
    intent = feedback.corrected_intent
    if intent is None or INTENT_NAME.match(intent) or intent in known:
        return None
    return (
        f"corrected intent {intent!r} is not a valid intent name (a lowercase letter, then "
        "1-63 lowercase letters, digits or _); label the message again with a valid name in "
        "the console"
    )


def _sentiment_problem(feedback: FeedbackRow, known: Sequence[str]) -> str | None:
    """What is wrong with the row's corrected sentiment, if anything (None when there is none)."""
    sentiment = feedback.corrected_sentiment
    if sentiment is None or sentiment in known:
        return None
    return (
        f"corrected sentiment {sentiment!r} is not one the sentiment model knows "
        f"({', '.join(known)}); label the message again"
    )


async def read_feedback(
    store: SqlConversationStore,
    include_rated: bool = False,
    sentiments: Sequence[str] = SENTIMENTS,
    intents: Sequence[str] = (),
) -> FeedbackSet:
    """Read agent labels, approved answers and (optionally) rated answers from the store.

    Args:
        store: a started store.
        include_rated: also return weak intent labels from answers customers rated "up".
        sentiments: the sentiment labels the live model knows (others are reported).
        intents: the intents the live model knows (valid even when not in the console's
            naming rule, e.g. imported data sets).
    """
    out = FeedbackSet()
    customer = aliased(MessageRow)
    async with store.reading("read feedback for retraining") as session:
        agents = set((await session.scalars(select(AgentRow.name))).all())
        rows = (
            await session.execute(
                select(FeedbackRow, MessageRow.text, MessageRow.role, MessageRow.id)
                .outerjoin(MessageRow, MessageRow.id == FeedbackRow.message_id)
                .order_by(FeedbackRow.id)
            )
        ).all()
        approved_rows = (
            await session.scalars(select(ApprovedAnswerRow).order_by(ApprovedAnswerRow.id))
        ).all()
        rated: list[tuple[FeedbackRow, str | None, int | None, str]] = []
        if include_rated:
            rated = [
                (row[0], row[1], row[2], row[3])
                for row in (
                    await session.execute(
                        select(FeedbackRow, customer.intent, customer.id, customer.text)
                        .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
                        .join(customer, customer.id == MessageRow.reply_to)
                        .where(FeedbackRow.rating.is_not(None), MessageRow.role == "bot")
                        .order_by(FeedbackRow.created_at, FeedbackRow.id)
                    )
                ).all()
            ]

    known_intents = set(intents)
    intent_labels: list[StoredLabel] = []
    sentiment_labels: list[StoredLabel] = []
    for feedback, text, role, found in rows:
        correction = feedback.corrected_intent is not None or (
            feedback.corrected_sentiment is not None
        )
        if not correction:
            continue  # a rating or a comment: not a label
        if feedback.author not in agents:
            out.ignored_customer_corrections += 1
            continue

        def problem(message: str, row: FeedbackRow = feedback) -> None:
            out.problems.append(FeedbackProblem(row.id, row.message_id, message))

        if found is None:
            problem("the labelled message does not exist (deleted?); delete this feedback row")
            continue
        if role != "customer":
            problem(
                f"labels a {role} message; intent and sentiment labels belong on customer "
                "messages: label the customer's message instead and delete this row"
            )
            continue
        if not (text or "").strip():
            problem("the labelled message has no text; delete this feedback row")
            continue
        corrections = (
            (feedback.corrected_intent, _intent_problem(feedback, known_intents), intent_labels),
            (
                feedback.corrected_sentiment,
                _sentiment_problem(feedback, sentiments),
                sentiment_labels,
            ),
        )
        for label, wrong, labels in corrections:
            if label is None:
                continue
            if wrong is None:
                labels.append(
                    StoredLabel(
                        found, text, label, feedback.id, feedback.author, feedback.created_at
                    )
                )
            else:
                problem(wrong)
    out.intents, superseded_intents = _newest_per_text(intent_labels)
    out.sentiments, superseded_sentiments = _newest_per_text(sentiment_labels)
    out.superseded = superseded_intents + superseded_sentiments

    for row in approved_rows:
        if row.author not in agents:
            out.approved_by_non_agents += 1
            continue
        if row.question.strip() and row.answer.strip():
            out.approved.append(
                AnswerPair(
                    row.question.strip(),
                    row.answer.strip(),
                    row.intent,
                    f"store:approved_answers:{row.id}",
                    "approved",
                )
            )

    if include_rated:
        latest: dict[int, tuple[FeedbackRow, str | None, int | None, str]] = {}
        for item in rated:
            latest[item[0].message_id] = item  # ordered by time: the last rating wins
        labelled = {normalize(label.text) for label in out.intents}
        weak = [
            StoredLabel(message_id, text, intent, row.id, row.author, row.created_at, weak=True)
            for row, intent, message_id, text in latest.values()
            if row.rating == "up"
            and intent is not None
            and message_id is not None
            and normalize(text) not in labelled
        ]
        out.weak_intents, _ = _newest_per_text(weak)
    return out


def label_counts(labels: Sequence[StoredLabel]) -> dict[str, int]:
    """How many labels per intent / sentiment, most first."""
    return dict(Counter(label.label for label in labels).most_common())

"""The agent console's use cases: take a conversation from the queue, answer the customer
through their own channel, give the conversation back, label what the models got wrong.

`AgentDesk` sits beside `ConversationService` (on the same store, bus, router and dispatcher)
and publishes every change on the bus topic "console" (see `bot/core/bus.py`), so that every
open console refreshes. It also runs the unclaimed timeout: an escalation no agent claimed
within `escalation.unclaimed_timeout_s` gets the customer one notice.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from bot.core import csat
from bot.core.background import cancel_and_wait
from bot.core.bus import EventBus
from bot.core.clock import Clock, utcnow
from bot.core.csat import CsatFigures
from bot.core.delivery import DeliveryError, Dispatcher
from bot.core.demotion import RatedAnswers
from bot.core.errors import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    StoreUnavailableError,
)
from bot.core.hours import BusinessHours
from bot.core.library import (
    AnswerControl,
    ExcludedAnswer,
    ExcludedEntry,
    ExcludedPage,
    by_source,
    excluded_page,
    replaced_by,
)
from bot.core.metrics import Metrics
from bot.core.ports import ConversationStore, DeskStore
from bot.core.records import (
    Agent,
    Conversation,
    EscalationRecord,
    Feedback,
    Role,
    Route,
    StoredMessage,
)
from bot.core.router import Router
from bot.core.service import reply_of, store_feedback

log = logging.getLogger(__name__)

INTENT_NAME = re.compile(r"[a-z][a-z0-9_]{1,63}")
RATINGS = {"good": "up", "bad": "down"}
TOPIC = "console"
SENTIMENTS = ("negative", "neutral", "positive")
# The intent agents give a message the bot should not try to answer (the out-of-scope
# detector's label): always offered, so agents can teach it before any model knows it.
OUT_OF_SCOPE = "out_of_scope"
# Customer messages the bot answered itself: the automation rate's numerator.
AUTOMATED_ROUTES = (Route.RESPONSE.value, Route.ANSWER.value, Route.HANDLER.value)
MAX_DASHBOARD_DAYS = 366
# An escalation's urgency grows by 1 for every this many seconds it waits.
URGENCY_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class QueueItem:
    """An unresolved escalation as the agents' queue shows it."""

    escalation: EscalationRecord
    conversation: Conversation
    last_message: str | None
    unread: int
    waiting_s: float
    urgency: float

    @classmethod
    def at(
        cls,
        now: datetime,
        escalation: EscalationRecord,
        conversation: Conversation,
        last_message: str | None,
        unread: int,
    ) -> QueueItem:
        """The item as of `now`: its urgency is the escalation's priority plus 1 for every
        `URGENCY_SECONDS` it has waited since it opened."""
        waiting = max(0.0, (now - escalation.created_at).total_seconds())
        urgency = escalation.priority + waiting / URGENCY_SECONDS
        return cls(escalation, conversation, last_message, unread, waiting, urgency)


def most_urgent_first(items: Iterable[QueueItem]) -> list[QueueItem]:
    """The queue's order: most urgent first, the older escalation first on a tie."""
    return sorted(items, key=lambda item: (-item.urgency, item.escalation.id))


@dataclass(frozen=True, slots=True)
class MessageLabels:
    """The agents' latest judgement of one message (None where nobody said anything)."""

    intent: str | None = None
    sentiment: str | None = None
    rating: str | None = None  # "up" | "down"
    by: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A conversation with everything an agent needs beside the transcript."""

    conversation: Conversation
    escalation: EscalationRecord | None
    messages: tuple[StoredMessage, ...]
    labels: dict[int, MessageLabels]
    approved: frozenset[int]
    sentiment: str | None
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """Whether a message reached the customer's channel, and if not, why (for the agent:
    e.g. Rasa conversations take no pushed replies). Truthy when delivered."""

    delivered: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.delivered


@dataclass(frozen=True, slots=True)
class EscalationNotice:
    """An escalation that changed hands (closed by an agent, or timed out unclaimed), and the
    notice stored for the customer."""

    escalation: EscalationRecord
    conversation: Conversation
    notice: StoredMessage


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One UTC day of the dashboard."""

    date: date
    messages: int = 0
    customer_messages: int = 0
    automated: int = 0
    escalations: dict[str, int] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=dict)

    @property
    def automation_rate(self) -> float:
        return self.automated / self.customer_messages if self.customer_messages else 0.0


@dataclass(frozen=True, slots=True)
class IntentFigures:
    """How often an intent was predicted in the window, and how sure the model was."""

    intent: str
    messages: int
    mean_confidence: float


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The operators' figures for the last few days (UTC), oldest day first."""

    days: tuple[DayFigures, ...]
    intents: tuple[IntentFigures, ...]
    open_escalations: int
    outcomes: dict[str, int]
    csat: CsatFigures = CsatFigures()


# What the search's `status` filter takes: a conversation's status, or `resolved` (with the
# bot again after an agent closed an escalation of it).
RESOLVED = "resolved"
SEARCH_STATUSES = ("bot", "waiting", "claimed", RESOLVED)
MAX_SEARCH_CHARS = 200
MAX_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """What an agent looks for among all conversations, resolved ones included. Every filter
    is optional and all given ones must hold.

    Attributes:
        text: a message of the conversation contains it (case ignored).
        customer: the customer's name or sender id contains it (case ignored).
        channel: the conversation's channel, exactly.
        status: one of `SEARCH_STATUSES`.
        since, until: a message of the conversation (the one containing `text`, when given)
            was written in [since, until).
        page, per_page: which page of the results, most recently active first.
    """

    text: str | None = None
    customer: str | None = None
    channel: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1
    per_page: int = 20

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A conversation found: its latest escalation (if any), how many messages it has, and
    the message to show (the newest one that matched, else the newest one)."""

    conversation: Conversation
    escalation: EscalationRecord | None
    snippet: StoredMessage | None
    messages: int


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of search results and how many there are in all."""

    hits: tuple[SearchHit, ...]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True, slots=True)
class CustomerHistory:
    """What came before, for the agent beside an open conversation.

    Attributes:
        episodes: the conversation's own earlier hand-offs (the same channel and sender), the
            closed ones, newest first.
        others: the customer's other conversations (same name, another channel or sender
            id), most recently active first; empty when the name is unknown.
    """

    episodes: tuple[EscalationRecord, ...]
    others: tuple[SearchHit, ...]


@dataclass(frozen=True, slots=True)
class Note:
    """An agent's private note on a conversation: agents see it beside the transcript; it is
    no message, so it never reaches the customer."""

    id: int
    conversation_id: str
    author: str
    text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A reply agents keep at hand, inserted by its shortcut; `{name}`, `{agent}` and any
    entity type (`{order_id}`) are filled in for the open conversation."""

    id: int
    shortcut: str
    title: str
    text: str
    author: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FilledResponse:
    """A canned response with its variables filled for one conversation, and the variables
    it could not fill (left as `{variable}` for the agent to complete)."""

    response: CannedResponse
    text: str
    missing: tuple[str, ...]


SHORTCUT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_TITLE_CHARS = 100
MAX_CANNED_CHARS = 4000
MAX_NOTE_CHARS = 4000
# A variable in a canned response: `{name}`, `{agent}`, `{order_id}`.
VARIABLE = re.compile(r"\{([a-z][a-z0-9_]{0,39})\}")


def fill_variables(template: str, values: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """`template` with each `{variable}` that `values` knows replaced; the others are kept as
    written and returned (each once, in order), so the agent sees what to complete."""
    missing: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if name not in missing:
            missing.append(name)
        return match.group(0)

    return VARIABLE.sub(value, template), tuple(missing)


def conversation_variables(
    conversation: Conversation, agent: Agent, messages: Iterable[StoredMessage]
) -> dict[str, str]:
    """What a canned response can say about a conversation: `name` and `first_name` (when
    the channel gave a name), `agent`, and the latest value of each entity type found in the
    customer's messages (`details["entities"]`: `{order_id}`, `{email}`, ...)."""
    values: dict[str, str] = {"agent": agent.name}
    if conversation.sender_name and conversation.sender_name.strip():
        values["name"] = conversation.sender_name.strip()
        values["first_name"] = values["name"].split()[0]
    for message in messages:
        if message.role != Role.CUSTOMER:
            continue
        for entity in message.details.get("entities") or ():
            if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
                continue
            found = entity.get("value", entity.get("text"))
            usable = isinstance(found, str | int | float) and not isinstance(found, bool)
            if usable and VARIABLE.fullmatch(f"{{{entity['type']}}}"):
                values[entity["type"]] = str(found)  # a later message's value wins
    return values


# -- the desk stores' input rules (the SQL store and the in-memory fake both call these) --


def check_canned(shortcut: str, title: str, text: str) -> tuple[str, str, str]:
    """The canned response's fields, trimmed, or BadRequestError saying what to fix."""
    shortcut, title, text = shortcut.strip().lower(), title.strip(), text.strip()
    if not SHORTCUT.fullmatch(shortcut):
        raise BadRequestError(
            f'field "shortcut" must be 1-32 lower-case letters, digits, - or _, starting with '
            f"a letter or digit; got {shortcut[:40]!r}"
        )
    if not title or len(title) > MAX_TITLE_CHARS:
        raise BadRequestError(f'field "title" must be 1-{MAX_TITLE_CHARS} characters')
    if not text or len(text) > MAX_CANNED_CHARS:
        raise BadRequestError(f'field "text" must be 1-{MAX_CANNED_CHARS} characters')
    return shortcut, title, text


def check_note(text: str) -> str:
    """The note's text, trimmed, or BadRequestError when it is empty or too long."""
    text = text.strip()
    if not text:
        raise BadRequestError('field "text" is empty; write the note')
    if len(text) > MAX_NOTE_CHARS:
        raise BadRequestError(
            f'field "text" is {len(text)} characters; a note holds at most {MAX_NOTE_CHARS}'
        )
    return text


def check_search(query: SearchQuery) -> SearchQuery:
    """`query` with blank filters as None, or BadRequestError saying which field is wrong."""
    if query.page < 1:
        raise BadRequestError(f"page must be 1 or more; got {query.page}")
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise BadRequestError(f"per_page must be from 1 to {MAX_PER_PAGE}; got {query.per_page}")
    cleaned: dict[str, str | None] = {}
    for name in ("text", "customer", "channel", "status"):
        value = getattr(query, name)
        value = value.strip() if value else None
        if value is not None and len(value) > MAX_SEARCH_CHARS:
            raise BadRequestError(
                f"{name} is {len(value)} characters; search for at most {MAX_SEARCH_CHARS}"
            )
        cleaned[name] = value or None
    if cleaned["status"] is not None and cleaned["status"] not in SEARCH_STATUSES:
        raise BadRequestError(
            f"status must be one of {', '.join(SEARCH_STATUSES)}; got {cleaned['status']!r}"
        )
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise BadRequestError(
            f"the date range is empty: from {query.since.isoformat()} is not before to "
            f"{query.until.isoformat()}"
        )
    return replace(
        query,
        text=cleaned["text"],
        customer=cleaned["customer"],
        channel=cleaned["channel"],
        status=cleaned["status"],
    )


def message_matches(message: StoredMessage, query: SearchQuery) -> bool:
    """Whether a message is one the search looks for (text and date range); the in-memory
    store's rule, which the SQL store's query spells out."""
    if query.since is not None and message.created_at < query.since:
        return False
    if query.until is not None and message.created_at >= query.until:
        return False
    return query.text is None or query.text.casefold() in message.text.casefold()


def customer_matches(conversation: Conversation, customer: str | None) -> bool:
    """Whether the customer filter finds the conversation's name or sender id."""
    if customer is None:
        return True
    wanted = customer.casefold()
    return wanted in (conversation.sender_name or "").casefold() or (
        wanted in conversation.sender.casefold()
    )


def most_recent_first(conversations: Iterable[Conversation]) -> list[Conversation]:
    """The search's order: the most recently active conversation first, then by id."""
    ordered = sorted(conversations, key=lambda c: c.id)
    return sorted(ordered, key=lambda c: c.updated_at, reverse=True)


def check_sentiment(sentiment: str) -> None:
    """Raise BadRequestError unless `sentiment` is one of `SENTIMENTS`."""
    if sentiment not in SENTIMENTS:
        raise BadRequestError(
            f'field "sentiment" must be one of {", ".join(SENTIMENTS)}; got {sentiment!r}'
        )


def dashboard_window(now: datetime, days: int) -> tuple[list[date], datetime]:
    """The dashboard's last `days` UTC dates up to `now`'s, oldest first, and the moment the
    first of them began.

    Raises:
        BadRequestError: `days` is not from 1 to `MAX_DASHBOARD_DAYS`.
    """
    if not 1 <= days <= MAX_DASHBOARD_DAYS:
        raise BadRequestError(f"days must be from 1 to {MAX_DASHBOARD_DAYS}; got {days}")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    return [first + timedelta(days=i) for i in range(days)], start


def most_asked_first(intents: Iterable[IntentFigures]) -> tuple[IntentFigures, ...]:
    """The dashboard's order of intents: most messages first, then by name."""
    return tuple(sorted(intents, key=lambda f: (-f.messages, f.intent)))


def latest_labels(feedback: Iterable[Feedback]) -> dict[int, MessageLabels]:
    """Each message's labels from the agents' feedback on it, oldest first: a label replaces
    the values it gives and keeps the others."""
    labels: dict[int, MessageLabels] = {}
    for f in feedback:
        current = labels.get(f.message_id, MessageLabels())
        labels[f.message_id] = MessageLabels(
            intent=f.corrected_intent or current.intent,
            sentiment=f.corrected_sentiment or current.sentiment,
            rating=f.rating or current.rating,
            by=f.author,
        )
    return labels


def check_approvable(answer: StoredMessage) -> None:
    """Raise BadRequestError unless `answer` is an agent's reply (only those are approved)."""
    if answer.role != Role.AGENT:
        raise BadRequestError(
            f"message {answer.id} is a {answer.role.value} message; only agents' replies can "
            "be approved answers"
        )


def check_question(asked: StoredMessage, answer: StoredMessage) -> None:
    """Raise BadRequestError unless `asked`, named as the question of an approved answer, is a
    customer message of the answer's conversation."""
    if asked.role != Role.CUSTOMER or asked.conversation_id != answer.conversation_id:
        raise BadRequestError(
            f"message {asked.id} is not a customer message of the answer's conversation; "
            "give one of its questions"
        )


def approved_question(
    answer: StoredMessage, question: str | None, asked: StoredMessage | None
) -> str:
    """The question an approved answer pairs with: `question` when given, else the text of
    `asked` (the question message named, or the last customer message before the answer).

    Raises:
        BadRequestError: neither gives a question.
    """
    text = question or (asked.text if asked is not None else None)
    if not text:
        raise BadRequestError(
            f"no customer message comes before message {answer.id}; send "
            '"question" with the question it answers'
        )
    return text


# -- "Save as approved answer": which question the reply answers ----------------------------

# Intents of messages that ask nothing an answer could be kept for: asking for a person,
# small talk.
NOT_A_QUESTION_INTENTS = frozenset({"talk_to_human", "greeting", "thanks", "goodbye"})
# Bot replies that answered something (a reply of another route, a rephrase prompt or the
# hand-off notice, answered nothing).
ANSWERING_ROUTES = frozenset(AUTOMATED_ROUTES)
_WORD = re.compile(r"[\w'-]+")
# A short message naming a person is a hand-off request ("I want a human", "agent please").
_HANDOFF_WORDS = frozenset(
    {"human", "person", "agent", "someone", "somebody", "representative", "operator"}
)
MAX_HANDOFF_WORDS = 8
# Messages made only of these words are small talk ("hi there", "ok thanks", "hello?").
_SMALL_TALK_WORD = re.compile(
    r"hi|hello|hey|hiya|hallo|yo|there|good|morning|afternoon|evening|day|thanks?|you|thx|ty|"
    r"cheers|ok|okay|k|yes|yeah|yep|no|nope|sure|please|pls|bye|goodbye|great|cool|fine|"
    r"perfect|awesome|hm+|um+|uh+|anyone|again|still|waiting|so|much|very|lot"
)


def _intent_of(message: StoredMessage, labels: Mapping[int, MessageLabels]) -> str | None:
    """An agent's correction of the message's intent, else the model's."""
    label = labels.get(message.id)
    return label.intent if label is not None and label.intent else message.intent


def is_question(message: StoredMessage, labels: Mapping[int, MessageLabels]) -> bool:
    """Whether a customer message says what the customer needs, rather than asking for a
    person ("I want a human"), greeting or thanking: its intent (an agent's correction, else
    the model's) is none of `NOT_A_QUESTION_INTENTS`, it has 2 words or more, and it is not
    small talk or a short request for a person."""
    if message.role != Role.CUSTOMER or _intent_of(message, labels) in NOT_A_QUESTION_INTENTS:
        return False
    words = [w.casefold() for w in _WORD.findall(message.text)]
    if len(words) < 2 or all(_SMALL_TALK_WORD.fullmatch(w) for w in words):
        return False
    return not (len(words) <= MAX_HANDOFF_WORDS and _HANDOFF_WORDS.intersection(words))


def suggest_question(
    messages: Sequence[StoredMessage],
    answer_id: int,
    labels: Mapping[int, MessageLabels] | None = None,
) -> tuple[StoredMessage, ...]:
    """The customer messages a reply answers, oldest first (empty when there is none).

    Those written since the previous reply that answered something (an agent's reply, or the
    bot's answer, response or handler result; not a rephrase prompt or a hand-off notice),
    without hand-off requests, greetings and thanks (`is_question`). When none of those is a
    question, the last customer message before the reply that is one; failing that, the last
    customer message before it.

    Args:
        messages: the conversation, oldest first.
        answer_id: the reply's message id.
        labels: the agents' labels by message id (their intent corrections count).
    """
    labels = labels or {}
    before = [m for m in messages if m.id < answer_id]
    since: list[StoredMessage] = []
    for message in reversed(before):
        answered = message.role == Role.AGENT or (
            message.role == Role.BOT and message.route in ANSWERING_ROUTES
        )
        if answered:
            break
        if message.role == Role.CUSTOMER:
            since.insert(0, message)
    asked = [m for m in since if is_question(m, labels)]
    if asked:
        return tuple(asked)
    customers = [m for m in before if m.role == Role.CUSTOMER]
    earlier = next((m for m in reversed(customers) if is_question(m, labels)), None)
    if earlier is not None:
        return (earlier,)
    return (customers[-1],) if customers else ()


@dataclass(frozen=True, slots=True)
class ApprovalDraft:
    """What "Save as approved answer" proposes for a reply, for the agent to edit.

    Attributes:
        answer: the agent's reply.
        questions: the customer messages it answers (`suggest_question`), oldest first.
        question: their texts, one per line (empty when there is none).
        intent: an agent's correction of the first one's intent, else the model's (None for
            a hand-off request or small talk).
    """

    answer: StoredMessage
    questions: tuple[StoredMessage, ...]
    question: str
    intent: str | None


def approval_draft(
    messages: Sequence[StoredMessage],
    answer: StoredMessage,
    labels: Mapping[int, MessageLabels] | None = None,
) -> ApprovalDraft:
    """The pair "Save as approved answer" proposes for `answer` (see `suggest_question`)."""
    labels = labels or {}
    questions = suggest_question(messages, answer.id, labels)
    intent = _intent_of(questions[0], labels) if questions else None
    if intent in NOT_A_QUESTION_INTENTS:
        intent = None
    return ApprovalDraft(answer, questions, "\n".join(m.text for m in questions), intent)


# -- the answer library ----------------------------------------------------------------------

LIBRARY_KINDS = ("conversation", "faq", "approved")
MAX_ANSWER_CHARS = 4000
MAX_SOURCE_CHARS = 1000


class IndexedPair(Protocol):
    """A question/answer pair of the live answer index, as the library reads it (the
    retrieval's `AnswerPair`)."""

    @property
    def question(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def intent(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AnswerUsage:
    """How often the bot served an indexed answer, and how customers and agents rated it."""

    served: int = 0
    up: int = 0
    down: int = 0


NO_USAGE = AnswerUsage()


@dataclass(frozen=True, slots=True)
class LibraryQuery:
    """What the answer library shows; every filter is optional and all given ones hold.

    Attributes:
        text: the question, the answer (or its edit) or the source contains it (case ignored).
        intent: the pair's intent, exactly.
        kind: conversation, faq or approved.
        rated_down: only answers rated down at least once.
        disabled: only disabled answers.
        page, per_page: which page, the most served answers first (index order on a tie).
    """

    text: str | None = None
    intent: str | None = None
    kind: str | None = None
    rated_down: bool = False
    disabled: bool = False
    page: int = 1
    per_page: int = 20


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """An indexed answer with its use, its ratings and what agents decided about it."""

    question: str
    answer: str
    intent: str | None
    source: str
    kind: str
    usage: AnswerUsage
    control: AnswerControl | None
    # The approved answer that replaced this edited one in the index (`library.replaced_by`).
    replaced_by: str | None = None

    @property
    def served_text(self) -> str:
        """What a customer gets: the agent's edit when there is one."""
        if self.control is not None and self.control.answer is not None:
            return self.control.answer
        return self.answer


@dataclass(frozen=True, slots=True)
class LibraryPage:
    """One page of the library and how many answers the filters found in all."""

    entries: tuple[LibraryEntry, ...]
    total: int
    page: int
    per_page: int
    indexed: int
    intents: tuple[str, ...]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def check_library(query: LibraryQuery) -> LibraryQuery:
    """`query` with blank filters as None, or BadRequestError saying which field is wrong."""
    if query.page < 1:
        raise BadRequestError(f"page must be 1 or more; got {query.page}")
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise BadRequestError(f"per_page must be from 1 to {MAX_PER_PAGE}; got {query.per_page}")
    text = (query.text or "").strip() or None
    if text is not None and len(text) > MAX_SEARCH_CHARS:
        raise BadRequestError(f"q is {len(text)} characters; search for at most {MAX_SEARCH_CHARS}")
    kind = (query.kind or "").strip() or None
    if kind is not None and kind not in LIBRARY_KINDS:
        raise BadRequestError(f"kind must be one of {', '.join(LIBRARY_KINDS)}; got {kind[:40]!r}")
    intent = (query.intent or "").strip() or None
    return replace(query, text=text, kind=kind, intent=intent)


class LibraryCatalog:
    """The live index's pairs prepared for the library's filters: what the text filter looks
    in (case folded), rows by intent and by source, the intents. Made once per index (the
    desk keeps it until another index is swapped in), so a request over 100,000 pairs scans
    lists rather than objects.
    """

    def __init__(self, pairs: Sequence[IndexedPair]) -> None:
        self.pairs = pairs
        self.text = [f"{p.question}\n{p.answer}\n{p.source}".casefold() for p in pairs]
        self.kinds = [p.kind for p in pairs]
        self.row_of: dict[str, int] = {}
        by_intent: dict[str, list[int]] = {}
        for row, pair in enumerate(pairs):
            self.row_of.setdefault(pair.source, row)
            if pair.intent is not None:
                by_intent.setdefault(pair.intent, []).append(row)
        self.rows_by_intent = by_intent
        self.intents = tuple(sorted(by_intent))


def library_page(
    catalog: LibraryCatalog,
    controls: Mapping[str, AnswerControl],
    usage: Mapping[str, AnswerUsage],
    query: LibraryQuery,
) -> LibraryPage:
    """One page of the indexed answers `query` finds (checked by `check_library`), the most
    served first, index order on a tie; the in-memory rule both stores share.

    The rows are narrowed by the most selective filter first (disabled and rated-down
    answers are few and known by source); only the matching rows that were ever served are
    sorted, the others follow in index order without being listed.
    """
    pairs = catalog.pairs
    # Decisions about the pairs listed (not about another pair a source once named).
    controls = {
        source: control
        for source, control in controls.items()
        if (row := catalog.row_of.get(source)) is not None
        and control.holds_for(pairs[row].question)
    }
    rows: Sequence[int] = range(len(pairs))
    if query.disabled:
        rows = _rows_of(catalog, (s for s, c in controls.items() if c.disabled))
    if query.rated_down:
        down = _rows_of(catalog, (s for s, u in usage.items() if u.down))
        rows = down if len(rows) == len(pairs) else sorted(set(rows) & set(down))
    if query.intent is not None:
        own = catalog.rows_by_intent.get(query.intent, [])
        rows = own if len(rows) == len(pairs) else sorted(set(rows) & set(own))
    if query.kind is not None:
        kinds = catalog.kinds
        rows = [r for r in rows if kinds[r] == query.kind]
    if query.text is not None:
        wanted = query.text.casefold()
        edited = {
            catalog.row_of[s]
            for s, c in controls.items()
            if c.answer is not None and s in catalog.row_of and wanted in c.answer.casefold()
        }
        text = catalog.text
        rows = [r for r in rows if wanted in text[r] or r in edited]
    matched = rows if isinstance(rows, range) else set(rows)
    served = [
        (-u.served, row)
        for s, u in usage.items()
        if u.served and (row := catalog.row_of.get(s)) is not None and row in matched
    ]
    start = (query.page - 1) * query.per_page
    top = heapq.nsmallest(start + query.per_page, served)
    page = [row for _, row in top[start:]]
    if len(page) < query.per_page:
        served_rows = {row for _, row in served}
        rest = (r for r in rows if r not in served_rows)
        skip = max(0, start - len(served))
        page += itertools.islice(rest, skip, skip + query.per_page - len(page))
    entries = tuple(library_entry(pairs[row], controls, usage, catalog.row_of) for row in page)
    return LibraryPage(entries, len(rows), query.page, query.per_page, len(pairs), catalog.intents)


def _rows_of(catalog: LibraryCatalog, sources: Iterable[str]) -> list[int]:
    return sorted(row for s in sources if (row := catalog.row_of.get(s)) is not None)


def library_entry(
    pair: IndexedPair,
    controls: Mapping[str, AnswerControl],
    usage: Mapping[str, AnswerUsage],
    indexed: Container[str] = (),
) -> LibraryEntry:
    """The library's view of `pair`; `indexed` holds the index's sources (to say whether an
    edited answer's approved replacement is indexed)."""
    control = controls.get(pair.source)
    if control is not None and not control.holds_for(pair.question):
        control = None  # taken about another pair that had this source: not applied
    return LibraryEntry(
        pair.question,
        pair.answer,
        pair.intent,
        pair.source,
        pair.kind,
        usage.get(pair.source, NO_USAGE),
        control,
        replaced_by(control, indexed),
    )


def check_answer_text(text: str) -> str:
    """An edited answer's text, trimmed, or BadRequestError when it is empty or too long."""
    text = text.strip()
    if not text:
        raise BadRequestError('field "answer" is empty; write the answer customers should get')
    if len(text) > MAX_ANSWER_CHARS:
        raise BadRequestError(
            f'field "answer" is {len(text)} characters; an answer holds at most {MAX_ANSWER_CHARS}'
        )
    return text


def known_intents(model_labels: Sequence[str], corrected: Sequence[str]) -> list[str]:
    """The live model's intents, the ones agents named and `OUT_OF_SCOPE`, each once, sorted."""
    return sorted(set(model_labels) | set(corrected) | {OUT_OF_SCOPE})


class AgentDesk:
    """What agents and operators do in the console.

    Args:
        conversations: the conversation store (claims, replies, feedback).
        desk: the desk's own queries and changes.
        router: the message templates (notices to the customer).
        dispatcher: pushes agents' replies and notices through the customer's channel.
        bus: where changes are published for every open console (topic "console").
        metrics: counters to update.
        intent_labels: the live intent model's labels (they change on a model reload).
        unclaimed_timeout_s: how long an escalation may wait unclaimed before the customer
            is told (routing message `unclaimed`); only business hours count (`hours`):
            outside them the hand-off message already said when someone will answer.
        clock: the current time (injected so tests control it).
        hours: when agents answer (default: always).
        ask_rating: after resolving, ask the customer to rate the help (CSAT).
        answer_pairs: the live answer index's pairs (they change when a rebuilt index is
            swapped in), for the answer library.
        excluded_answers: the answers curation kept out of the live index, the most frequent
            first (saved with it), for the library's "Excluded by curation" view.
        rated: the service's demoted answers: an agent's Good/Bad touches them, so it holds
            from the next message (see `bot.core.demotion.RatedAnswers`).
    """

    def __init__(
        self,
        conversations: ConversationStore,
        desk: DeskStore,
        router: Router,
        dispatcher: Dispatcher,
        bus: EventBus,
        metrics: Metrics,
        intent_labels: Callable[[], Sequence[str]],
        unclaimed_timeout_s: float,
        clock: Clock = utcnow,
        hours: BusinessHours | None = None,
        ask_rating: bool = True,
        answer_pairs: Callable[[], Sequence[IndexedPair]] = tuple,
        excluded_answers: Callable[[], Sequence[ExcludedAnswer]] = tuple,
        rated: RatedAnswers | None = None,
    ) -> None:
        self.conversations = conversations
        self.desk = desk
        self.router = router
        self.dispatcher = dispatcher
        self.bus = bus
        self.metrics = metrics
        self.intent_labels = intent_labels
        self.unclaimed_timeout_s = unclaimed_timeout_s
        self.clock = clock
        self.hours = hours
        self.ask_rating = ask_rating
        self.answer_pairs = answer_pairs
        self.excluded_answers = excluded_answers
        self.rated = rated
        self._catalog: LibraryCatalog | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching for unclaimed escalations."""
        self._watcher = asyncio.create_task(self._watch_unclaimed(), name="unclaimed-timeout")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        await cancel_and_wait(watcher)

    # -- reading -----------------------------------------------------------------------------

    async def queue(self) -> list[QueueItem]:
        """Unresolved escalations, most urgent first."""
        return await self.desk.queue()

    async def view(self, conversation_id: str) -> ConversationView:
        """A conversation with its escalation, messages and labels."""
        return await self.desk.view(conversation_id)

    async def search(self, query: SearchQuery) -> SearchPage:
        """Conversations with their history, resolved ones included, most recently active
        first (BadRequestError for a malformed query)."""
        return await self.desk.search(check_search(query))

    async def history(self, conversation_id: str) -> CustomerHistory:
        """The conversation's earlier hand-offs and the customer's other conversations."""
        return await self.desk.history(conversation_id)

    async def intents(self) -> list[str]:
        """The live model's intents plus those agents named in corrections, sorted."""
        return known_intents(self.intent_labels(), await self.desk.corrected_intents())

    async def dashboard(self, agent: Agent, days: int) -> Dashboard:
        """Per-day figures for operators.

        Raises:
            ForbiddenError: `agent` is not an operator.
        """
        if not agent.is_operator:
            raise ForbiddenError(
                f"the dashboard is for operators; {agent.name} is an {agent.role.value}"
            )
        return await self.desk.dashboard(days)

    # -- changing hands ----------------------------------------------------------------------

    async def claim(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Take the conversation's escalation (ConflictError if a colleague has it).

        The customer is told who joined (routing message `claimed`, `{agent}`), on their
        channel: until then they were told they wait, never that someone is there.
        """
        before = await self.conversations.get_conversation(conversation_id)
        escalation = await self.conversations.claim(conversation_id, agent.name)
        await self._publish("escalation.claimed", escalation, agent=agent.name)
        if before.assignee != agent.name:  # claiming one's own claim again says nothing
            text = self.router.message("claimed", before.sender_name)
            notice = await self.conversations.add_message(
                conversation_id,
                Role.SYSTEM,
                text.replace("{agent}", agent.name),
                details={"event": "claimed", "agent": agent.name},
            )
            conversation = await self.conversations.get_conversation(conversation_id)
            await self._deliver(conversation, notice)
        return escalation

    async def release(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Put a claimed conversation back in the queue (its assignee or an operator)."""
        escalation = await self.desk.release(conversation_id, agent.name, agent.is_operator)
        await self._publish("escalation.released", escalation, agent=agent.name)
        return escalation

    async def colleagues(self) -> list[str]:
        """Who a conversation can be given to: the accounts that can sign in, sorted."""
        return await self.desk.colleagues()

    async def transfer(self, conversation_id: str, agent: Agent, to: str) -> EscalationRecord:
        """Assign the conversation (from the queue) or transfer a claim to colleague `to`;
        `to` holds it from now on, and the customer is told who joined (routing message
        `claimed`), as on a claim.

        Raises:
            BadRequestError: `to` is no account that can sign in.
            NotFoundError: nothing unresolved to transfer.
            ConflictError: a colleague has claimed it and `agent` is not an operator.
        """
        colleagues = await self.desk.colleagues()
        if to not in colleagues:
            raise BadRequestError(
                f"no agent can take it under the name {to[:80]!r}; pick one of "
                f"{', '.join(colleagues) or 'the agents (none yet)'}"
            )
        before = await self.conversations.get_conversation(conversation_id)
        escalation = await self.desk.transfer(conversation_id, agent.name, agent.is_operator, to)
        await self._publish("escalation.transferred", escalation, agent=agent.name, to=to)
        if before.assignee != to:
            text = self.router.message("claimed", before.sender_name)
            notice = await self.conversations.add_message(
                conversation_id,
                Role.SYSTEM,
                text.replace("{agent}", to),
                details={"event": "transferred", "agent": to, "by": agent.name},
            )
            conversation = await self.conversations.get_conversation(conversation_id)
            await self._deliver(conversation, notice)
        return escalation

    async def resolve(self, conversation_id: str, agent: Agent) -> EscalationNotice:
        """Close the escalation as dealt with; the bot answers again."""
        return await self._close(conversation_id, agent, "resolved")

    async def hand_back(self, conversation_id: str, agent: Agent) -> EscalationNotice:
        """Give the conversation back to the bot (outcome `handed_back`)."""
        return await self._close(conversation_id, agent, "handed_back")

    async def _close(self, conversation_id: str, agent: Agent, outcome: str) -> EscalationNotice:
        conversation = await self.conversations.get_conversation(conversation_id)
        notice = self.router.message(outcome, conversation.sender_name)
        closed = await self.desk.close(
            conversation_id, agent.name, agent.is_operator, outcome, notice
        )
        await self._deliver(closed.conversation, closed.notice)
        if outcome == "resolved" and self.ask_rating:
            await self._ask_for_rating(closed, agent)
        await self._publish(
            "escalation.resolved", closed.escalation, agent=agent.name, outcome=outcome
        )
        return closed

    async def _ask_for_rating(self, closed: EscalationNotice, agent: Agent) -> None:
        """Ask the customer to rate the help 1-5 (`bot/core/csat.py`), with score buttons;
        their answer is taken by `ConversationService` before the bot sees it."""
        question = await self.conversations.add_message(
            closed.conversation.id,
            Role.SYSTEM,
            self.router.message("csat_question", closed.conversation.sender_name),
            details=csat.request_details(closed.escalation, agent.name),
        )
        await self._deliver(closed.conversation, question)

    # -- answering ---------------------------------------------------------------------------

    async def reply(
        self, conversation_id: str, agent: Agent, text: str
    ) -> tuple[StoredMessage, Delivery]:
        """Store an agent's reply and push it through the customer's channel.

        Returns:
            (the stored message, whether the channel took it and, if not, why). A channel
            failure keeps the message (it is in the transcript).

        Raises:
            BadRequestError: the text is empty.
            ConflictError: the caller has not claimed the conversation.
        """
        text = text.strip()
        if not text:
            raise BadRequestError('field "text" is empty; write the reply to send')
        # The claim is checked in the same transaction that stores the reply.
        stored = await self.conversations.add_message(
            conversation_id,
            Role.AGENT,
            text,
            route=Route.AGENT,
            details={"agent": agent.name},
            claimed_by=agent.name,
        )
        conversation = await self.conversations.get_conversation(conversation_id)
        await self.bus.publish(
            TOPIC,
            {
                "type": "message",
                "conversation_id": conversation_id,
                "channel": conversation.channel,
                "message_id": stored.id,
                "status": conversation.status.value,
            },
        )
        return stored, await self._deliver(conversation, stored)

    # -- labels ------------------------------------------------------------------------------

    async def label_message(
        self,
        message_id: int,
        agent: Agent,
        intent: str | None = None,
        sentiment: str | None = None,
        rating: str | None = None,
    ) -> int:
        """Store an agent's corrections of a message as feedback authored by the agent.

        Args:
            intent: the right intent of a customer message (a known one, or a new name of
                lower-case letters, digits and `_`).
            sentiment: negative, neutral or positive (a customer message).
            rating: good or bad (a bot message).

        Returns:
            The feedback row's id.

        Raises:
            BadRequestError: nothing to store, a value out of range, or a label that does not
                fit the message's role.
            NotFoundError: no message has this id.
        """
        if intent is None and sentiment is None and rating is None:
            raise BadRequestError('send at least one of "intent", "sentiment", "rating"')
        message = await self.desk.message(message_id)
        if (intent is not None or sentiment is not None) and message.role != Role.CUSTOMER:
            raise BadRequestError(
                f"message {message_id} is a {message.role.value} message; intent and sentiment "
                "labels are for customer messages"
            )
        if rating is not None and message.role != Role.BOT:
            raise BadRequestError(
                f"message {message_id} is a {message.role.value} message; ratings are for the "
                "bot's messages"
            )
        if rating is not None and rating not in RATINGS:
            raise BadRequestError(f'field "rating" must be "good" or "bad"; got {rating!r}')
        if sentiment is not None:
            check_sentiment(sentiment)
        if intent is not None:
            await self._check_intent(intent)
        feedback = Feedback(
            message_id=message_id,
            rating=None if rating is None else RATINGS[rating],
            corrected_intent=intent,
            corrected_sentiment=sentiment,
            author=agent.name,
        )
        return await store_feedback(self.conversations, self.metrics, feedback, self.rated)

    async def label_conversation(self, conversation_id: str, agent: Agent, sentiment: str) -> int:
        """Store an agent's overall sentiment of a conversation."""
        return await self.desk.label_conversation(conversation_id, sentiment, agent.name)

    async def approval_draft(self, answer_message_id: int) -> ApprovalDraft:
        """The question and intent "Save as approved answer" proposes for an agent's reply
        (`suggest_question`), for the agent to check and edit before saving.

        Raises:
            NotFoundError: no message has this id.
            BadRequestError: it is not an agent's reply.
        """
        answer = await self.desk.message(answer_message_id)
        check_approvable(answer)
        view = await self.desk.view(answer.conversation_id)
        return approval_draft(view.messages, answer, view.labels)

    async def approve_answer(
        self,
        agent: Agent,
        answer_message_id: int,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
        answer: str | None = None,
    ) -> int:
        """Save an agent's reply (or `answer`, the agent's cleaner version of it) as an
        approved answer (for the next answer index). Without `question` and
        `question_message_id`, the question is the one `approval_draft` proposes.

        Raises:
            BadRequestError: `intent` is neither a known intent nor a valid new name, `answer`
                is empty or too long, or the messages do not fit (see
                `DeskStore.approve_answer`).
            NotFoundError: a message does not exist.
        """
        if intent is not None:
            await self._check_intent(intent)
        if answer is not None:
            answer = check_answer_text(answer)
        if question is not None:
            question = question.strip() or None
        if question_message_id is None and question is None:
            draft = await self.approval_draft(answer_message_id)
            if draft.questions:
                question_message_id = draft.questions[0].id
                question = draft.question
                intent = intent if intent is not None else draft.intent
        return await self.desk.approve_answer(
            answer_message_id, agent.name, question_message_id, question, intent, answer
        )

    # -- the answer library --------------------------------------------------------------------

    async def library(self, query: LibraryQuery) -> LibraryPage:
        """One page of the live index's answers with their use, ratings and the agents'
        decisions (BadRequestError for a malformed query)."""
        query = check_library(query)
        controls = by_source(await self.desk.answer_controls())
        usage = await self.desk.answer_usage()
        return library_page(self._library_catalog(), controls, usage, query)

    async def disable_answer(
        self, agent: Agent, source: str, disabled: bool = True
    ) -> LibraryEntry:
        """Stop serving an indexed answer from the next message on, on every replica
        (`disabled` False: serve it again). Any agent may, as with canned responses.

        Raises:
            NotFoundError: the live index holds no answer of this source (to disable).
        """
        pair = self._pair(source) if disabled else self._find_pair(source)
        question = None if pair is None else pair.question
        await self.desk.disable_answer(source, disabled, agent.name, question)
        await self._answer_changed(source, "disabled" if disabled else "enabled", agent)
        return await self._entry(source, pair)

    async def edit_answer(
        self, agent: Agent, source: str, answer: str, intent: str | None = None
    ) -> LibraryEntry:
        """Replace an indexed answer with an agent's clean version: served at once in place
        of the original (same question, same embedding row), and saved as an approved
        answer (trusted as written) that joins the index at the next `supportbot index
        build` or `supportbot retrain` (then it replaces the original: see
        `library.controlled`).

        Raises:
            NotFoundError: the live index holds no answer of this source.
            BadRequestError: the text is empty or too long, or the intent is malformed.
        """
        pair = self._pair(source)
        text = check_answer_text(answer)
        if intent is not None:
            await self._check_intent(intent)
        await self.desk.edit_answer(
            source, pair.question, text, intent if intent is not None else pair.intent, agent.name
        )
        await self._answer_changed(source, "edited", agent)
        return await self._entry(source, pair)

    async def approve_indexed(self, agent: Agent, source: str) -> LibraryEntry:
        """Keep an indexed conversation answer as an approved answer (trusted as written from
        the next `supportbot index build` or retrain); FAQ entries and approved answers
        already are.

        Raises:
            NotFoundError: the live index holds no answer of this source.
            BadRequestError: the answer is an FAQ entry or already approved.
        """
        pair = self._pair(source)
        if pair.kind != "conversation":
            raise BadRequestError(
                f"{source} is {'an' if pair.kind == 'approved' else 'a'} {pair.kind} answer, "
                "trusted as written already; only conversation answers need approving"
            )
        await self.desk.approve_indexed(source, pair.question, pair.answer, pair.intent, agent.name)
        await self._answer_changed(source, "approved", agent)
        return await self._entry(source, pair)

    async def excluded(
        self, text: str | None = None, page: int = 1, per_page: int = 20
    ) -> ExcludedPage:
        """One page of the answers curation kept out of the live index, the most frequent
        first, with what agents did about them (BadRequestError for a malformed query)."""
        query = check_library(LibraryQuery(text=text, page=page, per_page=per_page))
        controls = by_source(await self.desk.answer_controls())
        return excluded_page(
            self.excluded_answers(), controls, query.text, query.page, query.per_page
        )

    async def approve_excluded(
        self,
        agent: Agent,
        source: str,
        question: str,
        answer: str,
        intent: str | None = None,
    ) -> ExcludedEntry:
        """Save an agent's clean version of an excluded answer as an approved answer (the
        store path of an edit: trusted as written, indexed at the next `supportbot index
        build` or retrain); saving again updates the same approved answer.

        Raises:
            NotFoundError: the live index's curation report lists no answer from `source`.
            BadRequestError: the question or answer is empty or too long, or the intent is
                malformed.
        """
        found = next((e for e in self.excluded_answers() if e.source == source), None)
        if found is None:
            raise NotFoundError(
                f"the answer index's curation report lists no excluded answer from "
                f"{source[:200]!r}; the index may have been rebuilt: reload the answer library"
            )
        asked = question.strip()
        if not asked:
            raise BadRequestError(
                'field "question" is empty; write the question customers ask, without '
                "this customer's details"
            )
        if len(asked) > MAX_ANSWER_CHARS:
            raise BadRequestError(
                f'field "question" is {len(asked)} characters; at most {MAX_ANSWER_CHARS}'
            )
        text = check_answer_text(answer)
        if intent is not None:
            await self._check_intent(intent)
        await self.desk.edit_answer(
            source,
            found.question,
            text,
            intent if intent is not None else found.intent,
            agent.name,
            clean_question=asked,
        )
        await self._answer_changed(source, "approved", agent)
        controls = by_source(await self.desk.answer_controls())
        return excluded_page([found], controls).entries[0]

    def _library_catalog(self) -> LibraryCatalog:
        """The live pairs' catalog (made again only when another index was swapped in)."""
        pairs = self.answer_pairs()
        if self._catalog is None or self._catalog.pairs is not pairs:
            self._catalog = LibraryCatalog(pairs)
        return self._catalog

    def _find_pair(self, source: str) -> IndexedPair | None:
        catalog = self._library_catalog()
        row = catalog.row_of.get(source)
        return None if row is None else catalog.pairs[row]

    def _pair(self, source: str) -> IndexedPair:
        pair = self._find_pair(source)
        if pair is None:
            raise NotFoundError(
                f"the answer index holds no answer from {source[:200]!r}; it may have been "
                "rebuilt: reload the answer library"
            )
        return pair

    async def _entry(self, source: str, pair: IndexedPair | None) -> LibraryEntry:
        controls = by_source(await self.desk.answer_controls())
        usage = await self.desk.answer_usage()
        if pair is None:  # re-enabled after the index dropped it
            control = controls.get(source)
            text = control.answer if control is not None and control.answer else ""
            return LibraryEntry("", text, None, source, "", usage.get(source, NO_USAGE), control)
        return library_entry(pair, controls, usage, self._library_catalog().row_of)

    async def _answer_changed(self, source: str, action: str, agent: Agent) -> None:
        log.info("answer %s %s by %s", source, action, agent.name)
        await self.bus.publish(
            TOPIC,
            {"type": "answer.changed", "source": source, "action": action, "agent": agent.name},
        )

    # -- canned responses and notes ----------------------------------------------------------

    async def canned_responses(
        self, agent: Agent, conversation_id: str | None = None
    ) -> list[FilledResponse]:
        """Every canned response, by shortcut, with its variables filled for the conversation
        (when one is given; otherwise only `{agent}`)."""
        responses = await self.desk.canned_responses()
        if conversation_id is None:
            values = {"agent": agent.name}
        else:
            view = await self.desk.view(conversation_id)
            values = conversation_variables(view.conversation, agent, view.messages)
        filled = []
        for response in responses:
            text, missing = fill_variables(response.text, values)
            filled.append(FilledResponse(response, text, missing))
        return filled

    async def save_canned(
        self, agent: Agent, shortcut: str, title: str, text: str, canned_id: int | None = None
    ) -> CannedResponse:
        """Create a canned response, or change the one `canned_id` names (any agent: it is
        the team's library; the last author is kept).

        Raises:
            BadRequestError: a field is empty, too long, or the shortcut is malformed.
            ConflictError: another canned response has this shortcut.
            NotFoundError: `canned_id` names none.
        """
        shortcut, title, text = check_canned(shortcut, title, text)
        return await self.desk.save_canned(canned_id, shortcut, title, text, agent.name)

    async def delete_canned(self, agent: Agent, canned_id: int) -> None:
        """Delete a canned response (NotFoundError when there is none)."""
        await self.desk.delete_canned(canned_id)
        log.info("canned response %s deleted by %s", canned_id, agent.name)

    async def add_note(self, conversation_id: str, agent: Agent, text: str) -> Note:
        """Keep a private note on a conversation, for agents only (never sent), and tell the
        open consoles (event `note`)."""
        note = await self.desk.add_note(conversation_id, agent.name, check_note(text))
        await self.bus.publish(
            TOPIC,
            {
                "type": "note",
                "conversation_id": conversation_id,
                "note_id": note.id,
                "agent": agent.name,
            },
        )
        return note

    # -- the unclaimed timeout ---------------------------------------------------------------

    async def time_out_unclaimed(self) -> list[EscalationNotice]:
        """Tell the customers of escalations unclaimed for too long, once each.

        Returns:
            The escalations this process timed out (another replica may have taken some).
        """
        now = self.clock()
        cutoff = now - timedelta(seconds=self.unclaimed_timeout_s)
        if self.hours is not None and not (self.hours.is_open(now) and self.hours.is_open(cutoff)):
            # Closed, or opened less than a timeout ago: nobody has had the time to claim
            # yet ("all our agents are busy" at night, or at 8:00 sharp, would be untrue).
            return []
        done = []
        for escalation, conversation in await self.desk.unclaimed_since(cutoff):
            notice = self.router.message("unclaimed", conversation.sender_name)
            timed_out = await self.desk.time_out(escalation.id, notice)
            if timed_out is None:
                continue
            await self._deliver(timed_out.conversation, timed_out.notice)
            await self._publish("escalation.timeout", timed_out.escalation)
            done.append(timed_out)
        return done

    async def _watch_unclaimed(self) -> None:
        # Often enough that the notice is at most a quarter of the timeout late, at most every
        # 5 s (one cheap indexed query).
        interval = min(5.0, max(0.05, self.unclaimed_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.time_out_unclaimed()
            except StoreUnavailableError as exc:
                log.warning("unclaimed-timeout check skipped: %s", exc)
            except Exception:  # a background loop's boundary: log, keep watching
                log.exception("unclaimed-timeout check failed")

    # -- internals ---------------------------------------------------------------------------

    async def _check_intent(self, intent: str) -> None:
        """Refuse (BadRequestError) an intent label that is neither one the live model or an
        agent's correction knows, nor a valid new name: labels become training data, so
        nothing else gets in (`../x`, control characters, pages of text)."""
        if INTENT_NAME.fullmatch(intent) or intent in await self.intents():
            return
        shown = intent if len(intent) <= 80 else f"{intent[:80]}... ({len(intent)} characters)"
        raise BadRequestError(
            f"intent {shown!r} is neither a known intent nor a valid new name; a new "
            "intent is 2-64 lower-case letters, digits and _, starting with a letter"
        )

    async def _deliver(self, conversation: Conversation, message: StoredMessage) -> Delivery:
        """Push a stored message to the customer's channel (falsy when the channel failed)."""
        try:
            await self.dispatcher.deliver(conversation, reply_of(message))
        except DeliveryError as exc:
            log.warning(
                "message %s to %s conversation %s is stored but was not delivered: %s",
                message.id,
                conversation.channel,
                conversation.id,
                exc,
            )
            return Delivery(False, str(exc))
        return Delivery(True)

    async def _publish(self, kind: str, escalation: EscalationRecord, **extra: str) -> None:
        await self.bus.publish(
            TOPIC,
            {
                "type": kind,
                "conversation_id": escalation.conversation_id,
                "escalation_id": escalation.id,
                **extra,
            },
        )

"""The runtime's own event and record types.

Connectors translate transport payloads into `Message` and render `Reply`; the core never sees
a transport object. Events are frozen and slotted and hold no reference to a connector or to
the bot: whatever must happen next happens through the service that received them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.core.entities import Entity


class Role(StrEnum):
    """Who wrote a message."""

    CUSTOMER = "customer"
    BOT = "bot"
    AGENT = "agent"
    SYSTEM = "system"


class ConversationStatus(StrEnum):
    """Who is in charge of a conversation.

    `bot` answers; `waiting` is escalated and waiting for an agent; `claimed` is handled by an
    agent. In `waiting` and `claimed` the bot stays silent. Resolving returns it to `bot`.
    """

    BOT = "bot"
    WAITING = "waiting"
    CLAIMED = "claimed"


class EscalationStatus(StrEnum):
    """Where an escalation is: `open` (in the queue), `claimed` (an agent has it), `resolved`.

    The transitions are in `bot/core/handoff.py`, and nowhere else.
    """

    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


class Outcome(StrEnum):
    """How an escalation was closed."""

    RESOLVED = "resolved"
    HANDED_BACK = "handed_back"


class Route(StrEnum):
    """How the bot answered (or did not answer) a customer message."""

    RESPONSE = "response"  # a configured response template
    ANSWER = "answer"  # retrieved from past agents' answers / FAQ
    HANDLER = "handler"  # a custom Python handler
    REPHRASE = "rephrase"  # not sure: asked the customer to rephrase
    SLOT_QUESTION = "slot_question"  # asked for a detail the intent's route requires
    HANDOFF = "handoff"  # escalated to a person
    AGENT = "agent"  # conversation is with an agent: the bot stayed silent
    DUPLICATE = "duplicate"  # a retried delivery of a message already handled


@dataclass(frozen=True, slots=True)
class Message:
    """A customer message as a connector hands it to the core.

    Attributes:
        channel: `rest`, `widget`, `telegram`, `rasa`, ...
        sender: the customer's id within the channel (chat id, widget session id, ...);
            (channel, sender) identifies the conversation.
        text: what the customer wrote.
        client_id: the channel's id for this message, if any; a second delivery with the same
            id is recognised and not answered twice.
        sender_name: display name, used by response templates (`{name}`).
        metadata: extra channel data worth keeping (e.g. Telegram message id).
    """

    channel: str
    sender: str
    text: str
    client_id: str | None = None
    sender_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scored:
    """A label and its calibrated probability."""

    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Understanding:
    """What the models made of one customer message.

    Attributes:
        intent: the best intent, or None when the model abstained (below its threshold).
        intent_confidence: calibrated probability of the best intent.
        top_intents: the best few guesses, best first.
        sentiment: negative / neutral / positive.
        negativity: P(negative) - P(positive), in [-1, 1]; the escalation policy's signal.
        model_versions: e.g. {"intent": "v3", "sentiment": "v1"}.
        query_embedding: the message embedded with the answer index's encoder, when the
            models share their forward with it (bot/nlu/shared_encoder.py); else None and the
            index embeds the message itself.
        out_of_scope: the message is about none of the intents the model knows (its
            out-of-scope score is above the detector's threshold, or it predicted the
            out-of-scope label it was trained with); `intent` is then None.
        oos_score: the detector's score (higher: further from anything trained; the
            threshold is in the intent model's `oos_detector.json`); None without a detector.
        entities: the spans the learned entity model found (`supportbot train entity`);
            empty without one. The service merges them with the rule-based entities.
    """

    intent: str | None
    intent_confidence: float
    top_intents: tuple[Scored, ...]
    sentiment: str
    negativity: float
    sentiment_scores: tuple[Scored, ...]
    model_versions: dict[str, str]
    query_embedding: Any = field(default=None, compare=False, repr=False)
    out_of_scope: bool = False
    oos_score: float | None = None
    entities: tuple[Entity, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """A past agent answer (or FAQ entry) found for a question."""

    text: str
    score: float
    source: str
    question: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Something said to the customer (by the bot, an agent or the system).

    Attributes:
        message_id: the stored message id; feedback refers to it.
        quick_replies: choices the channel may show as buttons.
        rateable: whether the channel should offer feedback buttons.
    """

    conversation_id: str
    message_id: int
    role: Role
    text: str
    route: Route | None = None
    quick_replies: tuple[str, ...] = ()
    rateable: bool = False


@dataclass(frozen=True, slots=True)
class Escalation:
    """A decision to hand a conversation to a person, and why.

    Attributes:
        reason: `negative_message`, `negative_trend`, `asked_for_human`, `repeated_fallback`,
            `upset_fallback`.
        priority: higher is more urgent (how negative, set at escalation time).
        explanation: one sentence a person can read.
        scores: the numbers behind the decision.
    """

    reason: str
    priority: float
    explanation: str
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class Feedback:
    """A rating of a bot reply, or a correction."""

    message_id: int
    rating: str | None = None  # "up" | "down"
    comment: str | None = None
    corrected_intent: str | None = None
    corrected_sentiment: str | None = None
    author: str = "customer"


@dataclass(frozen=True, slots=True)
class AnswerRating:
    """A thumbs-up/down (or an agent's Good/Bad) on an answer the bot served from the index.

    Attributes:
        source: the served answer's index source (`file:line`, the reply's `details`).
        text: the reply as the customer saw it.
        intent: the intent of the customer's question it answered (None when unsure).
        rating: "up" or "down".
        feedback_id: the feedback row's id (ratings come in this order; a reader asks for
            the ones after the last it saw).
    """

    source: str
    text: str
    intent: str | None
    rating: str
    feedback_id: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Turn:
    """Everything the bot decided about one customer message, recorded in one transaction.

    Attributes:
        message_id: the customer message it is about.
        route: the route taken (stored on the customer message).
        details: stored on the customer message (scores, sources, top guesses).
        reply_text: the bot's reply, or None when it stays silent.
        reply_details: stored on the reply (e.g. quick replies).
        failed_turns: the conversation's new count of failed turns in a row, or None.
        escalation: an escalation to open with this turn, or None.
    """

    message_id: int
    understanding: Understanding
    route: str
    latency_ms: float
    details: dict[str, Any] = field(default_factory=dict)
    reply_text: str | None = None
    reply_details: dict[str, Any] = field(default_factory=dict)
    failed_turns: int | None = None
    escalation: Escalation | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the store keeps it."""

    id: int
    conversation_id: str
    role: Role
    text: str
    created_at: datetime
    client_id: str | None = None
    intent: str | None = None
    intent_confidence: float | None = None
    sentiment: str | None = None
    negativity: float | None = None
    route: str | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    latency_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Received:
    """A customer message as stored, with what handling it needs from the store.

    Attributes:
        conversation: the conversation as it was when the message was committed.
        message: the stored message (the earlier one for a retried delivery).
        new: False when `client_id` was already stored (a retried delivery).
        recent: the conversation's last messages up to and including this one, oldest first.
    """

    conversation: Conversation
    message: StoredMessage
    new: bool
    recent: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation as the store keeps it."""

    id: str
    channel: str
    sender: str
    status: ConversationStatus
    created_at: datetime
    updated_at: datetime
    sender_name: str | None = None
    failed_turns: int = 0
    assignee: str | None = None


@dataclass(frozen=True, slots=True)
class EscalationRecord:
    """An escalation as the store keeps it."""

    id: int
    conversation_id: str
    reason: str
    priority: float
    explanation: str
    scores: dict[str, float]
    status: EscalationStatus
    created_at: datetime
    assignee: str | None = None
    resolved_at: datetime | None = None
    claimed_at: datetime | None = None
    timed_out_at: datetime | None = None
    outcome: Outcome | None = None  # once closed


class AgentRole(StrEnum):
    """What a console account may do: `agent` (queue, replies, labels) or `operator` (also the
    dashboard, and closing or releasing colleagues' conversations)."""

    AGENT = "agent"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Agent:
    """A console account (never carries the password hash)."""

    id: int
    name: str
    role: AgentRole
    created_at: datetime
    disabled_at: datetime | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == AgentRole.OPERATOR


@dataclass(frozen=True, slots=True)
class AgentSession:
    """A signed-in console session.

    Attributes:
        id: SHA-256 (hex) of the cookie's token; what the database keeps.
        csrf_token: must come back in `X-CSRF-Token` with every state-changing request.
    """

    id: str
    agent: Agent
    csrf_token: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignIn:
    """A new session and the token for the browser's cookie (shown only this once)."""

    token: str
    session: AgentSession


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key for the server-to-server REST API, as the store keeps it (never the key itself).

    Attributes:
        name: what the operator called it (`supportbot api-keys create NAME`); unique among
            keys not revoked.
        prefix: the key's first characters (`sb_` and 8 more), to tell keys apart in lists.
        channels: the channels the key may act as (e.g. `rest`, `rasa`): where it may send
            messages, ask for a person, read transcripts and rate replies.
    """

    id: int
    name: str
    prefix: str
    channels: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A new API key and its secret (shown only this once; the store keeps a hash)."""

    key: str
    record: ApiKey

"""The ports the core depends on; the composition root (`bot/app/factory.py`) picks
implementations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from bot.core.records import (
    AgentSession,
    Answer,
    AnswerRating,
    ApiKey,
    Conversation,
    Escalation,
    EscalationRecord,
    Feedback,
    Received,
    Role,
    SignIn,
    StoredMessage,
    Turn,
    Understanding,
)

if TYPE_CHECKING:
    from bot.core.desk import (
        AnswerUsage,
        CannedResponse,
        ConversationView,
        CustomerHistory,
        Dashboard,
        EscalationNotice,
        Note,
        QueueItem,
        SearchPage,
        SearchQuery,
    )
    from bot.core.library import AnswerControl


class ConversationStore(Protocol):
    """Conversations, messages, escalations and feedback, durably.

    State lives here, not in process memory, so any replica can serve any conversation and a
    restart loses nothing. Every write is committed before the call returns.
    """

    async def start(self) -> None:
        """Connect and bring the schema up to date (Alembic migrations)."""

    async def stop(self) -> None:
        """Close connections."""

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the database answers."""

    async def conversation(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> Conversation:
        """The conversation of (channel, sender), created on first contact."""

    async def conversation_id(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> str:
        """`conversation(...).id`, possibly remembered from an earlier call (ids never change)."""

    async def find_conversation(self, channel: str, sender: str) -> Conversation | None:
        """The conversation of (channel, sender) if it exists; never creates one."""

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """A conversation by id; NotFoundError when unknown."""

    async def add_customer_message(
        self, conversation_id: str, text: str, client_id: str | None = None
    ) -> tuple[StoredMessage, bool]:
        """Persist a customer message; (message, False) if `client_id` was already stored."""

    async def receive(
        self, conversation_id: str, text: str, client_id: str | None = None, recent: int = 0
    ) -> Received:
        """Persist a customer message and read, in the same transaction, the conversation's
        state and its last `recent` messages (what deciding on the message needs)."""

    async def annotate(
        self,
        message_id: int,
        understanding: Understanding,
        route: str,
        latency_ms: float,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Attach model output, the route taken and the latency to a customer message."""

    async def add_message(
        self,
        conversation_id: str,
        role: Role,
        text: str,
        reply_to: int | None = None,
        route: str | None = None,
        details: dict[str, Any] | None = None,
        claimed_by: str | None = None,
    ) -> StoredMessage:
        """Persist a bot, agent or system message (a reply to `reply_to`, if given); with
        `claimed_by`, only while that agent holds the claim (ConflictError otherwise)."""

    async def record_turn(self, conversation_id: str, turn: Turn) -> StoredMessage | None:
        """Annotate the customer message, update failed turns, open the escalation and store
        the bot's reply, all in one transaction; returns the stored reply (None if silent)."""

    async def replies_to(self, message_id: int) -> list[StoredMessage]:
        """Messages stored as replies to `message_id`, oldest first."""

    async def transcript(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        """A conversation's messages, oldest first (the last `limit` when given)."""

    async def set_failed_turns(self, conversation_id: str, failed_turns: int) -> None:
        """Record how many bot turns in a row failed (fallback ladder)."""

    async def escalate(self, conversation_id: str, escalation: Escalation) -> EscalationRecord:
        """Open an escalation and set the conversation to `waiting`, atomically."""

    async def claim(self, conversation_id: str, agent: str) -> EscalationRecord:
        """An agent takes the open escalation; ConflictError if another agent has it."""

    async def resolve(self, conversation_id: str, agent: str) -> None:
        """Close the escalation and give the conversation back to the bot."""

    async def open_escalations(self) -> list[EscalationRecord]:
        """Escalations not yet resolved, most urgent first."""

    async def record_feedback(self, feedback: Feedback) -> int:
        """Store feedback on a message; NotFoundError when the message does not exist."""

    async def feedback(self, message_id: int) -> list[Feedback]:
        """Feedback stored for a message, oldest first."""

    async def answer_ratings(self, after: int = 0) -> list[AnswerRating]:
        """Every "up"/"down" on a bot reply served from the answer index (route `answer`)
        whose feedback id is above `after`, in feedback id order, with the reply's source and
        text and its question's intent (`bot/core/demotion.py` derives the demoted answers
        from them, reading only the new ones after the first time)."""


class Understander(Protocol):
    """Turns customer texts into intent and sentiment (batched where it can)."""

    async def understand(self, text: str) -> Understanding:
        """Classify one text; concurrent calls may share one model forward."""

    def ready(self) -> bool:
        """Whether the models are loaded."""


class AnswerIndex(Protocol):
    """Past questions and the answers that resolved them."""

    async def search(
        self,
        text: str,
        k: int = 3,
        intent: str | None = None,
        embedding: Any = None,
        slots: Mapping[str, str] | None = None,
    ) -> Sequence[Answer]:
        """The best answers for `text`, best first, each with its similarity score.

        `embedding`: `text` already embedded with the index's encoder (then it is not
        embedded again), e.g. `Understanding.query_embedding`.
        `slots`: what the conversation told the bot (`order_id` -> `BC-204719`); an answer
        template needing a slot that is not here (`{order_id}`) is left out, the others come
        back filled in (bot/core/entities.py `fill`)."""


class TurnLocks(Protocol):
    """Lets one turn of a conversation run at a time (in one process, or across replicas)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """`async with locks.hold(conversation_id): ...` runs alone for that conversation."""


class DeskStore(Protocol):
    """What the agents' desk reads and changes beyond `ConversationStore`: the queue, a
    conversation with its labels, releasing and closing escalations (through
    `bot/core/handoff.py`), labels, approved answers, the unclaimed timeout, the dashboard.
    """

    async def queue(self) -> list[QueueItem]:
        """Unresolved escalations, most urgent first."""

    async def view(self, conversation_id: str) -> ConversationView:
        """A conversation, its latest escalation, its messages and the agents' labels."""

    async def message(self, message_id: int) -> StoredMessage:
        """A message by id (NotFoundError when unknown)."""

    async def unresolved(self, conversation_id: str) -> EscalationRecord | None:
        """The conversation's unresolved escalation, if any."""

    async def release(self, conversation_id: str, agent: str, operator: bool) -> EscalationRecord:
        """Put a claimed escalation back in the queue (`handoff.release`)."""

    async def close(
        self, conversation_id: str, agent: str, operator: bool, outcome: str, notice: str
    ) -> EscalationNotice:
        """Close the unresolved escalation (`handoff.close`) and store the customer's notice,
        in one transaction."""

    async def check_claimed_by(self, conversation_id: str, agent: str) -> EscalationRecord:
        """The escalation `agent` has claimed (ConflictError otherwise)."""

    async def transfer(
        self, conversation_id: str, agent: str, operator: bool, to: str
    ) -> EscalationRecord:
        """Give the unresolved escalation to colleague `to` (`handoff.transfer`)."""

    async def colleagues(self) -> list[str]:
        """The names of the console accounts that can sign in, sorted."""

    async def unclaimed_since(
        self, cutoff: datetime
    ) -> list[tuple[EscalationRecord, Conversation]]:
        """Open escalations created at or before `cutoff` whose customer was not told yet."""

    async def time_out(self, escalation_id: int, notice: str) -> EscalationNotice | None:
        """Mark an open escalation timed out and store the notice; None when another replica
        (or a claim) came first."""

    async def label_conversation(self, conversation_id: str, sentiment: str, author: str) -> int:
        """Store an agent's overall sentiment of a conversation; returns the label's id."""

    async def approve_answer(
        self,
        answer_message_id: int,
        author: str,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
        answer: str | None = None,
    ) -> int:
        """Save an agent's reply (or `answer`, the agent's edit of it) as an approved
        answer; returns its id."""

    async def corrected_intents(self) -> list[str]:
        """Intents agents have named in corrections, sorted."""

    async def canned_responses(self) -> list[CannedResponse]:
        """Every canned response, by shortcut."""

    async def save_canned(
        self, canned_id: int | None, shortcut: str, title: str, text: str, author: str
    ) -> CannedResponse:
        """Create (`canned_id` None) or change a canned response (checked by
        `desk.check_canned`); ConflictError for a shortcut taken, NotFoundError for no such
        id."""

    async def delete_canned(self, canned_id: int) -> None:
        """Delete a canned response (NotFoundError when there is none)."""

    async def add_note(self, conversation_id: str, author: str, text: str) -> Note:
        """Store a private note (NotFoundError for an unknown conversation)."""

    async def search(self, query: SearchQuery) -> SearchPage:
        """One page of the conversations `query` finds (checked by `desk.check_search`)."""

    async def history(self, conversation_id: str) -> CustomerHistory:
        """The conversation's closed escalations and the customer's other conversations
        (NotFoundError for an unknown conversation)."""

    async def dashboard(self, days: int) -> Dashboard:
        """Per-day figures for the last `days` UTC days (today included)."""

    # -- the answer library (bot/core/library.py) --

    async def answer_controls(self) -> list[AnswerControl]:
        """The agents' decisions about indexed answers (see `AnswerControls`)."""

    async def answer_usage(self) -> dict[str, AnswerUsage]:
        """Per index source: how often the bot served it, its ratings up and down."""

    async def disable_answer(
        self, source: str, disabled: bool, author: str, question: str | None = None
    ) -> AnswerControl:
        """Stop (or resume) serving the indexed answer `source` (the pair of `question`;
        None keeps the one recorded)."""

    async def edit_answer(
        self,
        source: str,
        question: str,
        answer: str,
        intent: str | None,
        author: str,
        clean_question: str | None = None,
    ) -> AnswerControl:
        """Serve `answer` in place of `source`'s text, and keep the pair as an approved
        answer (the one of an earlier edit is updated) to `clean_question` (default
        `question`, the pair's)."""

    async def approve_indexed(
        self, source: str, question: str, answer: str, intent: str | None, author: str
    ) -> AnswerControl:
        """Keep an indexed pair as an approved answer (once: again returns the same)."""


class AnswerControls(Protocol):
    """Where the service reads which indexed answers agents disabled or edited (the
    answer library, `bot/core/library.py`); read for every answer it chooses, so a change
    holds from the next message on every replica."""

    async def answer_controls(self) -> list[AnswerControl]:
        """Every indexed answer agents disabled, edited or approved."""


class SessionStore(Protocol):
    """Console sign-in: the accounts' passwords, sessions and the sign-in rate limit."""

    async def sign_in(self, name: str, password: str, address: str) -> SignIn:
        """Check the password and open a session (UnauthorizedError, RateLimitedError)."""

    async def session(self, token: str) -> AgentSession:
        """The live session of a cookie's token (UnauthorizedError when there is none)."""

    async def sign_out(self, token: str) -> None:
        """End the session of a token (nothing happens for an unknown one)."""


class ApiKeyStore(Protocol):
    """What the REST API checks its callers against: API keys (stored hashed) and the
    channel of what a key asks to touch."""

    async def authenticate(self, key: str) -> ApiKey:
        """The key's record, its use noted (UnauthorizedError: unknown, malformed, revoked)."""

    async def any_active(self) -> bool:
        """Whether any key is not revoked (then every REST caller needs one)."""

    async def message_channel(self, message_id: int) -> str | None:
        """The channel of the conversation holding a message (None when there is none)."""

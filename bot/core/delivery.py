"""Delivering replies that do not answer a request: agent replies and system notices.

A bot reply travels back as the answer to the customer's own request. An agent's reply is
written later, on another request (the console's), so it must be pushed to the customer's
channel: each connector that can push registers a `Deliverer` for its channel here.

With several replicas, the agent's request and the customer's open socket may be on different
replicas. A channel whose deliverer reaches only this process's customers (the widget: its
sockets) is registered `local_only`; with a bus configured, its replies are published on the
bus topic "deliver" and every replica's dispatcher hands them to its own deliverer, which
pushes to the sockets it holds (usually on one replica, none elsewhere). A channel any replica
can reach (Telegram: the Bot API) is delivered directly by the replica that has the reply,
so it is sent exactly once. Replicas are identical (one configuration), so a channel with no
deliverer here has none anywhere: REST and Rasa clients are never pushed to, they read the
transcript, and `deliver` says so with a DeliveryError instead of pretending it delivered.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Protocol

from bot.core.background import cancel_and_wait
from bot.core.bus import EventBus
from bot.core.errors import SupportbotError
from bot.core.records import Conversation, ConversationStatus, Reply, Role, Route

DELIVER_TOPIC = "deliver"

log = logging.getLogger(__name__)


class DeliveryError(SupportbotError):
    """A reply could not be pushed to the customer's channel (it is stored regardless)."""


class Deliverer(Protocol):
    """Pushes a reply to one customer on one channel."""

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Send `reply` to `conversation.sender`; raise DeliveryError when it cannot."""


class Dispatcher:
    """Routes pushed replies to the deliverer of the conversation's channel.

    Channels with no deliverer (plain REST clients, Rasa) can only read replies from the
    transcript: for them `deliver` raises DeliveryError, so the agent learns the reply was
    not pushed; nothing is lost, because every reply is stored first.

    Args:
        bus: where replies of `local_only` channels travel to the replica holding the
            customer's connection; None (one process) delivers them directly.
    """

    def __init__(self, bus: EventBus | None = None) -> None:
        self._deliverers: dict[str, Deliverer] = {}
        self._local_only: set[str] = set()
        self._bus = bus
        self._listener: asyncio.Task[None] | None = None

    def register(self, channel: str, deliverer: Deliverer, *, local_only: bool = False) -> None:
        """Deliver the replies of `channel` through `deliverer`.

        Args:
            local_only: the deliverer reaches only customers connected to this process.
        """
        self._deliverers[channel] = deliverer
        if local_only:
            self._local_only.add(channel)
        else:
            self._local_only.discard(channel)

    def channels(self) -> list[str]:
        return sorted(self._deliverers)

    async def start(self) -> None:
        """Listen for replies other replicas publish for our customers (with a bus only)."""
        if self._bus is None or self._listener is not None:
            return
        subscribed = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(subscribed), name="dispatcher")
        await subscribed.wait()

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        await cancel_and_wait(listener)

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Push `reply` through the channel's deliverer.

        Raises:
            DeliveryError: no connector delivers to the channel, or its deliverer failed (the
                caller decides what to tell the agent; the reply stays stored). Replies sent
                over the bus cannot report failure: the widget shows them from the
                transcript on its next connect.
        """
        channel = conversation.channel
        if self._bus is not None and channel in self._local_only:
            await self._bus.publish(DELIVER_TOPIC, deliver_event(conversation, reply))
            return
        deliverer = self._deliverers.get(channel)
        if deliverer is None:
            pushed_to = ", ".join(self.channels()) or "none"
            raise DeliveryError(
                f"no connector delivers to channel {channel!r} (replies are pushed to: "
                f"{pushed_to}); the reply is stored, and the customer sees it only if their "
                "client reads the conversation (GET /api/v1/conversations/{id})"
            )
        await deliverer.deliver(conversation, reply)

    async def _listen(self, subscribed: asyncio.Event) -> None:
        assert self._bus is not None
        async with self._bus.subscribe(DELIVER_TOPIC) as events:
            subscribed.set()
            async for event in events:
                if event.get("type") == "lagged":
                    # Pushes may have been missed; the widget restores the transcript on its
                    # next connect, and the socket's heartbeat reconnects a dead link.
                    log.warning("reply delivery lagged behind the bus; clients resync on connect")
                    continue
                await self._deliver_here(event)

    async def _deliver_here(self, event: dict[str, Any]) -> None:
        try:
            conversation, reply = parse_deliver_event(event)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed deliver event (%s): %r", exc, event)
            return
        deliverer = self._deliverers.get(conversation.channel)
        if deliverer is None or conversation.channel not in self._local_only:
            return
        try:
            await deliverer.deliver(conversation, reply)
        except DeliveryError as exc:
            log.warning("reply %s not pushed here: %s", reply.message_id, exc)


def deliver_event(conversation: Conversation, reply: Reply) -> dict[str, Any]:
    """The bus event (topic "deliver") for `reply` to `conversation`'s customer."""
    return {
        "conversation_id": conversation.id,
        "channel": conversation.channel,
        "sender": conversation.sender,
        "conversation": {
            "status": conversation.status.value,
            "created_at": conversation.created_at.isoformat(),
            "updated_at": conversation.updated_at.isoformat(),
            "sender_name": conversation.sender_name,
            "failed_turns": conversation.failed_turns,
            "assignee": conversation.assignee,
        },
        "reply": {
            "message_id": reply.message_id,
            "role": reply.role.value,
            "text": reply.text,
            "route": reply.route.value if reply.route is not None else None,
            "quick_replies": list(reply.quick_replies),
            "rateable": reply.rateable,
        },
    }


def parse_deliver_event(event: dict[str, Any]) -> tuple[Conversation, Reply]:
    """The inverse of `deliver_event`.

    Raises:
        KeyError, TypeError, ValueError: the event is not one `deliver_event` made.
    """
    state, body = event["conversation"], event["reply"]
    conversation = Conversation(
        id=str(event["conversation_id"]),
        channel=str(event["channel"]),
        sender=str(event["sender"]),
        status=ConversationStatus(state["status"]),
        created_at=datetime.fromisoformat(state["created_at"]),
        updated_at=datetime.fromisoformat(state["updated_at"]),
        sender_name=state.get("sender_name"),
        failed_turns=int(state.get("failed_turns") or 0),
        assignee=state.get("assignee"),
    )
    reply = Reply(
        conversation_id=conversation.id,
        message_id=int(body["message_id"]),
        role=Role(body["role"]),
        text=str(body["text"]),
        route=Route(body["route"]) if body.get("route") else None,
        quick_replies=tuple(body.get("quick_replies") or ()),
        rateable=bool(body.get("rateable")),
    )
    return conversation, reply

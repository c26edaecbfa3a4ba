"""Delivering replies that do not answer a request: agent replies and system notices.

A bot reply travels back as the answer to the customer's own request. An agent's reply is
written later, on another request (the console's), so it must be pushed to the customer's
channel: each connector that can push registers a `Deliverer` for its channel here.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.errors import SupportbotError
from bot.events import Conversation, Reply

log = logging.getLogger(__name__)


class DeliveryError(SupportbotError):
    """A reply could not be pushed to the customer's channel (it is stored regardless)."""


class Deliverer(Protocol):
    """Pushes a reply to one customer on one channel."""

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Send `reply` to `conversation.sender`; raise DeliveryError when it cannot."""


class Dispatcher:
    """Routes pushed replies to the deliverer of the conversation's channel.

    Channels with no deliverer (plain REST clients, Rasa) read replies from the transcript;
    for them `deliver` does nothing, and nothing is lost, because every reply is stored first.
    """

    def __init__(self) -> None:
        self._deliverers: dict[str, Deliverer] = {}

    def register(self, channel: str, deliverer: Deliverer) -> None:
        self._deliverers[channel] = deliverer

    def channels(self) -> list[str]:
        return sorted(self._deliverers)

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Push `reply` through the channel's deliverer, if the channel has one.

        Raises:
            DeliveryError: the channel's deliverer failed (the caller decides what to tell
                the agent; the reply stays stored).
        """
        deliverer = self._deliverers.get(conversation.channel)
        if deliverer is None:
            log.info(
                "no push delivery for channel %s; reply %s waits in the transcript",
                conversation.channel,
                reply.message_id,
            )
            return
        await deliverer.deliver(conversation, reply)

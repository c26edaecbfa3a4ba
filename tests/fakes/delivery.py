"""A push channel for tests: a `Deliverer` (bot/core/delivery.py) that records what it was
given, and fails with DeliveryError while the test says the channel is down."""

from __future__ import annotations

import asyncio

from bot.core.delivery import DeliveryError
from bot.core.records import Conversation, Reply


class RecordingDeliverer:
    """Register it on the real `Dispatcher` for a channel name: `dispatcher.register("fake",
    deliverer)`; messages of conversations on that channel then land in `delivered`."""

    def __init__(self) -> None:
        self.delivered: list[tuple[Conversation, Reply]] = []
        self.refused: list[Reply] = []
        self.failure: str | None = None

    def fail(self, reason: str = "the channel is down") -> None:
        """Refuse every delivery from now on (until `recover`)."""
        self.failure = reason

    def recover(self) -> None:
        self.failure = None

    @property
    def texts(self) -> list[str]:
        """The texts delivered, in order."""
        return [reply.text for _, reply in self.delivered]

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        await asyncio.sleep(0)  # a network call would let other coroutines run
        if self.failure is not None:
            self.refused.append(reply)
            raise DeliveryError(
                f"could not push message {reply.message_id} to {conversation.sender} on "
                f"{conversation.channel}: {self.failure}"
            )
        self.delivered.append((conversation, reply))

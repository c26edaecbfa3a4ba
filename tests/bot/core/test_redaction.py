"""Customer details masked on the way in (issue 16): card numbers and IBANs always, other
entity types per `privacy.redact`, before the store, the models or the logs see them."""

from __future__ import annotations

import logging
import random

import pytest

from bot.core.errors import ConfigurationError
from bot.core.router import Router, RoutingConfig
from bot.core.service import ConversationService
from tests.bot.core.test_service import ROUTING, in_memory_core, message

CARD = "4111 1111 1111 1111"  # Luhn-valid test card
IBAN = "DE89 3704 0044 0532 0130 00"


async def test_card_numbers_and_ibans_never_reach_the_store_the_models_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with in_memory_core() as core:
        text = f"charged twice on {CARD}, refund to {IBAN} please, mail me at ada@example.org"
        await core.service.handle(message(text))
        customer, _ = await core.transcript()
        assert customer.text == (
            "charged twice on [CARD], refund to [IBAN] please, mail me at ada@example.org"
        )
        assert core.understander.texts == [customer.text]  # the models see the type only
        assert "1111" not in caplog.text and "0532" not in caplog.text
        # A card number that fails the Luhn check is just a number (an order, a phone).
        await core.service.handle(message("order 4111 1111 1111 1112", sender="bo"))
        assert (await core.transcript("bo"))[0].text == "order 4111 1111 1111 1112"


async def test_configured_types_are_masked_too_and_hand_off_requests_as_well() -> None:
    async with in_memory_core(redact=("email", "phone")) as core:
        await core.service.handle(message("I'm ada@example.org, call +49 30 1234567"))
        customer, _ = await core.transcript()
        assert customer.text == "I'm [EMAIL], call [PHONE]"
        await core.service.request_handoff(message(f"/human my card {CARD}", sender="bo"))
        assert (await core.transcript("bo"))[0].text == "/human my card [CARD]"


async def test_an_unknown_type_to_redact_is_refused_when_the_bot_starts() -> None:
    async with in_memory_core() as core:
        with pytest.raises(ConfigurationError, match="privacy.redact: emails is not an entity"):
            ConversationService(
                core.store,
                core.understander,
                core.answers,
                Router(RoutingConfig.parse(ROUTING, "x.yml"), rng=random.Random(0)),
                core.service._policy,
                core.metrics,
                0.5,
                redact=("emails",),
            )

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot.core.errors import ConfigurationError
from bot.core.router import Router, RoutingConfig


def test_packaged_default_handles_the_social_intents() -> None:
    config = RoutingConfig.load()
    router = Router(config, rng=random.Random(0))
    assert router.route_for("greeting").kind == "response"
    assert router.route_for("talk_to_human").kind == "handoff"
    assert router.route_for("refund_status").kind == "answer"  # default
    assert router.route_for(None).kind == "answer"  # abstained: try retrieval
    text = router.render(router.route_for("greeting").responses, "Ana")
    assert "Ana" in text and "{name}" not in text
    assert "{name}" not in router.render(router.route_for("greeting").responses, None)


def test_routing_file_errors_name_the_intent_and_field(tmp_path: Path) -> None:
    path = tmp_path / "routing.yml"
    path.write_text(
        "intents:\n  refund:\n    response: hi\n    handoff: true\n  other: shout\n"
        "messages:\n  rephrase: again?\n"
    )
    with pytest.raises(ConfigurationError) as info:
        RoutingConfig.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "intents.refund: give exactly one of" in message
    assert "intents.other: 'shout' is not a route" in message
    assert "messages.handoff: missing" in message


def test_unregistered_handler_is_rejected_and_registered_one_accepted(tmp_path: Path) -> None:
    path = tmp_path / "routing.yml"
    path.write_text(
        "intents:\n  order_status:\n    handler: look_up_order\n"
        "messages: {rephrase: a, handoff: b, waiting: c, error: d}\n"
    )
    router = Router(RoutingConfig.load(path))
    with pytest.raises(ConfigurationError, match="look_up_order"):
        router.check()

    async def look_up_order(context: object) -> str:
        return "shipped"

    router.add_handler("look_up_order", look_up_order)
    router.check()
    assert router.route_for("order_status").handler == "look_up_order"

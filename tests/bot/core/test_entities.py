"""Entity extraction (bot/core/entities.py): built-in types with their checks, configured
patterns and lookups from the routing YAML, their validation, and the helpers that reuse
the detector (mask, slot values, answer templates)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.entities import (
    Entity,
    EntityConfig,
    EntityExtractor,
    fill,
    iban_valid,
    luhn_valid,
    mask,
    placeholders,
    slot_values,
)
from bot.core.errors import ConfigurationError
from bot.core.router import RoutingConfig

SHOP = EntityConfig.parse(
    {
        "phone_region": "DE",
        "order_id": {
            "pattern": [r"\bBC[\s-]?(\d{6})\b", r"(?<![\w#])#(\d{6})\b"],
            "normalize": "BC-{1}",
        },
        "product": {"lookup": {"bread bin": ["breadbin", "bread box"], "teapot": []}},
    },
    "routing.yml",
)


def found(text: str, config: EntityConfig = SHOP) -> list[tuple[str, str, str]]:
    """(type, value, text as written) of each entity, checking the spans on the way."""
    entities = EntityExtractor(config).extract(text)
    for entity in entities:
        assert text[entity.start : entity.end] == entity.text
    return [(e.type, e.value, e.text) for e in entities]


@pytest.mark.parametrize(
    "written",
    ["BC-204719", "BC204719", "bc 204719", "#204719", "Bc-204719"],
)
def test_an_order_number_in_any_usual_spelling_has_the_canonical_value(written: str) -> None:
    assert found(f"my order {written} is late") == [("order_id", "BC-204719", written)]


@pytest.mark.parametrize(
    "text",
    ["I was charged twice for order 1234", "my order BC-111 is late", "BC-2047190 ok", "x#204719"],
)
def test_what_is_not_an_order_number_is_not_one(text: str) -> None:
    assert [t for t, *_ in found(text)] == []


def test_the_sample_shops_routing_file_configures_order_id() -> None:
    config = RoutingConfig.load().entities
    assert config.slot_types == {"order_id"}
    assert found("hello, order bc 204719 please", config) == [
        ("order_id", "BC-204719", "bc 204719")
    ]


def test_emails_urls_and_phones() -> None:
    text = (
        "write to John.Doe@Example.com, see https://brightcart.com/help). "
        "Call +49 30 1234 5678 or 030 12345678"
    )
    assert found(text) == [
        ("email", "john.doe@example.com", "John.Doe@Example.com"),
        ("url", "https://brightcart.com/help", "https://brightcart.com/help"),
        ("phone", "+493012345678", "+49 30 1234 5678"),
        ("phone", "+493012345678", "030 12345678"),
    ]


def test_a_national_phone_number_needs_the_configured_region() -> None:
    assert found("call 030 12345678", EntityConfig()) == []
    assert found("call +44 20 7946 0958", EntityConfig()) == [
        ("phone", "+442079460958", "+44 20 7946 0958")
    ]


def test_card_numbers_pass_luhn_and_ibans_mod_97() -> None:
    text = "card 4111 1111 1111 1111, not 4111 1111 1111 1112; IBAN DE89 3704 0044 0532 0130 00 OK"
    assert found(text) == [
        ("card", "4111111111111111", "4111 1111 1111 1111"),
        ("iban", "DE89370400440532013000", "DE89 3704 0044 0532 0130 00"),
    ]
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert found("4111-1111-1111-1111") == [("card", "4111111111111111", "4111-1111-1111-1111")]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("9,95 €", "EUR 9.95"),
        ("EUR 1.234,50", "EUR 1234.50"),
        ("$20", "USD 20"),
        ("15 euros", "EUR 15"),
        ("£1,200", "GBP 1200"),
    ],
)
def test_money_amounts_are_normalised(text: str, value: str) -> None:
    assert found(f"it cost {text} yesterday") == [("money", value, text)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("19 January 2026", "2026-01-19"),
        ("Jan 5th", "--01-05"),
        ("2026-01-05", "2026-01-05"),
        ("05/01/2026", "2026-01-05"),  # day first
        ("12/31/25", "2025-12-31"),  # month first only where day first is impossible
    ],
)
def test_dates(text: str, value: str) -> None:
    assert found(f"on {text} please") == [("date", value, text)]


def test_impossible_dates_and_may_the_verb_are_not_dates() -> None:
    assert found("31/02/2026 and 30 February") == []
    assert found("you may 5 times") == []


def test_times() -> None:
    assert [(t, v) for t, v, _ in found("at 3pm, 14:30 or 8:00-20:00")] == [
        ("time", "15:00"),
        ("time", "14:30"),
        ("time", "08:00"),
        ("time", "20:00"),
    ]


def test_lookup_values_and_their_synonyms() -> None:
    assert found("my Bread  Box and the teapot") == [
        ("product", "bread bin", "Bread  Box"),
        ("product", "teapot", "teapot"),
    ]


def test_overlapping_candidates_keep_the_higher_precedence() -> None:
    # The card number is not also read as a phone number, the date inside an email not as one.
    assert [t for t, *_ in found("4111 1111 1111 1111 and ana.2026-01-05@shop.com")] == [
        "card",
        "email",
    ]


def test_entities_have_their_stored_form() -> None:
    (entity,) = EntityExtractor(SHOP).extract("order #204719")
    assert entity == Entity("order_id", "BC-204719", "#204719", 6, 13)
    assert entity.to_dict() == {
        "type": "order_id",
        "value": "BC-204719",
        "text": "#204719",
        "start": 6,
        "end": 13,
    }


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("not a mapping", "entities: expected a mapping"),
        ({"order_id": {"pattern": "BC-(\\d{6}"}}, "entities.order_id.pattern: invalid regular"),
        ({"order_id": {"pattern": "x*"}}, "entities.order_id.pattern: 'x*' matches empty text"),
        ({"order_id": {"patern": "BC"}}, "entities.order_id: unknown field(s) patern"),
        ({"order_id": {"pattern": "BC", "normalize": "BC-{1}"}}, "names group {1}"),
        ({"email": "x"}, "entities.email: email is a built-in entity"),
        ({"Order-ID": "x"}, "entities.Order-ID: the name must be lower case"),
        ({"order_id": {}}, "entities.order_id: give a pattern"),
        ({"product": {"lookup": "teapot"}}, "entities.product.lookup: expected a list"),
        ({"phone_region": "XX"}, "entities.phone_region: 'XX' is not a country code"),
        ({"order_id": {"pattern": "BC", "slot": "yes"}}, "entities.order_id.slot: must be"),
    ],
)
def test_configuration_errors_name_the_file_the_entity_and_the_field(
    section: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match="routing config shop.yml: ") as caught:
        EntityConfig.parse(section, "shop.yml")
    assert message in str(caught.value)


def test_the_routing_config_rejects_a_bad_entities_section() -> None:
    document = {
        "intents": {},
        "messages": {k: "x" for k in ("rephrase", "handoff", "waiting", "error")},
        "entities": {"order_id": {"pattern": "("}},
    }
    with pytest.raises(ConfigurationError, match="shop.yml: entities.order_id.pattern"):
        RoutingConfig.parse(document, "shop.yml")
    del document["entities"]
    assert RoutingConfig.parse(document, "shop.yml").entities == EntityConfig()


def test_pattern_entities_are_slots_lookups_are_not_unless_told() -> None:
    assert SHOP.slot_types == {"order_id"}
    config = EntityConfig.parse({"size": {"lookup": ["S", "M"], "slot": True}}, "x")
    assert config.slot_types == {"size"}


def test_mask_hides_the_sensitive_types_only() -> None:
    text = "card 4111 1111 1111 1111, mail a@b.de, order BC-204719"
    entities = EntityExtractor(SHOP).extract(text)
    assert mask(text, entities) == "card [card], mail [email], order BC-204719"
    assert mask(text, entities, {"order_id"}, "{{type}}") == (
        "card 4111 1111 1111 1111, mail a@b.de, order {order_id}"
    )


def test_slot_values_keep_the_latest_value_of_a_type() -> None:
    extractor = EntityExtractor(SHOP)
    entities = extractor.extract("BC-100000, no wait, BC-200000 and a@b.de")
    assert slot_values(entities) == {"order_id": "BC-200000", "email": "a@b.de"}


def test_fill_needs_every_slot_but_drops_an_unknown_name() -> None:
    template = "Hi {name}, {order_id} is on its way."
    assert placeholders(template) == ("name", "order_id")
    assert fill(template, {"order_id": "BC-1", "name": "Ana"}) == "Hi Ana, BC-1 is on its way."
    assert fill(template, {"order_id": "BC-1"}) == "Hi, BC-1 is on its way."
    assert fill(template, {"name": "Ana"}) is None
    assert fill("No slots here.", {}) == "No slots here."
    assert fill("Good morning, {name}, Amex works.", {}) == "Good morning, Amex works."
    assert fill("Dear {name}, thanks.", {}) == "Hello, thanks."
    assert fill("Dear {name}, thanks.", {"name": "Ana"}) == "Dear Ana, thanks."
    assert fill("{x} stays {x}", {}, optional=()) is None

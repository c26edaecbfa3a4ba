"""The one request-parsing layer: every malformed input is a BadRequestError (a 400 or an
error frame), never an exception that ends in a 500 or a closed socket."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bot.core.errors import BadRequestError
from connectors.http import (
    MAX_ID,
    MAX_JSON_DEPTH,
    check_text,
    id_field,
    parse_json_object,
    path_id,
    text_field,
)


def test_a_flat_object_is_decoded() -> None:
    assert parse_json_object(b'{"text": "hi", "k": 3}') == {"text": "hi", "k": 3}


@pytest.mark.parametrize(
    "data, says",
    [
        (b"\xff\xfe", "not UTF-8"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"a": ' + "[" * 1000 + "]" * 1000 + "}", "nested more than"),
        ('{"a": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}", "nested"),
        ('{"n": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(data: str | bytes, says: str) -> None:
    with pytest.raises(BadRequestError, match=says):
        parse_json_object(data)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 500 + '\\"{' * 100
    assert parse_json_object(json.dumps({"text": text}))["text"] == text


def test_a_lone_surrogate_or_a_nul_is_refused() -> None:
    body = json.loads('{"text": "hi \\ud800 there"}')
    with pytest.raises(BadRequestError, match="lone surrogate"):
        text_field(body, "text", required=True, max_chars=100)
    with pytest.raises(BadRequestError, match="NUL"):
        check_text("a\x00b", "text")


def test_text_fields_check_type_blankness_and_length() -> None:
    assert text_field({"t": "  hi  "}, "t", required=True, max_chars=5) == "hi"
    assert text_field({"t": "  pw  "}, "t", required=True, max_chars=9, strip=False) == "  pw  "
    assert text_field({"t": 42}, "t", required=True, max_chars=5, numbers=True) == "42"
    assert text_field({}, "t", required=False, max_chars=5) is None
    for body, says in [
        ({}, "missing"),
        ({"t": "   "}, "empty"),
        ({"t": 42}, "must be a string"),
        ({"t": True}, "must be a string"),
        ({"t": "x" * 6}, "limit is 5"),
    ]:
        with pytest.raises(BadRequestError, match=says):
            text_field(body, "t", required=True, max_chars=5)


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, 2**64, True, "7", 1.5])
def test_ids_out_of_range_or_of_the_wrong_type_are_refused(value: object) -> None:
    with pytest.raises(BadRequestError, match="integer id"):
        id_field({"id": value}, "id", required=True)


def test_ids_in_range_pass() -> None:
    assert id_field({"id": MAX_ID}, "id", required=True) == MAX_ID
    assert id_field({}, "id", required=False) is None


def _request(message_id: str) -> web.Request:
    request = make_mocked_request("GET", f"/x/{message_id}")
    request.match_info.update({"message_id": message_id})  # type: ignore[attr-defined]
    return request


@pytest.mark.parametrize("raw", ["²", "١٢", "-3", "0", "1e3", "9" * 30, str(MAX_ID + 1)])
def test_path_ids_take_ascii_digits_in_range_only(raw: str) -> None:
    with pytest.raises(BadRequestError):
        path_id(_request(raw), "message_id")


def test_a_path_id_in_range_passes() -> None:
    assert path_id(_request("42"), "message_id") == 42

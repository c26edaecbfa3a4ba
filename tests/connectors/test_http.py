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
    path_text,
    query_int,
    require_json,
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


def _query(query: str) -> web.Request:
    return make_mocked_request("GET", f"/x?{query}")


@pytest.mark.parametrize(
    "query",
    [
        "days=%C2%B2",
        "days=%D9%A1",
        "days=1e3",
        "days=",
        "days=0",
        "days=367",
        "days=-1",
        "days=" + "9" * 30,
        "days=7.0",
        "days=%207",
    ],
)
def test_query_ints_take_ascii_digits_in_range_only(query: str) -> None:
    with pytest.raises(BadRequestError, match="days must be a whole number from 1 to 366"):
        query_int(_query(query), "days", 1, 366, default=7)


def test_a_query_int_in_range_passes_and_an_absent_one_is_the_default() -> None:
    assert query_int(_query("days=366"), "days", 1, 366) == 366
    assert query_int(_query("days=-3"), "days", -5, 5) == -3
    assert query_int(_query(""), "days", 1, 366, default=7) == 7
    with pytest.raises(BadRequestError, match="days is missing"):
        query_int(_query(""), "days", 1, 366)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_body_not_declared_as_json_is_415(content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with pytest.raises(web.HTTPUnsupportedMediaType) as refused:
        require_json(make_mocked_request("POST", "/x", headers=headers))
    assert refused.value.content_type == "application/json"
    assert "application/json" in json.loads(refused.value.text or "")["error"]


def test_a_json_body_passes() -> None:
    for content_type in ("application/json", "application/json; charset=utf-8"):
        require_json(make_mocked_request("POST", "/x", headers={"Content-Type": content_type}))


def _conversation(raw: str) -> web.Request:
    request = make_mocked_request("GET", "/x/c")
    request.match_info.update({"conversation_id": raw})
    return request


@pytest.mark.parametrize(
    "raw, says", [("a\x00b", "NUL"), ("a\ud800", "lone surrogate"), ("c" * 101, "at most 100")]
)
def test_path_text_refuses_what_no_id_holds(raw: str, says: str) -> None:
    with pytest.raises(BadRequestError, match=says):
        path_text(_conversation(raw), "conversation_id", max_chars=100)


def test_path_text_passes_an_id() -> None:
    assert path_text(_conversation("4be0a1c9"), "conversation_id", max_chars=100) == "4be0a1c9"

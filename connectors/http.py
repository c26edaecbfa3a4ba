"""One request-parsing layer for every connector: JSON bodies and frames, text fields, ids.

Each parser raises `BadRequestError` saying what was expected, what came and how to fix it,
so the error middleware answers 400 (or the widget an error frame), never 500. The limits
here hold for every endpoint that uses these helpers: a new endpoint gets them for free.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.core.errors import BadRequestError

# Deeper nesting than any payload of ours needs; json.loads recurses, so a body nested a
# thousand levels deep would otherwise end in RecursionError (a 500).
MAX_JSON_DEPTH = 32
# Ids are BIGINT in the store (PostgreSQL and SQLite): 2**63 - 1 at most.
MAX_ID = 2**63 - 1
# Python refuses to parse integers over 4,300 digits with ValueError; nothing of ours
# needs more than an id's 19.
MAX_INT_DIGITS = 20


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequestError(
            f"a number has {len(digits)} digits; numbers here have at most {MAX_INT_DIGITS}"
        )
    return int(digits)


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json_object(data: str | bytes, what: str = "the body") -> dict[str, Any]:
    """Decode `data` as one JSON object within the limits above.

    Raises:
        BadRequestError: not UTF-8, not JSON, not an object, nested deeper than
            MAX_JSON_DEPTH, or a number longer than MAX_INT_DIGITS.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"{what} is not UTF-8 ({exc}); send UTF-8 JSON") from exc
    # Cheap bound before decoding: nesting needs at least one bracket per level.
    if data.count("[") + data.count("{") > MAX_JSON_DEPTH and _too_deep(data):
        raise BadRequestError(
            f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; send a flat JSON object"
        )
    try:
        value = json.loads(data, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"{what} is not valid JSON ({exc}); send a JSON object") from exc
    except RecursionError as exc:
        raise BadRequestError(f"{what} is nested too deeply; send a flat JSON object") from exc
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object, not {type(value).__name__}")
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadRequestError(
            f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; send a flat JSON object"
        )
    return value


def _too_deep(data: str) -> bool:
    """Whether the brackets outside strings nest deeper than MAX_JSON_DEPTH."""
    depth, in_string, escaped = 0, False, False
    for char in data:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


async def read_json(request: web.Request, what: str = "the body") -> dict[str, Any]:
    """The request body as a JSON object (see `parse_json_object`)."""
    return parse_json_object(await request.read(), what)


def check_text(value: str, key: str) -> str:
    """`value` unchanged if it is valid Unicode that can be stored and sent on.

    Raises:
        BadRequestError: it holds a lone surrogate (e.g. `"\\ud800"` in JSON) or a NUL.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError(
            f'field "{key}" is not valid Unicode (a lone surrogate at character {exc.start}); '
            "send UTF-8 text"
        ) from exc
    if "\x00" in value:
        raise BadRequestError(f'field "{key}" contains a NUL character; remove it')
    return value


def text_field(
    body: dict[str, Any],
    key: str,
    *,
    required: bool,
    max_chars: int,
    strip: bool = True,
    numbers: bool = False,
) -> str | None:
    """A string field of a JSON object.

    Args:
        required: missing, null or blank is an error (else it gives None).
        max_chars: the longest accepted value (after stripping).
        strip: strip surrounding white space (not for passwords).
        numbers: also accept a JSON integer and return it as text (ids some clients send
            as numbers, e.g. a Telegram chat id).

    Raises:
        BadRequestError: wrong type, blank when required, too long, or invalid Unicode.
    """
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequestError(f'field "{key}" is missing; it is required')
        return None
    if isinstance(value, bool) or not (
        isinstance(value, str) or (numbers and isinstance(value, int))
    ):
        kind = "a string or an integer" if numbers else "a string"
        raise BadRequestError(f'field "{key}" must be {kind}, not {type(value).__name__}')
    text = check_text(str(value), key)
    if strip:
        text = text.strip()
    if required and not text.strip():
        raise BadRequestError(f'field "{key}" is empty; send some text')
    if len(text) > max_chars:
        raise BadRequestError(f'field "{key}" has {len(text)} characters; the limit is {max_chars}')
    return text


def id_value(value: Any, key: str, what: str = "a message") -> int:
    """A positive integer id within the store's range.

    Raises:
        BadRequestError: not an integer (booleans are not ids), below 1 or above MAX_ID.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        raise BadRequestError(f'field "{key}" must be the integer id of {what} (1 to {MAX_ID})')
    return value


def id_field(
    body: dict[str, Any], key: str, *, required: bool, what: str = "a message"
) -> int | None:
    """An integer id field of a JSON object (None when absent and not required)."""
    value = body.get(key)
    if value is None and not required:
        return None
    return id_value(value, key, what)


def path_id(request: web.Request, name: str, what: str = "a message") -> int:
    """An integer id from the URL path: ASCII digits only (`"²".isdigit()` is True), in range.

    Raises:
        BadRequestError: not a decimal number or out of range.
    """
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_INT_DIGITS or int(raw) < 1:
        raise BadRequestError(f"{name} {raw[:40]!r} is not the id of {what}; use a number")
    if int(raw) > MAX_ID:
        raise BadRequestError(f"{name} {raw[:40]!r} is out of range; ids go up to {MAX_ID}")
    return int(raw)


def query_int(
    request: web.Request, name: str, lo: int, hi: int, *, default: int | None = None
) -> int:
    """A whole-number query parameter from `lo` to `hi`: ASCII digits only (`"²".isdigit()`
    is True), at most MAX_INT_DIGITS of them.

    Args:
        default: the value when the parameter is absent (None: it is required).

    Raises:
        BadRequestError: absent and required, not a decimal number, or out of range.
    """
    raw = request.query.get(name)
    if raw is None and default is not None:
        return default
    expected = f"a whole number from {lo} to {hi}"
    if raw is None:
        raise BadRequestError(f"query parameter {name} is missing; send {expected}")
    digits = raw[1:] if raw.startswith("-") else raw
    if (
        not (digits.isascii() and digits.isdigit())
        or len(digits) > MAX_INT_DIGITS
        or not lo <= int(raw) <= hi
    ):
        raise BadRequestError(f"query parameter {name} must be {expected}; got {raw[:40]!r}")
    return int(raw)


def require_json(request: web.Request) -> None:
    """Refuse (415) a request body that is not declared `application/json`.

    A cross-site HTML form can post text/plain, a form encoding or multipart without asking
    the server first, never application/json (that needs a CORS preflight the server would
    have to grant): requiring it keeps other sites' forms away from an endpoint, a sign-in
    form (login CSRF) included.

    Raises:
        web.HTTPUnsupportedMediaType: with the usual `{"error": ...}` JSON body.
    """
    if request.content_type != "application/json":
        sent = request.headers.get("Content-Type")
        got = "no Content-Type" if sent is None else f"Content-Type {sent[:80]!r}"
        message = f"send the body as JSON with Content-Type application/json; got {got}"
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": message}), content_type="application/json"
        )


def path_text(request: web.Request, name: str, *, max_chars: int) -> str:
    """A text parameter from the URL path (a conversation id): valid Unicode with no NUL
    (PostgreSQL refuses to even compare one), at most `max_chars` characters.

    Raises:
        BadRequestError: it is longer, or holds a NUL or a lone surrogate.
    """
    raw = request.match_info[name]
    if len(raw) > max_chars:
        raise BadRequestError(
            f"{name} has {len(raw)} characters; ids here have at most {max_chars}"
        )
    return check_text(raw, name)

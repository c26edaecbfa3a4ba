"""A fake Telegram Bot API server for tests: an aiohttp app on port 0 (aiohttp's fake_server).

Real python-telegram-bot talks to it through `base_url` exactly as it talks to
api.telegram.org: `POST /bot<token>/<method>` with form-encoded, multipart or JSON
parameters, answered with Bot API envelopes. Tests queue customer updates, inject 429 / 5xx
failures and wait for what the bot sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "123456:TEST-token_for-supportbot"
BOT_USER = {
    "id": 123456,
    "is_bot": True,
    "first_name": "Supportbot",
    "username": "supportbot_test_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
# Parameters that are plain strings on the wire; everything else is JSON-encoded by PTB.
STRING_PARAMS = frozenset(
    {"text", "url", "secret_token", "callback_query_id", "parse_mode", "action", "ip_address"}
)
CONFLICT = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"  # noqa: E501
TERMINATED = "Conflict: terminated by setWebhook request"


@dataclass(frozen=True)
class ApiCall:
    """One request the bot made: the method, its decoded parameters and the HTTP status."""

    method: str
    params: dict[str, Any]
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    description: str


class FakeTelegramApi:
    """The Bot API methods supportbot uses, in memory.

    Args:
        token: the only token accepted (others get 401, like Telegram).
        reported_webhook_url: what getWebhookInfo reports instead of the URL that was set
            (to simulate Telegram not confirming a webhook).
    """

    def __init__(self, token: str = TOKEN, reported_webhook_url: str | None = None) -> None:
        self.token = token
        self.reported_webhook_url = reported_webhook_url
        self.calls: list[ApiCall] = []
        self.messages: dict[int, dict[str, Any]] = {}  # what the bot sent, by message id
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self._updates: list[dict[str, Any]] = []
        self._enqueued: set[int] = set()
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._changed = asyncio.Condition()
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._sent_ids = itertools.count(5001)
        self._callback_ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/{bot}/{method}", self._dispatch)
        app.router.add_get("/{bot}/{method}", self._dispatch)
        self._server = TestServer(app, host="127.0.0.1", port=0)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        await self._server.close()

    async def __aenter__(self) -> FakeTelegramApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """What to give PTB as `base_url` (it appends the token)."""
        return str(self._server.make_url("/bot"))

    # -- what tests do -----------------------------------------------------------------------

    def message_update(
        self,
        chat_id: int,
        text: str,
        *,
        first_name: str = "Ana",
        user_id: int | None = None,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """A customer's text message as Telegram sends it (commands carry their entity)."""
        user = {"id": user_id or chat_id, "is_bot": False, "first_name": first_name}
        message: dict[str, Any] = {
            "message_id": message_id if message_id is not None else next(self._message_ids),
            "from": user,
            "chat": {"id": chat_id, "type": "private", "first_name": first_name},
            "date": int(time.time()),
            "text": text,
        }
        command = re.match(r"/\w+", text)
        if command:
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": command.end()}]
        return {"update_id": next(self._update_ids), "message": message}

    def callback_update(
        self, chat_id: int, data: str, message: dict[str, Any] | None, *, user_id: int | None = None
    ) -> dict[str, Any]:
        """A press on an inline button under `message` (a message the bot sent)."""
        query: dict[str, Any] = {
            "id": str(next(self._callback_ids)),
            "from": {"id": user_id or chat_id, "is_bot": False, "first_name": "Ana"},
            "chat_instance": f"ci-{chat_id}",
            "data": data,
        }
        if message is not None:
            query["message"] = message
        return {"update_id": next(self._update_ids), "callback_query": query}

    async def enqueue(self, update: dict[str, Any]) -> dict[str, Any]:
        """Make `update` available to getUpdates (a redelivery gets a fresh update id)."""
        async with self._changed:
            if update["update_id"] in self._enqueued:
                update = {**update, "update_id": next(self._update_ids)}
            self._enqueued.add(update["update_id"])
            self._updates.append(update)
            self._changed.notify_all()
        return update

    def fail(
        self,
        method: str,
        times: int = 1,
        status: int = 500,
        retry_after: int | None = None,
        description: str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` with an error (429 needs retry_after)."""
        text = description or {
            429: f"Too Many Requests: retry after {retry_after}",
            500: "Internal Server Error",
            502: "Bad Gateway",
        }.get(status, "Error")
        for _ in range(times):
            self._failures[method].append(_Failure(status, retry_after, text))

    async def set_webhook_elsewhere(self, url: str) -> None:
        """Another process sets a webhook for the bot (pending long polls are terminated)."""
        async with self._changed:
            self.webhook_url = url
            self._changed.notify_all()

    def calls_of(self, method: str, ok_only: bool = True) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method and (c.ok or not ok_only)]

    def sent_to(self, chat_id: int) -> list[ApiCall]:
        """Successful sendMessage calls to `chat_id`, oldest first."""
        return [c for c in self.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]

    async def wait_for(
        self,
        method: str,
        where: Callable[[ApiCall], bool] = lambda call: True,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[ApiCall]:
        """Wait until `count` successful calls of `method` satisfy `where`; return them."""

        def found() -> list[ApiCall]:
            return [c for c in self.calls_of(method) if where(c)]

        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(found()) >= count), timeout
                )
            except TimeoutError:
                seen = [(c.method, c.params) for c in self.calls[-10:]]
                raise AssertionError(
                    f"no {count} x {method} within {timeout} s; last calls: {seen}"
                ) from None
        return found()

    async def wait_for_message(
        self, chat_id: int, count: int = 1, timeout: float = 10.0
    ) -> list[ApiCall]:
        """Wait until the bot sent `count` messages to `chat_id`; return them all."""
        return await self.wait_for(
            "sendMessage", lambda c: c.params.get("chat_id") == chat_id, count, timeout
        )

    # -- the API -----------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["bot"] != f"bot{self.token}":
            return _error(401, "Unauthorized")
        params = await _params(request)
        handler = getattr(self, f"_api_{method}", None)
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            response = _error(failure.status, failure.description, failure.retry_after)
        elif handler is None:
            response = _error(404, "Not Found")
        else:
            response = await handler(params)
        async with self._changed:
            self.calls.append(ApiCall(method, params, response.status))
            self._changed.notify_all()
        return response

    async def _api_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok(BOT_USER)

    async def _api_getUpdates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        async with self._changed:
            if offset:
                # Like Telegram: an offset confirms every earlier update.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if self.webhook_url:
                return _error(409, CONFLICT)

            def ready() -> bool:
                return bool(self.webhook_url) or any(
                    u["update_id"] >= offset for u in self._updates
                )

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            if self.webhook_url:
                return _error(409, TERMINATED)
            pending = [u for u in self._updates if u["update_id"] >= offset]
        return _ok(pending[:limit])

    async def _api_setWebhook(self, params: dict[str, Any]) -> web.Response:
        async with self._changed:
            self.webhook_url = str(params.get("url") or "")
            self.webhook_secret = params.get("secret_token")
            self._changed.notify_all()
        return _ok(True, "Webhook was set")

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = ""
        self.webhook_secret = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return _ok(True, "Webhook was deleted")

    async def _api_getWebhookInfo(self, params: dict[str, Any]) -> web.Response:
        url = self.webhook_url
        if url and self.reported_webhook_url is not None:
            url = self.reported_webhook_url
        return _ok(
            {
                "url": url,
                "has_custom_certificate": False,
                "pending_update_count": 0 if url else len(self._updates),
            }
        )

    async def _api_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id = params.get("chat_id")
        text = params.get("text")
        if not isinstance(chat_id, int) or not text:
            return _error(400, "Bad Request: chat_id and text are required")
        shown = _visible_text(str(text), params.get("parse_mode"))
        if len(shown.encode("utf-16-le")) // 2 > 4096:
            return _error(400, "Bad Request: message is too long")
        message: dict[str, Any] = {
            "message_id": next(self._sent_ids),
            "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private"},
            "date": int(time.time()),
            "text": shown,
        }
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        self.messages[message["message_id"]] = message
        return _ok(message)

    async def _api_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> web.Response:
        if not params.get("callback_query_id"):
            return _error(400, "Bad Request: callback_query_id is required")
        return _ok(True)

    async def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> web.Response:
        message = self.messages.get(int(params.get("message_id") or 0))
        if message is None or message["chat"]["id"] != params.get("chat_id"):
            return _error(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        if markup == message.get("reply_markup"):
            return _error(400, "Bad Request: message is not modified")
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        return _ok(message)


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's parameters, decoded the way Telegram reads them."""
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        return dict(body)
    if request.method == "GET":
        raw: dict[str, Any] = dict(request.query)
    else:
        raw = {key: value for key, value in (await request.post()).items()}
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or key in STRING_PARAMS:  # files and plain strings
            params[key] = value
        else:
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
    return params


def _visible_text(text: str, parse_mode: object) -> str:
    """The text a user sees: HTML tags removed and entities decoded, as Telegram does."""
    if parse_mode == "HTML":
        return html.unescape(re.sub(r"<[^>]+>", "", text))
    return text


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)

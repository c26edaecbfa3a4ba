"""The embeddable web chat widget: demo page, script, stylesheet and the widget's WebSocket.

A host page embeds the widget with one tag::

    <script src="https://bot.example/widget.js" data-title="Brightcart support" defer></script>

Routes: `GET /` (a demo shop page embedding the widget), `GET /widget.js`, `GET /widget.css`,
`GET /ws` (the WebSocket) and the site's icon, `GET /favicon.svg` and `GET /favicon.ico` (the
same SVG: browsers ask for /favicon.ico on every page without an icon link, the console's too).

WebSocket protocol. Every frame is one JSON object in a text frame with a `type`.

The browser connects to `/ws` (no query: what is in a URL ends up in proxy access logs). The
handshake is refused with 403 unless the page's `Origin` is the bot's own host, is listed in
`widget.allowed_origins`, or that list contains `"*"`; a malformed Origin is refused too.

The first frame must be `{"type": "hello", "session": "<id>"}`, where `<id>` is a random id
(8-100 characters of `A-Z a-z 0-9 _ -`) the browser keeps in localStorage; (channel "widget",
session) is the conversation, so the id is the customer's proof of it and is never sent
anywhere else. Until the hello the server sends nothing; a socket whose first frame is
anything else, or that says nothing for `HELLO_TIMEOUT_S`, gets an error frame and is closed
(1008).

Server -> browser:

- `{"type": "history", "status", "messages": [{"message_id", "role", "text", "route",
  "rateable", "quick_replies", "client_id"}, ...]}`: the answer to the hello (and sent to a
  session's other tabs after each message): the conversation so far, oldest first. It replaces
  what the browser shows, so a reload or reconnect restores the transcript without duplicates.
- `{"type": "ack", "client_id", "message_id", "duplicate"}`: the customer message is stored.
- `{"type": "reply", "message_id", "role", "text", "route", "rateable", "quick_replies"}`: a
  bot, agent or system message. Agent replies are pushed to every open tab of the session.
- `{"type": "status", "status", "agent"}`: `bot`, `waiting` (handed off, waiting for an
  agent: nobody has claimed it yet) or `claimed` (an agent has the conversation; `agent` is
  their name, null otherwise); sent after each handled message, claim and agent reply. The
  history frame carries `agent` too.
- `{"type": "feedback_ok", "message_id"}`: a rating was stored.
- `{"type": "error", "error", "client_id"?, "retry"?}`: a frame was refused (bad JSON, unknown
  type, text too long, invalid Unicode, nested too deeply, larger than the frame limit,
  binary, ...) or could not be handled now. `client_id` names the refused message when the
  frame had a usable one; `retry: true` means "not stored, send it again later", `retry:
  false` means "this message will never be accepted: do not resend it". The connection stays
  open. Only protocol violations close it: a text frame that is not UTF-8 (1007, as RFC 6455
  requires) and a frame past four times the frame limit, which is not even read (1009).

Browser -> server:

- `{"type": "hello", "session"}`: first, once per connection (see above).
- `{"type": "message", "text", "client_id"}`: a customer message. `client_id` is the browser's
  own id for it (1-100 characters, not blank); a message sent again with the same id (after a
  reconnect, when the ack was lost) is stored once and answered once: the server acks it
  again with the same `message_id` and repeats the stored replies.
- `{"type": "feedback", "message_id", "rating": "up" | "down"}`: rate a rateable bot reply of
  this conversation.
- `{"type": "typing"}`: accepted and ignored.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from bot.core.delivery import Dispatcher
from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    StoreUnavailableError,
    SupportbotError,
)
from bot.core.records import (
    Conversation,
    ConversationStatus,
    Feedback,
    Message,
    Reply,
    Role,
    StoredMessage,
)
from bot.core.service import ConversationService, reply_of
from bot.settings import WidgetSettings
from connectors.http import check_text, id_value, parse_json_object, text_field
from connectors.static_files import inline_modules, read_static

log = logging.getLogger(__name__)

CHANNEL = "widget"
SESSION_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,100}")
MAX_ID_CHARS = 100
HISTORY_LIMIT = 200
HEARTBEAT_S = 30.0
# How long a new socket may stay silent before its hello frame.
HELLO_TIMEOUT_S = 10.0
# Frames up to `max_frame_bytes` are read and answered (an error frame when too big); aiohttp
# stops reading a frame past this many times that and closes the socket with 1009, so one
# socket never buffers more than that.
HARD_FRAME_FACTOR = 4
CONFIG_MARKER = re.compile(r"/\*config\*/.*?/\*config\*/", re.DOTALL)
FRAME_TYPES = ("message", "feedback", "typing")
BINARY_REFUSED = "binary frames are not supported; send JSON in text frames"
# Longer than any origin (scheme, a 253-character host name, a port): refused unread.
MAX_ORIGIN_CHARS = 300


def max_frame_bytes(max_chars: int) -> int:
    """The largest frame accepted: a maximal message with every character escaped (`\\uXXXX`,
    6 bytes each), plus room for the rest of the frame."""
    return 64 * 1024 + 6 * max_chars


# -- parser: browser frame -> session / Message / Feedback -------------------------------------


def _frame_object(data: str, max_chars: int) -> dict[str, Any]:
    size = len(data.encode("utf-8", "surrogatepass"))
    limit = max_frame_bytes(max_chars)
    if size > limit:
        raise BadRequestError(
            f"the frame has {size} bytes; frames have at most {limit} bytes (send shorter text)"
        )
    return parse_json_object(data, "the frame")


def parse_hello(data: str, max_chars: int) -> str:
    """A socket's first frame -> the session id it speaks for.

    Raises:
        BadRequestError: not a hello frame, or the session is not a usable id.
    """
    frame = _frame_object(data, max_chars)
    if frame.get("type") != "hello":
        raise BadRequestError(
            'the first frame must be {"type": "hello", "session": "<id>"}; '
            f"got type {str(frame.get('type'))[:40]!r}"
        )
    session = frame.get("session")
    if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
        shown = repr(session[:40]) if isinstance(session, str) else type(session).__name__
        raise BadRequestError(
            f'field "session" must be 8-100 characters of A-Z, a-z, 0-9, _ and -; got {shown}'
        )
    return session


# The demo page runs only our own script; its product tiles use inline style attributes (a
# shop's page would), so styles may be inline, scripts never.
DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def parse_frame(data: str, session: str, max_chars: int) -> Message | Feedback | None:
    """One browser frame after the hello -> a `Message`, a `Feedback`, or None for frames that
    need nothing.

    Raises:
        BadRequestError: the frame is not what the protocol expects; says what to send.
    """
    frame = _frame_object(data, max_chars)
    kind = frame.get("type")
    if kind == "message":
        text = text_field(frame, "text", required=True, max_chars=max_chars)
        assert text is not None
        client_id = frame.get("client_id")
        if (
            not isinstance(client_id, str)
            or not 0 < len(client_id.strip()) <= MAX_ID_CHARS
            or check_text(client_id, "client_id") != client_id
        ):
            raise BadRequestError(
                f'field "client_id" must be a string of 1-{MAX_ID_CHARS} characters, unique per '
                "message, so that a resent message is not answered twice"
            )
        return Message(channel=CHANNEL, sender=session, text=text, client_id=client_id)
    if kind == "feedback":
        message_id = id_value(frame.get("message_id"), "message_id", "a bot reply")
        rating = frame.get("rating")
        if rating not in ("up", "down"):
            raise BadRequestError('field "rating" must be "up" or "down"')
        return Feedback(message_id=message_id, rating=rating, author=f"{CHANNEL}:{session}")
    if kind == "typing":
        return None
    if kind == "hello":
        raise BadRequestError(
            "this socket already said hello; a socket speaks for one session: open a new one"
        )
    shown = str(kind)[:40]
    raise BadRequestError(f"unknown frame type {shown!r}; expected one of {', '.join(FRAME_TYPES)}")


def _client_id_of(data: str, max_chars: int) -> str | None:
    """The client_id of a refused frame, if it has a usable one (for the error frame)."""
    try:
        client_id = _frame_object(data, max_chars).get("client_id")
        if not isinstance(client_id, str) or not 0 < len(client_id.strip()) <= MAX_ID_CHARS:
            return None
        return check_text(client_id, "client_id")
    except BadRequestError:
        return None


# -- renderers: our types -> server frames -------------------------------------------------------


def render_reply(reply: Reply) -> dict[str, Any]:
    return {
        "type": "reply",
        "message_id": reply.message_id,
        "role": str(reply.role),
        "text": reply.text,
        "route": str(reply.route) if reply.route else None,
        "rateable": reply.rateable,
        "quick_replies": list(reply.quick_replies),
    }


def render_history(
    messages: list[StoredMessage], status: ConversationStatus, agent: str | None = None
) -> dict[str, Any]:
    rendered = []
    for message in messages:
        if message.role == Role.CUSTOMER:
            item: dict[str, Any] = {
                "message_id": message.id,
                "role": str(message.role),
                "text": message.text,
                "route": None,
                "rateable": False,
                "quick_replies": [],
            }
        else:
            item = render_reply(reply_of(message))
            del item["type"]
        item["client_id"] = message.client_id
        rendered.append(item)
    return {**render_status(status, agent), "type": "history", "messages": rendered}


def render_status(status: ConversationStatus, agent: str | None = None) -> dict[str, Any]:
    """Who is in charge: the banner shows "waiting for an agent" or "<agent> joined"."""
    claimed = status == ConversationStatus.CLAIMED
    return {"type": "status", "status": str(status), "agent": agent if claimed else None}


def render_error(error: str, client_id: str | None = None, retry: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "error": error}
    if client_id is not None:
        frame["client_id"] = client_id
        frame["retry"] = retry
    return frame


def _origin_key(origin: str) -> str | None:
    """`scheme://host[:port]`, lower-cased, default port dropped: how origins are compared.

    None for anything that is not such an origin: `null` (sandboxed frames, `file:` pages),
    a path or user info, a bad port or host name, an over-long value.
    """
    origin = origin.strip()
    if not origin or len(origin) > MAX_ORIGIN_CHARS:
        return None
    try:
        url = URL(origin)
        if (
            url.scheme not in ("http", "https")
            or not url.raw_host
            or url.raw_user is not None
            or url.raw_password is not None
            or url.raw_path not in ("", "/")
            or url.raw_query_string
            or url.raw_fragment
        ):
            return None
        return str(url.origin()).lower()
    except ValueError:  # yarl: a bad port, IPv6 literal or host name (UnicodeError is one)
        return None


class WidgetConnector:
    """Serves the widget and its demo page, and talks to browsers over a WebSocket.

    It is also the `Deliverer` of channel "widget": agent replies are pushed to every open
    socket of the customer's session.

    Args:
        service: the core.
        settings: the widget section of the settings.
        dispatcher: where the connector registers itself as the widget channel's deliverer.
        max_message_chars: longest accepted customer message.
        hello_timeout_s: how long a new socket may stay silent before its hello frame.

    Raises:
        ConfigurationError: an entry of `widget.allowed_origins` is not an origin.
    """

    def __init__(
        self,
        service: ConversationService,
        settings: WidgetSettings,
        dispatcher: Dispatcher,
        max_message_chars: int,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.settings = settings
        self.max_message_chars = max_message_chars
        self.max_frame_bytes = max_frame_bytes(max_message_chars)
        self.hello_timeout_s = hello_timeout_s
        self._allowed: set[str] = set()
        for origin in settings.allowed_origins:
            if origin == "*":
                continue
            key = _origin_key(origin)
            if key is None:
                raise ConfigurationError(
                    f"widget.allowed_origins: {origin[:80]!r} is not an origin; list pages as "
                    'scheme://host[:port], e.g. "https://shop.example.com", or "*" for any'
                )
            self._allowed.add(key)
        self._any_origin = "*" in settings.allowed_origins
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}
        config = {
            "title": settings.title,
            "maxQueued": settings.max_queued_messages,
            "maxChars": max_message_chars,
        }
        # One classic script for embedders: the shared lib/ modules pasted in, then the config.
        self._script = CONFIG_MARKER.sub(
            lambda _: f"/*config*/{json.dumps(config)}/*config*/",
            inline_modules(read_static("widget.js")),
            count=1,
        )
        self._stylesheet = read_static("widget.css")
        self._demo = read_static("demo.html")
        self._favicon = read_static("favicon.svg")
        dispatcher.register(CHANNEL, self, local_only=True)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.demo_page)
        app.router.add_get("/widget.js", self.script)
        app.router.add_get("/widget.css", self.stylesheet)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/favicon.svg", self.favicon)
        app.router.add_get("/favicon.ico", self.favicon)
        app.on_shutdown.append(self._close_all)
        app[WIDGET] = self

    # -- static ----------------------------------------------------------------------------

    async def demo_page(self, request: web.Request) -> web.Response:
        src = str(request.url.origin().with_path("/widget.js"))
        title = html.escape(self.settings.title)
        snippet = f'<script src="{src}" data-title="{title}" defer></script>'
        body = self._demo.replace("{{title}}", title).replace("{{snippet}}", html.escape(snippet))
        return web.Response(
            text=body, content_type="text/html", charset="utf-8", headers=DEMO_PAGE_HEADERS
        )

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._script,
            content_type="text/javascript",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._favicon,
            content_type="image/svg+xml",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._stylesheet,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    # -- WebSocket -------------------------------------------------------------------------

    def check_origin(self, request: web.Request) -> None:
        """Refuse (403) a handshake from a page that may not embed this bot.

        Requests without an Origin header are not from a browser page and pass: the check
        protects customers' sessions from other sites, not the bot from scripts.
        """
        origin = request.headers.get("Origin")
        if origin is None or self._any_origin:
            return
        key = _origin_key(origin)
        if key is not None:
            # The bot's own origin, on the scheme the page used (a proxy may end TLS).
            own = _origin_key(f"{URL(key).scheme}://{request.host}")
            if key == own or key in self._allowed:
                return
        # repr: the header may hold anything (undecodable bytes come as lone surrogates).
        raise web.HTTPForbidden(
            text=f"origin {origin[:100]!r} may not open the chat widget; add it to "
            "SUPPORTBOT_WIDGET__ALLOWED_ORIGINS (widget.allowed_origins) to allow it"
        )

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        self.check_origin(request)
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT_S, max_msg_size=HARD_FRAME_FACTOR * self.max_frame_bytes
        )
        await ws.prepare(request)
        session = await self._hello(ws)
        if session is None:
            return ws
        # Registered before the history is read: a reply pushed meanwhile is either in the
        # history or arrives after it (the browser drops the second copy by message_id).
        self._sockets.setdefault(session, set()).add(ws)
        try:
            try:
                await ws.send_json(await self._history(session))
            except SupportbotError as exc:
                log.error("widget session %s: cannot load the conversation: %s", session, exc)
                await ws.send_json(render_error(f"cannot load the conversation now: {exc}"))
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
                return ws
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    await self._receive(ws, session, frame.data)
                elif frame.type == WSMsgType.BINARY:
                    await ws.send_json(render_error(BINARY_REFUSED))
                # ERROR: aiohttp has already closed the socket (1007 for a text frame that is
                # not UTF-8, 1009 for one past the hard limit); the loop ends with it.
        except ConnectionResetError:
            # The browser went away mid-answer; what it missed is in the transcript it gets on
            # its next connect.
            log.info("widget session %s: connection lost", session)
        finally:
            self._forget(session, ws)
        return ws

    async def _hello(self, ws: web.WebSocketResponse) -> str | None:
        """Wait for the socket's hello frame; its session, or None once the socket is closed.

        A socket that says nothing in time, or anything else first, is told why and closed.
        """
        try:
            frame = await ws.receive(timeout=self.hello_timeout_s)
        except TimeoutError:
            await self._refuse(
                ws,
                f"no hello frame within {self.hello_timeout_s:g} s; send "
                '{"type": "hello", "session": "<id>"} first',
            )
            return None
        if frame.type == WSMsgType.TEXT:
            try:
                return parse_hello(frame.data, self.max_message_chars)
            except BadRequestError as exc:
                await self._refuse(ws, str(exc))
                return None
        if frame.type == WSMsgType.BINARY:
            await self._refuse(ws, BINARY_REFUSED)
        return None  # closed, or aiohttp closed it (ERROR)

    async def _refuse(self, ws: web.WebSocketResponse, error: str) -> None:
        with contextlib.suppress(ConnectionResetError):  # gone already: nothing to tell
            await ws.send_json(render_error(error))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"hello expected")

    async def _receive(self, ws: web.WebSocketResponse, session: str, data: str) -> None:
        try:
            item = parse_frame(data, session, self.max_message_chars)
        except BadRequestError as exc:
            await ws.send_json(render_error(str(exc), _client_id_of(data, self.max_message_chars)))
            return
        if isinstance(item, Message):
            await self._handle_message(ws, session, item)
        elif isinstance(item, Feedback):
            await self._record_feedback(ws, session, item)

    async def _handle_message(
        self, ws: web.WebSocketResponse, session: str, message: Message
    ) -> None:
        try:
            result = await self.service.handle(message)
        except StoreUnavailableError as exc:
            # Not stored: the browser keeps the message and sends it again later.
            await ws.send_json(render_error(str(exc), message.client_id, retry=True))
            return
        except SupportbotError as exc:
            await ws.send_json(render_error(str(exc), message.client_id))
            return
        await ws.send_json(
            {
                "type": "ack",
                "client_id": message.client_id,
                "message_id": result.message_id,
                "duplicate": result.duplicate,
            }
        )
        for reply in result.replies:
            await ws.send_json(render_reply(reply))
        await ws.send_json(render_status(result.status, result.assignee))
        await self._refresh_other_tabs(session, ws)

    async def _record_feedback(
        self, ws: web.WebSocketResponse, session: str, feedback: Feedback
    ) -> None:
        try:
            await self.service.record_customer_feedback(CHANNEL, session, feedback)
        except SupportbotError as exc:
            await ws.send_json(render_error(str(exc)))
            return
        await ws.send_json({"type": "feedback_ok", "message_id": feedback.message_id})

    async def _history(self, session: str) -> dict[str, Any]:
        conversation, messages = await self.service.history(CHANNEL, session, HISTORY_LIMIT)
        if conversation is None:  # a visitor who has not written yet
            return render_history([], ConversationStatus.BOT)
        return render_history(messages, conversation.status, conversation.assignee)

    async def _refresh_other_tabs(self, session: str, sender: web.WebSocketResponse) -> None:
        others = [ws for ws in self._sockets.get(session, ()) if ws is not sender]
        if not others:
            return
        history = await self._history(session)
        for ws in others:
            try:
                await ws.send_json(history)
            except ConnectionResetError:
                self._forget(session, ws)

    # -- Deliverer -------------------------------------------------------------------------

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Push `reply` to every open tab of the conversation's session.

        With no tab open this does nothing: the reply is stored, and the transcript the
        browser receives on its next connect includes it. A tab whose connection breaks while
        sending is in the same position, so it is not an error either.
        """
        for ws in list(self._sockets.get(conversation.sender, ())):
            try:
                await ws.send_json(render_reply(reply))
                await ws.send_json(render_status(conversation.status, conversation.assignee))
            except ConnectionResetError:
                self._forget(conversation.sender, ws)

    def open_sockets(self, session: str) -> list[web.WebSocketResponse]:
        """The open connections of one session (one per browser tab)."""
        return list(self._sockets.get(session, ()))

    def _forget(self, session: str, ws: web.WebSocketResponse) -> None:
        sockets = self._sockets.get(session)
        if sockets is None:
            return
        sockets.discard(ws)
        if not sockets:
            del self._sockets[session]

    async def _close_all(self, app: web.Application) -> None:
        for sockets in list(self._sockets.values()):
            for ws in list(sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


WIDGET = web.AppKey("widget", WidgetConnector)

"""The agent console over HTTP: its pages, its JSON API and its live-events WebSocket.

The contract with the pages is `docs/console.md`. Everything under `/console` needs a signed-in
session (a cookie holding a random token) except the sign-in page, the static assets and
`POST /console/api/session`. Every state-changing API request must also carry the session's
CSRF token in `X-CSRF-Token`. Only translation and the session checks live here: the use cases
are `bot.core.desk.AgentDesk`, accounts are `bot.store.accounts.SqlAccountStore`, and domain
errors become status codes in `bot.app.factory.error_middleware`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from bot.core.background import cancel_and_wait
from bot.core.bus import EventBus, Subscription
from bot.core.desk import (
    MAX_ANSWER_CHARS,
    MAX_CANNED_CHARS,
    MAX_DASHBOARD_DAYS,
    MAX_NOTE_CHARS,
    MAX_PER_PAGE,
    MAX_SOURCE_CHARS,
    MAX_TITLE_CHARS,
    TOPIC,
    AgentDesk,
    ApprovalDraft,
    CannedResponse,
    ConversationView,
    CustomerHistory,
    Dashboard,
    EscalationNotice,
    FilledResponse,
    LibraryEntry,
    LibraryPage,
    LibraryQuery,
    MessageLabels,
    Note,
    QueueItem,
    SearchHit,
    SearchPage,
    SearchQuery,
)
from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    ForbiddenError,
    UnauthorizedError,
)
from bot.core.library import ExcludedEntry, ExcludedPage
from bot.core.ports import SessionStore
from bot.core.records import AgentSession, EscalationRecord, Role, StoredMessage
from bot.settings import ConsoleSettings
from connectors.http import (
    check_text,
    id_field,
    path_id,
    path_text,
    query_int,
    read_json,
    require_json,
    text_field,
)
from connectors.static_files import JAVASCRIPT, asset_response, read_static

log = logging.getLogger(__name__)

COOKIE = "supportbot_console"
CSRF_HEADER = "X-CSRF-Token"
PAGE = "console.html"
SIGN_IN_PAGE = "console-sign-in.html"
# Everything /console/static/{name} serves; any other name, `../x` included, is a 404.
ASSETS = {
    "console.css": "text/css",
    "console-sign-in.js": JAVASCRIPT,
    "console.js": JAVASCRIPT,  # the console's entry module; it imports the modules below
    "console/alerts.js": JAVASCRIPT,
    "console/approval.js": JAVASCRIPT,
    "console/api.js": JAVASCRIPT,
    "console/canned.js": JAVASCRIPT,
    "console/charts.js": JAVASCRIPT,
    "console/conversation.js": JAVASCRIPT,
    "console/dashboard.js": JAVASCRIPT,
    "console/events.js": JAVASCRIPT,
    "console/library.js": JAVASCRIPT,
    "console/format.js": JAVASCRIPT,
    "console/queue.js": JAVASCRIPT,
    "console/search.js": JAVASCRIPT,
    "console/shortcuts.js": JAVASCRIPT,
    "console/tabs.js": JAVASCRIPT,
    "lib/backoff.js": JAVASCRIPT,
    "lib/dom.js": JAVASCRIPT,
    "lib/storage.js": JAVASCRIPT,
}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
HEARTBEAT_S = 30.0
MAX_NAME_CHARS = 200
MAX_PASSWORD_CHARS = 1024
# Conversation ids are 32 hex digits; anything much longer is no id.
MAX_CONVERSATION_ID_CHARS = 100
# The last page of search results one may ask for (far beyond any real result list).
MAX_PAGE = 100_000
# The pages load only their own scripts, styles and images and talk only to their own
# origin ('self' covers the events WebSocket on the same host and port, as CSP Level 3 says);
# nothing inline runs, nothing may frame them, and forms post only here.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Where the sign-in page sends the browser when `next` is missing or not a path on this site.
HOME = "/console"

ApiHandler = Callable[[web.Request, AgentSession], Awaitable[web.StreamResponse]]


def _static(name: str) -> str:
    try:
        return read_static(name)
    except FileNotFoundError as exc:
        raise web.HTTPNotFound(text=f"{name} is missing from connectors/static") from exc


# -- parsers: JSON bodies -> arguments -----------------------------------------------------------


# -- renderers: records -> JSON ------------------------------------------------------------------


def render_escalation(escalation: EscalationRecord | None) -> dict[str, Any] | None:
    if escalation is None:
        return None
    return {
        "id": escalation.id,
        "conversation_id": escalation.conversation_id,
        "reason": escalation.reason,
        "explanation": escalation.explanation,
        "scores": escalation.scores,
        "priority": escalation.priority,
        "status": escalation.status,
        "assignee": escalation.assignee,
        "created_at": escalation.created_at.isoformat(),
        "claimed_at": _iso(escalation.claimed_at),
        "resolved_at": _iso(escalation.resolved_at),
        "timed_out_at": _iso(escalation.timed_out_at),
        "outcome": escalation.outcome,
    }


def render_item(item: QueueItem) -> dict[str, Any]:
    conversation, escalation = item.conversation, item.escalation
    return {
        "conversation_id": conversation.id,
        "escalation_id": escalation.id,
        "channel": conversation.channel,
        "customer": conversation.sender_name or conversation.sender,
        "reason": escalation.reason,
        "explanation": escalation.explanation,
        "priority": escalation.priority,
        "urgency": round(item.urgency, 4),
        "status": escalation.status,
        "assignee": escalation.assignee,
        "created_at": escalation.created_at.isoformat(),
        "waiting_s": round(item.waiting_s, 1),
        "last_message": item.last_message,
        "unread": item.unread,
        "timed_out": escalation.timed_out_at is not None,
    }


def render_message(
    message: StoredMessage, labels: MessageLabels | None = None, approved: bool = False
) -> dict[str, Any]:
    labels = labels or MessageLabels()
    details = message.details
    return {
        "id": message.id,
        "role": str(message.role),
        "text": message.text,
        "created_at": message.created_at.isoformat(),
        "intent": message.intent,
        "confidence": message.intent_confidence,
        "sentiment": message.sentiment,
        "negativity": message.negativity,
        "route": message.route,
        "agent": details.get("agent") if message.role == Role.AGENT else None,
        "source": details.get("source") if message.role == Role.BOT else None,
        "score": details.get("score") if message.role == Role.BOT else None,
        "labels": {
            "intent": labels.intent,
            "sentiment": labels.sentiment,
            "rating": {"up": "good", "down": "bad"}.get(labels.rating or ""),
            "by": labels.by,
        },
        "approved": approved,
        **render_annotations(message),
    }


# An entity's fields and the JSON types they may hold (`value` may be normalised to a number).
ENTITY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "value": (str, int, float),
    "text": str,
    "start": int,
    "end": int,
}


def render_annotations(message: StoredMessage) -> dict[str, Any]:
    """What the runtime noted about a customer message beyond intent and sentiment:
    `entities` (each `{type, value, text, start, end}`; malformed ones left out, so an older
    or foreign row never breaks the page) and the out-of-scope verdict with its score (None
    when the detector did not run)."""
    if message.role != Role.CUSTOMER:
        return {"entities": [], "out_of_scope": None, "oos_score": None}
    details = message.details
    entities = []
    for raw in details.get("entities") or ():
        if not isinstance(raw, dict):
            continue
        entity = {key: raw.get(key) for key in ENTITY_FIELDS}
        if isinstance(entity["type"], str) and isinstance(entity["text"], str):
            for key, kind in ENTITY_FIELDS.items():
                if not isinstance(entity[key], kind) or isinstance(entity[key], bool):
                    entity[key] = None
            entity["value"] = entity["value"] if entity["value"] is not None else entity["text"]
            entities.append(entity)
    out_of_scope = details.get("out_of_scope")
    score = details.get("oos_score")
    return {
        "entities": entities,
        "out_of_scope": out_of_scope if isinstance(out_of_scope, bool) else None,
        "oos_score": float(score) if isinstance(score, int | float) else None,
    }


def render_view(view: ConversationView) -> dict[str, Any]:
    conversation = view.conversation
    last_customer = next(
        (m for m in reversed(view.messages) if m.role == Role.CUSTOMER and m.details), None
    )
    guesses = last_customer.details.get("top_intents", []) if last_customer else []
    return {
        "conversation": {
            "id": conversation.id,
            "channel": conversation.channel,
            "customer": conversation.sender_name or conversation.sender,
            "status": str(conversation.status),
            "assignee": conversation.assignee,
            "created_at": conversation.created_at.isoformat(),
        },
        "escalation": render_escalation(view.escalation),
        "messages": [
            render_message(m, view.labels.get(m.id), m.id in view.approved) for m in view.messages
        ],
        "guesses": [[str(label), float(score)] for label, score in guesses],
        "labels": {"sentiment": view.sentiment},
        "notes": [render_note(note) for note in view.notes],
    }


def render_note(note: Note) -> dict[str, Any]:
    return {
        "id": note.id,
        "author": note.author,
        "text": note.text,
        "created_at": note.created_at.isoformat(),
    }


def render_canned(response: CannedResponse, filled: FilledResponse | None = None) -> dict[str, Any]:
    return {
        "id": response.id,
        "shortcut": response.shortcut,
        "title": response.title,
        "text": response.text,
        "filled": response.text if filled is None else filled.text,
        "missing": [] if filled is None else list(filled.missing),
        "author": response.author,
        "created_at": response.created_at.isoformat(),
        "updated_at": response.updated_at.isoformat(),
    }


def render_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    days = [
        {
            "date": day.date.isoformat(),
            "messages": day.messages,
            "customer_messages": day.customer_messages,
            "automated": day.automated,
            "automation_rate": round(day.automation_rate, 4),
            "escalations": dict(sorted(day.escalations.items())),
            "feedback": {"up": day.feedback.get("up", 0), "down": day.feedback.get("down", 0)},
        }
        for day in dashboard.days
    ]
    customer_messages = sum(d.customer_messages for d in dashboard.days)
    automated = sum(d.automated for d in dashboard.days)
    escalations: dict[str, int] = {}
    for day in dashboard.days:
        for reason, count in day.escalations.items():
            escalations[reason] = escalations.get(reason, 0) + count
    totals = {
        "messages": sum(d.messages for d in dashboard.days),
        "customer_messages": customer_messages,
        "automated": automated,
        "automation_rate": round(automated / customer_messages, 4) if customer_messages else 0.0,
        "escalations": dict(sorted(escalations.items())),
        "feedback": {
            "up": sum(d.feedback.get("up", 0) for d in dashboard.days),
            "down": sum(d.feedback.get("down", 0) for d in dashboard.days),
        },
        "open_escalations": dashboard.open_escalations,
        "outcomes": {
            "resolved": dashboard.outcomes.get("resolved", 0),
            "handed_back": dashboard.outcomes.get("handed_back", 0),
        },
    }
    intents = [
        {"intent": f.intent, "messages": f.messages, "mean_confidence": f.mean_confidence}
        for f in dashboard.intents
    ]
    rated = dashboard.csat
    csat = {
        "mean": None if rated.mean is None else round(rated.mean, 2),
        "count": rated.count,
        "distribution": {str(score): n for score, n in enumerate(rated.counts, start=1)},
    }
    return {"days": days, "intents": intents, "totals": totals, "csat": csat}


def render_hit(hit: SearchHit) -> dict[str, Any]:
    conversation, escalation, snippet = hit.conversation, hit.escalation, hit.snippet
    return {
        "conversation_id": conversation.id,
        "channel": conversation.channel,
        "customer": conversation.sender_name or conversation.sender,
        "status": str(conversation.status),
        "assignee": conversation.assignee,
        "created_at": conversation.created_at.isoformat(),
        "last_activity": conversation.updated_at.isoformat(),
        "messages": hit.messages,
        "snippet": None
        if snippet is None
        else {
            "message_id": snippet.id,
            "role": str(snippet.role),
            "text": snippet.text,
            "created_at": snippet.created_at.isoformat(),
        },
        "escalation": None
        if escalation is None
        else {
            "reason": escalation.reason,
            "status": escalation.status,
            "outcome": escalation.outcome,
            "created_at": escalation.created_at.isoformat(),
        },
    }


def render_search(page: SearchPage) -> dict[str, Any]:
    return {
        "results": [render_hit(hit) for hit in page.hits],
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
    }


def render_history(history: CustomerHistory) -> dict[str, Any]:
    return {
        "episodes": [render_escalation(e) for e in history.episodes],
        "others": [render_hit(hit) for hit in history.others],
    }


def parse_search(request: web.Request) -> SearchQuery:
    """The search's query parameters (`q`, `customer`, `channel`, `status`, `from` and `to` as
    UTC dates YYYY-MM-DD, `to` included, `page`, `per_page`) as a `SearchQuery`.

    Raises:
        BadRequestError: a date that is not YYYY-MM-DD, a number out of range, or text that
            is not valid Unicode or holds a NUL.
    """
    texts = {
        field: check_text(request.query[name], name) if name in request.query else None
        for field, name in (
            ("text", "q"),
            ("customer", "customer"),
            ("channel", "channel"),
            ("status", "status"),
        )
    }
    days: dict[str, datetime | None] = {}
    for name in ("from", "to"):
        raw = request.query.get(name, "").strip()
        if not raw:
            days[name] = None
            continue
        try:
            days[name] = datetime.combine(date.fromisoformat(raw), time(), tzinfo=UTC)
        except ValueError:
            raise BadRequestError(
                f"query parameter {name} must be a date like 2026-12-07; got {raw[:40]!r}"
            ) from None
    until = days["to"]
    return SearchQuery(
        **texts,
        since=days["from"],
        until=None if until is None else until + timedelta(days=1),
        page=query_int(request, "page", 1, MAX_PAGE, default=1),
        per_page=query_int(request, "per_page", 1, MAX_PER_PAGE, default=20),
    )


def render_draft(draft: ApprovalDraft) -> dict[str, Any]:
    return {
        "answer_message_id": draft.answer.id,
        "answer": draft.answer.text,
        "question": draft.question,
        "question_message_id": draft.questions[0].id if draft.questions else None,
        "question_message_ids": [m.id for m in draft.questions],
        "intent": draft.intent,
    }


def render_entry(entry: LibraryEntry) -> dict[str, Any]:
    control = entry.control
    return {
        "source": entry.source,
        "kind": entry.kind,
        "question": entry.question,
        "answer": entry.answer,
        # What customers get now: the agent's edit when there is one.
        "served_answer": entry.served_text,
        "edited_answer": None if control is None else control.answer,
        "intent": entry.intent,
        "served": entry.usage.served,
        "rated_up": entry.usage.up,
        "rated_down": entry.usage.down,
        "disabled": control is not None and control.disabled,
        "approved_answer_id": None if control is None else control.approved_answer_id,
        "action": None if control is None else control.action,
        "by": None if control is None else control.author,
        "at": None if control is None else control.updated_at.isoformat(),
        # The approved answer that replaced this edited one in the index (served in its place).
        "replaced_by": entry.replaced_by,
    }


def render_excluded_entry(entry: ExcludedEntry) -> dict[str, Any]:
    excluded, control = entry.excluded, entry.control
    return {
        "source": excluded.source,
        "question": excluded.question,
        "answer": excluded.answer,
        "reasons": list(excluded.reasons),
        "intent": excluded.intent,
        "conversations": excluded.conversations,
        # The agent's clean version, once approved (an approved answer for the next build).
        "approved_answer_id": None if control is None else control.approved_answer_id,
        "clean_answer": None if control is None else control.answer,
        "by": None if control is None else control.author,
        "at": None if control is None else control.updated_at.isoformat(),
    }


def render_excluded(page: ExcludedPage) -> dict[str, Any]:
    return {
        "excluded": [render_excluded_entry(entry) for entry in page.entries],
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "listed": page.listed,
    }


def render_library(page: LibraryPage) -> dict[str, Any]:
    return {
        "answers": [render_entry(entry) for entry in page.entries],
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "indexed": page.indexed,
        "intents": list(page.intents),
    }


def query_flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: 1/true/yes or 0/false/no/absent (400 otherwise)."""
    raw = request.query.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequestError(f"query parameter {name} must be 1 or 0; got {raw[:20]!r}")


def parse_library(request: web.Request) -> LibraryQuery:
    """The library's query parameters (`q`, `intent`, `kind`, `rated_down`, `disabled`,
    `page`, `per_page`) as a `LibraryQuery` (400 for malformed ones)."""
    texts = {
        name: check_text(request.query[name], name) if name in request.query else None
        for name in ("q", "intent", "kind")
    }
    return LibraryQuery(
        text=texts["q"],
        intent=texts["intent"],
        kind=texts["kind"],
        rated_down=query_flag(request, "rated_down"),
        disabled=query_flag(request, "disabled"),
        page=query_int(request, "page", 1, MAX_PAGE, default=1),
        per_page=query_int(request, "per_page", 1, MAX_PER_PAGE, default=20),
    )


def source_field(body: dict[str, Any]) -> str:
    """The `source` of an indexed answer in a JSON body (400 when missing or malformed)."""
    source = text_field(body, "source", required=True, max_chars=MAX_SOURCE_CHARS)
    assert source is not None
    return source


def render_closed(closed: EscalationNotice) -> dict[str, Any]:
    return {"escalation": render_escalation(closed.escalation)}


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(values: Sequence[str]) -> tuple[Network, ...]:
    """`server.trusted_proxies` as networks (a single address is a network of one).

    Raises:
        ConfigurationError: an entry is neither an IP address nor a CIDR network.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"server.trusted_proxies: {value!r} is not an IP address or a network ({exc}); "
                'list your reverse proxies\' addresses, e.g. ["172.28.0.10"] or ["10.0.0.0/24"]'
            ) from exc
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _trusted(address: str | None, proxies: Sequence[Network]) -> bool:
    ip = _ip(address or "")
    return ip is not None and any(ip in network for network in proxies)


def client_address(request: web.Request, proxies: Sequence[Network]) -> str:
    """The client's address: the TCP peer, or, when the peer is one of `proxies`, the
    rightmost `X-Forwarded-For` entry that is not itself one of them (each proxy appends the
    address it was reached from; what lies further left the client could have written).

    Without this, behind nginx every agent would share the proxy's address, and a handful of
    typos would rate-limit everyone; with it from any peer, anyone could pick their address.
    """
    address = request.remote or "unknown"
    if not _trusted(address, proxies):
        return address
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:  # not an address: stop at the proxy that passed it on
            break
        address = str(ip)
        if not any(ip in network for network in proxies):
            break
    return address


def came_over_https(request: web.Request, proxies: Sequence[Network]) -> bool:
    """https directly, or `X-Forwarded-Proto: https` from one of `proxies`."""
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and _trusted(request.remote, proxies)


def safe_next(raw: str) -> str:
    """`raw` if it is a path on this site to go to after signing in, else HOME.

    Only a path: it starts with one `/`, holds no control character or backslash (browsers
    drop tabs and line breaks from a URL and read a backslash as `/`, so a tab, line break or
    backslash after the first `/` leads off-site: `/%09/evil.example`), and parses with no
    scheme or host.
    """
    if not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return HOME
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in raw):
        return HOME
    try:
        url = URL(raw)
    except ValueError:
        return HOME
    if url.scheme or url.host is not None or url.is_absolute():
        return HOME
    return raw


def conversation_id(request: web.Request) -> str:
    """The conversation id in the URL path (400 for a NUL, invalid Unicode or pages of text;
    an id of no conversation is the desk's 404)."""
    return path_text(request, "conversation_id", max_chars=MAX_CONVERSATION_ID_CHARS)


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body, declared as application/json (415 otherwise: see `require_json`)."""
    require_json(request)
    return await read_json(request)


def _authority(url: URL) -> str:
    """`host[:port]` of a URL, lower-cased, the scheme's default port dropped."""
    host = (url.host or "").lower()
    return f"{host}:{url.port}" if url.port and not url.is_default_port() else host


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


class ConsoleConnector:
    """Serves the console's pages, JSON API and events socket.

    Args:
        console: the console's use cases.
        accounts: accounts and sessions.
        bus: where the "console" events come from.
        settings: the console section (session lifetime).
        public_url: `server.public_url`; an https one makes the cookie Secure, and its origin
            may open the events socket.
        max_message_chars: longest reply an agent may send.
        trusted_proxies: `server.trusted_proxies`, the reverse proxies (addresses or CIDR
            networks) whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.

    Raises:
        ConfigurationError: a trusted proxy is not an address or a network.
    """

    def __init__(
        self,
        console: AgentDesk,
        accounts: SessionStore,
        bus: EventBus,
        settings: ConsoleSettings,
        public_url: str | None,
        max_message_chars: int,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.console = console
        self.accounts = accounts
        self.bus = bus
        self.settings = settings
        self.public_url = URL(public_url) if public_url else None
        self.max_message_chars = max_message_chars
        self.trusted_proxies = parse_trusted_proxies(trusted_proxies)
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}

    def add_routes(self, app: web.Application) -> None:
        api = "/console/api"
        app.router.add_get("/console", self.page)
        app.router.add_get("/console/", self.page)
        app.router.add_get("/console/sign-in", self.sign_in_page)
        app.router.add_get("/console/static/{name:.+}", self.asset)
        app.router.add_post(f"{api}/session", self.sign_in)
        app.router.add_delete(f"{api}/session", self._api(self.sign_out))
        app.router.add_get(f"{api}/me", self._api(self.me))
        app.router.add_get(f"{api}/queue", self._api(self.queue))
        app.router.add_get(f"{api}/intents", self._api(self.intents))
        app.router.add_get(f"{api}/dashboard", self._api(self.dashboard))
        app.router.add_get(f"{api}/search", self._api(self.search))
        app.router.add_get(f"{api}/events", self.events)
        conversation = f"{api}/conversations/{{conversation_id}}"
        app.router.add_get(conversation, self._api(self.conversation))
        app.router.add_get(f"{conversation}/history", self._api(self.history))
        app.router.add_post(f"{conversation}/claim", self._api(self.claim))
        app.router.add_post(f"{conversation}/release", self._api(self.release))
        app.router.add_post(f"{conversation}/transfer", self._api(self.transfer))
        app.router.add_get(f"{api}/colleagues", self._api(self.colleagues))
        app.router.add_post(f"{conversation}/reply", self._api(self.reply))
        app.router.add_post(f"{conversation}/handback", self._api(self.hand_back))
        app.router.add_post(f"{conversation}/resolve", self._api(self.resolve))
        app.router.add_post(f"{conversation}/labels", self._api(self.label_conversation))
        app.router.add_post(f"{api}/messages/{{message_id}}/labels", self._api(self.label_message))
        app.router.add_post(f"{api}/approved-answers", self._api(self.approve_answer))
        app.router.add_get(
            f"{api}/messages/{{message_id}}/approval", self._api(self.approval_draft)
        )
        app.router.add_get(f"{api}/answers", self._api(self.library))
        app.router.add_get(f"{api}/answers/excluded", self._api(self.excluded))
        app.router.add_post(f"{api}/answers/excluded/approve", self._api(self.approve_excluded))
        for action in ("disable", "enable", "edit", "approve"):
            app.router.add_post(f"{api}/answers/{action}", self._api(self.answer_action))
        app.router.add_post(f"{conversation}/notes", self._api(self.add_note))
        app.router.add_get(f"{api}/canned-responses", self._api(self.canned_responses))
        app.router.add_post(f"{api}/canned-responses", self._api(self.create_canned))
        canned = f"{api}/canned-responses/{{canned_id}}"
        app.router.add_put(canned, self._api(self.update_canned))
        app.router.add_delete(canned, self._api(self.delete_canned))
        app.on_shutdown.append(self._close_all)
        app[CONSOLE] = self

    # -- sessions ----------------------------------------------------------------------------

    async def signed_in(self, request: web.Request) -> AgentSession:
        """The request's session (UnauthorizedError without a live one)."""
        return await self.accounts.session(request.cookies.get(COOKIE, ""))

    def _api(self, handler: ApiHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap an API handler in the session check and, for changes, the CSRF check."""

        async def checked(request: web.Request) -> web.StreamResponse:
            session = await self.signed_in(request)
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                    raise ForbiddenError(
                        f"missing or wrong {CSRF_HEADER} header; send the csrf_token from "
                        "sign-in or GET /console/api/me"
                    )
            return await handler(request, session)

        return checked

    def _secure(self, request: web.Request) -> bool:
        https_url = self.public_url is not None and self.public_url.scheme == "https"
        return came_over_https(request, self.trusted_proxies) or https_url

    async def sign_in(self, request: web.Request) -> web.Response:
        body = await read_json_body(request)
        name = text_field(body, "name", required=True, max_chars=MAX_NAME_CHARS)
        password = text_field(
            body, "password", required=True, max_chars=MAX_PASSWORD_CHARS, strip=False
        )
        assert name is not None and password is not None
        address = client_address(request, self.trusted_proxies)
        signed = await self.accounts.sign_in(name.strip(), password, address)
        agent = signed.session.agent
        response = web.json_response(
            {
                "agent": {"name": agent.name, "role": agent.role.value},
                "csrf_token": signed.session.csrf_token,
            }
        )
        response.set_cookie(
            COOKIE,
            signed.token,
            max_age=int(self.settings.session_hours * 3600),
            path="/console",
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        response.headers["Cache-Control"] = "no-store"
        log.info("console: %s signed in from %s", agent.name, address)
        return response

    async def sign_out(self, request: web.Request, session: AgentSession) -> web.Response:
        await self.accounts.sign_out(request.cookies.get(COOKIE, ""))
        for ws in list(self._sockets.get(session.id, ())):
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"signed out")
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/console")
        return response

    async def me(self, request: web.Request, session: AgentSession) -> web.Response:
        agent = session.agent
        return web.json_response(
            {"name": agent.name, "role": agent.role.value, "csrf_token": session.csrf_token}
        )

    # -- pages -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        try:
            await self.signed_in(request)
        except UnauthorizedError:
            raise web.HTTPFound(
                "/console/sign-in?next=/console", headers={"Cache-Control": "no-store"}
            ) from None
        return web.Response(
            text=_static(PAGE), content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )

    async def sign_in_page(self, request: web.Request) -> web.Response:
        # The page's script goes to `next` after signing in and checks it the same way; a
        # link with an unsafe one is put right here, before any script runs.
        raw = request.query.get("next")
        if raw is not None and safe_next(raw) != raw:
            raise web.HTTPFound(
                str(URL("/console/sign-in").with_query(next=HOME)),
                headers={"Cache-Control": "no-store"},
            )
        return web.Response(
            text=_static(SIGN_IN_PAGE),
            content_type="text/html",
            charset="utf-8",
            headers=PAGE_HEADERS,
        )

    async def asset(self, request: web.Request) -> web.Response:
        return asset_response(request.match_info["name"], ASSETS, cache_control="no-cache")

    # -- the queue and conversations ---------------------------------------------------------

    async def queue(self, request: web.Request, session: AgentSession) -> web.Response:
        items = await self.console.queue()
        return web.json_response({"escalations": [render_item(i) for i in items]})

    async def conversation(self, request: web.Request, session: AgentSession) -> web.Response:
        view = await self.console.view(conversation_id(request))
        return web.json_response(render_view(view))

    async def search(self, request: web.Request, session: AgentSession) -> web.Response:
        page = await self.console.search(parse_search(request))
        return web.json_response(render_search(page))

    async def history(self, request: web.Request, session: AgentSession) -> web.Response:
        history = await self.console.history(conversation_id(request))
        return web.json_response(render_history(history))

    async def claim(self, request: web.Request, session: AgentSession) -> web.Response:
        cid = conversation_id(request)
        escalation = await self.console.claim(cid, session.agent)
        return web.json_response({"escalation": render_escalation(escalation)})

    async def release(self, request: web.Request, session: AgentSession) -> web.Response:
        cid = conversation_id(request)
        escalation = await self.console.release(cid, session.agent)
        return web.json_response({"escalation": render_escalation(escalation)})

    async def transfer(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        to = text_field(body, "to", required=True, max_chars=MAX_NAME_CHARS)
        assert to is not None
        escalation = await self.console.transfer(conversation_id(request), session.agent, to)
        return web.json_response({"escalation": render_escalation(escalation)})

    async def colleagues(self, request: web.Request, session: AgentSession) -> web.Response:
        return web.json_response({"agents": await self.console.colleagues()})

    async def hand_back(self, request: web.Request, session: AgentSession) -> web.Response:
        closed = await self.console.hand_back(conversation_id(request), session.agent)
        return web.json_response(render_closed(closed))

    async def resolve(self, request: web.Request, session: AgentSession) -> web.Response:
        closed = await self.console.resolve(conversation_id(request), session.agent)
        return web.json_response(render_closed(closed))

    async def reply(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        text = text_field(
            body, "text", required=True, max_chars=self.max_message_chars, strip=False
        )
        assert text is not None
        message, delivery = await self.console.reply(conversation_id(request), session.agent, text)
        return web.json_response(
            {
                "message": render_message(message),
                "delivered": delivery.delivered,
                # Why the customer's channel did not take it (None when it did).
                "undelivered_reason": delivery.reason,
            },
            status=201,
        )

    # -- labels ------------------------------------------------------------------------------

    async def label_message(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        feedback_id = await self.console.label_message(
            path_id(request, "message_id"),
            session.agent,
            intent=text_field(body, "intent", required=False, max_chars=64),
            sentiment=text_field(body, "sentiment", required=False, max_chars=16),
            rating=text_field(body, "rating", required=False, max_chars=16),
        )
        return web.json_response({"id": feedback_id}, status=201)

    async def label_conversation(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        sentiment = text_field(body, "sentiment", required=True, max_chars=16)
        assert sentiment is not None
        label_id = await self.console.label_conversation(
            conversation_id(request), session.agent, sentiment
        )
        return web.json_response({"id": label_id}, status=201)

    async def approve_answer(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        answer_id = id_field(body, "answer_message_id", required=True)
        assert answer_id is not None
        approved_id = await self.console.approve_answer(
            session.agent,
            answer_id,
            question_message_id=id_field(body, "question_message_id", required=False),
            question=text_field(body, "question", required=False, max_chars=self.max_message_chars),
            intent=text_field(body, "intent", required=False, max_chars=64),
            answer=text_field(body, "answer", required=False, max_chars=MAX_ANSWER_CHARS + 50),
        )
        return web.json_response({"id": approved_id}, status=201)

    async def approval_draft(self, request: web.Request, session: AgentSession) -> web.Response:
        draft = await self.console.approval_draft(path_id(request, "message_id"))
        return web.json_response({"draft": render_draft(draft)})

    # -- the answer library ------------------------------------------------------------------

    async def library(self, request: web.Request, session: AgentSession) -> web.Response:
        page = await self.console.library(parse_library(request))
        return web.json_response(render_library(page))

    async def excluded(self, request: web.Request, session: AgentSession) -> web.Response:
        text = check_text(request.query["q"], "q") if "q" in request.query else None
        page = await self.console.excluded(
            text,
            query_int(request, "page", 1, MAX_PAGE, default=1),
            query_int(request, "per_page", 1, MAX_PER_PAGE, default=20),
        )
        return web.json_response(render_excluded(page))

    async def approve_excluded(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        source = source_field(body)
        fields = {
            name: text_field(body, name, required=True, max_chars=MAX_ANSWER_CHARS + 50)
            for name in ("question", "answer")
        }
        intent = text_field(body, "intent", required=False, max_chars=64)
        entry = await self.console.approve_excluded(
            session.agent, source, fields["question"] or "", fields["answer"] or "", intent
        )
        return web.json_response({"excluded": render_excluded_entry(entry)}, status=201)

    async def answer_action(self, request: web.Request, session: AgentSession) -> web.Response:
        action = request.path.rsplit("/", 1)[-1]
        body = await read_json_body(request)
        source = source_field(body)
        if action in ("disable", "enable"):
            entry = await self.console.disable_answer(session.agent, source, action == "disable")
        elif action == "edit":
            answer = text_field(body, "answer", required=True, max_chars=MAX_ANSWER_CHARS + 50)
            assert answer is not None
            intent = text_field(body, "intent", required=False, max_chars=64)
            entry = await self.console.edit_answer(session.agent, source, answer, intent)
        else:
            entry = await self.console.approve_indexed(session.agent, source)
        return web.json_response({"answer": render_entry(entry)})

    # -- canned responses and notes ----------------------------------------------------------

    async def canned_responses(self, request: web.Request, session: AgentSession) -> web.Response:
        cid = request.query.get("conversation_id") or None
        if cid is not None and len(check_text(cid, "conversation_id")) > MAX_CONVERSATION_ID_CHARS:
            raise BadRequestError(f"conversation_id {cid[:40]!r}... is no conversation id")
        filled = await self.console.canned_responses(session.agent, cid)
        return web.json_response(
            {"canned_responses": [render_canned(f.response, f) for f in filled]}
        )

    async def _save_canned(
        self, request: web.Request, session: AgentSession, canned_id: int | None
    ) -> CannedResponse:
        body = await read_json_body(request)
        fields = {
            name: text_field(body, name, required=True, max_chars=limit, strip=False)
            for name, limit in (
                ("shortcut", 64),
                ("title", MAX_TITLE_CHARS + 50),
                ("text", MAX_CANNED_CHARS + 50),
            )
        }
        return await self.console.save_canned(
            session.agent,
            fields["shortcut"] or "",
            fields["title"] or "",
            fields["text"] or "",
            canned_id,
        )

    async def create_canned(self, request: web.Request, session: AgentSession) -> web.Response:
        saved = await self._save_canned(request, session, None)
        return web.json_response({"canned_response": render_canned(saved)}, status=201)

    async def update_canned(self, request: web.Request, session: AgentSession) -> web.Response:
        canned_id = path_id(request, "canned_id", "a canned response")
        saved = await self._save_canned(request, session, canned_id)
        return web.json_response({"canned_response": render_canned(saved)})

    async def delete_canned(self, request: web.Request, session: AgentSession) -> web.Response:
        await self.console.delete_canned(
            session.agent, path_id(request, "canned_id", "a canned response")
        )
        return web.Response(status=204)

    async def add_note(self, request: web.Request, session: AgentSession) -> web.Response:
        body = await read_json_body(request)
        text = text_field(body, "text", required=True, max_chars=MAX_NOTE_CHARS + 50, strip=False)
        assert text is not None
        note = await self.console.add_note(conversation_id(request), session.agent, text)
        return web.json_response({"note": render_note(note)}, status=201)

    async def intents(self, request: web.Request, session: AgentSession) -> web.Response:
        return web.json_response({"intents": await self.console.intents()})

    async def dashboard(self, request: web.Request, session: AgentSession) -> web.Response:
        days = query_int(request, "days", 1, MAX_DASHBOARD_DAYS, default=7)
        dashboard = await self.console.dashboard(session.agent, days)
        return web.json_response(render_dashboard(dashboard))

    # -- live events -------------------------------------------------------------------------

    def check_origin(self, request: web.Request) -> None:
        """Refuse (ForbiddenError) a socket opened by a page of another site.

        The cookie is SameSite=Strict, but WebSocket handshakes are not covered by CORS, so
        the Origin is checked too: the console's own host, or `server.public_url`.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            raise ForbiddenError("the events socket needs an Origin header (open it from the page)")
        own = {_authority(URL(f"{request.scheme}://{request.host}"))}
        if self.public_url is not None:
            own.add(_authority(self.public_url))
        # Host and port only: behind a TLS-terminating proxy the scheme seen here is http.
        if _authority(URL(origin.strip())) not in own:
            raise ForbiddenError(
                f"origin {origin} may not open the console's events; open the console from "
                "its own address"
            )

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = await self.signed_in(request)
        self.check_origin(request)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4096)
        await ws.prepare(request)
        self._sockets.setdefault(session.id, set()).add(ws)
        try:
            # Subscribed before the hello: a page that loads after the hello misses nothing.
            async with self.bus.subscribe(TOPIC) as events:
                await ws.send_json({"type": "hello"})
                forward = asyncio.create_task(self._forward(events, ws), name="console-events")
                try:
                    async for frame in ws:
                        if frame.type == WSMsgType.ERROR:
                            break  # the console sends nothing; any frame is ignored
                finally:
                    await cancel_and_wait(forward)
        finally:
            sockets = self._sockets.get(session.id)
            if sockets is not None:
                sockets.discard(ws)
                if not sockets:
                    del self._sockets[session.id]
        return ws

    async def _forward(self, events: Subscription, ws: web.WebSocketResponse) -> None:
        try:
            async for event in events:
                await ws.send_json(event)
        except ConnectionResetError:
            log.info("console events socket closed while sending")
            return
        # The bus stopped (shutdown): the page reconnects and reloads.
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"events ended")

    async def _close_all(self, app: web.Application) -> None:
        for sockets in list(self._sockets.values()):
            for ws in list(sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


CONSOLE = web.AppKey("console", ConsoleConnector)

"""The Telegram connector, on python-telegram-bot (PTB).

Only translation lives here: a Telegram `Update` -> `Message` / `Feedback` (the parsers) and a
`Reply` -> `sendMessage` arguments (the renderer). Updates arrive by long polling (development)
or on `POST /telegram/webhook` (production); either way PTB dispatches them to the handlers
registered in `start`. Every call to Telegram goes through one retry loop that honours 429
`retry_after`, retries 5xx and network errors with backoff and then raises `DeliveryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import hmac
import html
import logging
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from telegram import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Update,
)
from telegram import (
    Message as TelegramMessage,
)
from telegram.constants import ChatAction, MessageLimit, ParseMode
from telegram.error import (
    BadRequest,
    Conflict,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import (
    Application,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBDeprecationWarning

from bot.core.background import cancel_and_wait
from bot.core.delivery import DeliveryError, Dispatcher
from bot.core.errors import BadRequestError, ConfigurationError, NotFoundError
from bot.core.locks import KeyedLocks
from bot.core.records import Conversation, Feedback, Message, Reply
from bot.core.service import ConversationService, HandleResult
from bot.settings import TelegramSettings
from connectors.http import MAX_INT_DIGITS, id_value, read_json

log = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = int(MessageLimit.MAX_TEXT_LENGTH)  # 4096, counted in UTF-16 code units
ALLOWED_UPDATES = ["message", "callback_query"]
FEEDBACK_PREFIX = "fb"
QUICK_REPLY_PREFIX = "qr"
RATING_EMOJI = {"up": "👍", "down": "👎"}
# What Telegram accepts as a webhook secret (setWebhook's secret_token).
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")

THANKS_FOR_FEEDBACK = "Thanks for the feedback!"
INVALID_BUTTON = "Sorry, this button no longer works. Please type your message instead."
RATING_REFUSED = "Sorry, only answers in this chat can be rated, so the rating was not saved."
FALLBACK = (
    "Sorry, something went wrong on our side and I could not answer. "
    "Please send your message again in a moment, or type /human to reach a person."
)

T = TypeVar("T")
# PTB's Application is generic over six context types; the connector uses the defaults.
TelegramApplication = Application[Any, Any, Any, Any, Any, Any]


# -- parsers ---------------------------------------------------------------------------------


def parse_update(update: Update) -> Message | None:
    """A customer's text message (or command) -> Message; None for anything else.

    The chat id is the sender, so one Telegram chat is one conversation; `chat:message` is the
    client id, so an update Telegram delivers twice is recognised and not answered twice.
    """
    incoming = update.message
    if incoming is None or not incoming.text:
        return None
    chat_id = incoming.chat.id
    user = incoming.from_user
    metadata: dict[str, Any] = {"message_id": incoming.message_id}
    if user is not None:
        metadata["user_id"] = user.id
        if user.username:
            metadata["username"] = user.username
    return Message(
        channel=CHANNEL,
        sender=str(chat_id),
        text=incoming.text,
        client_id=f"{chat_id}:{incoming.message_id}",
        sender_name=user.first_name if user is not None else None,
        metadata=metadata,
    )


def parse_feedback(query: CallbackQuery) -> Feedback | None:
    """A press on 👍 / 👎 (`fb:<message_id>:up|down`) -> Feedback; None when malformed.

    The data comes from the user's client, which can send any: the message id is only a
    claim, checked against the chat's own conversation when the rating is recorded.
    """
    parts = (query.data or "").split(":")
    if len(parts) != 3 or parts[0] != FEEDBACK_PREFIX or parts[2] not in RATING_EMOJI:
        return None
    digits = parts[1]
    # ASCII digits only ("²".isdigit() is True), and within the store's id range.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_INT_DIGITS:
        return None
    try:
        message_id = id_value(int(digits), "message_id", "a bot reply")
    except BadRequestError:
        return None
    return Feedback(
        message_id=message_id, rating=parts[2], author=f"{CHANNEL}:{query.from_user.id}"
    )


def parse_quick_reply(query: CallbackQuery) -> Message | None:
    """A press on a quick-reply button -> the customer message it stands for; None if gone.

    The button's own label is the text (callback data is limited to 64 bytes, labels are
    not), read back from the message the button sits under.
    """
    source = query.message
    if not isinstance(source, TelegramMessage) or source.reply_markup is None:
        return None  # older than 48 hours: Telegram no longer sends the message
    label = next(
        (
            button.text
            for row in source.reply_markup.inline_keyboard
            for button in row
            if button.callback_data == query.data
        ),
        None,
    )
    if label is None:
        return None
    chat_id = source.chat.id
    return Message(
        channel=CHANNEL,
        sender=str(chat_id),
        text=label,
        client_id=f"{chat_id}:cb:{query.id}",
        sender_name=query.from_user.first_name,
        metadata={"user_id": query.from_user.id, "callback_query": query.id},
    )


# -- renderer --------------------------------------------------------------------------------


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split `text` into pieces that each fit `limit` once HTML-escaped.

    Cuts at the last paragraph break, else line break, else sentence end, else space in the
    second half of the allowed window; a hard cut only when a single word is too long.
    Length is counted in UTF-16 code units, as Telegram counts it.
    """
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        total, cut = 0, 0
        for ch in rest:
            cost = _utf16_length(html.escape(ch, quote=False))
            if total + cost > limit:
                break
            total += cost
            cut += 1
        if cut == len(rest):
            pieces.append(rest)
            break
        window = rest[:cut]
        boundary = _boundary(window, cut)
        piece, rest = window[:boundary].rstrip(), rest[boundary:].lstrip()
        if piece:
            pieces.append(piece)
    return pieces


def _boundary(window: str, cut: int) -> int:
    """Where to end a piece inside `window` (exclusive), preferring natural breaks."""
    floor = cut // 2
    for pattern in (r"\n\s*\n", r"\n", r"[.!?…](?=\s)", r"\s"):
        matches = [m for m in re.finditer(pattern, window) if m.end() > floor]
        if matches:
            return matches[-1].end()
    return cut


def render_reply(reply: Reply) -> list[dict[str, Any]]:
    """A Reply -> keyword arguments of one `sendMessage` per piece (chat_id not included).

    Text is HTML-escaped for `parse_mode=HTML` (customer-influenced text must never become
    markup) and split below Telegram's limit. Quick replies and, for rateable replies, the
    👍 / 👎 buttons go under the last piece.
    """
    pieces = split_text(reply.text) or [""]
    rows: list[list[InlineKeyboardButton]] = [
        [InlineKeyboardButton(label, callback_data=f"{QUICK_REPLY_PREFIX}:{index}")]
        for index, label in enumerate(reply.quick_replies)
    ]
    if reply.rateable:
        rows.append(
            [
                InlineKeyboardButton(
                    emoji, callback_data=f"{FEEDBACK_PREFIX}:{reply.message_id}:{rating}"
                )
                for rating, emoji in RATING_EMOJI.items()
            ]
        )
    rendered: list[dict[str, Any]] = []
    for index, piece in enumerate(pieces):
        kwargs: dict[str, Any] = {
            "text": html.escape(piece, quote=False),
            "parse_mode": ParseMode.HTML,
        }
        if rows and index == len(pieces) - 1:
            kwargs["reply_markup"] = InlineKeyboardMarkup(rows)
        rendered.append(kwargs)
    return rendered


def _without_feedback(markup: InlineKeyboardMarkup | None) -> InlineKeyboardMarkup | None:
    """The keyboard with the 👍 / 👎 row removed (None when nothing is left)."""
    if markup is None:
        return None
    rows = [
        list(row)
        for row in markup.inline_keyboard
        if not any(
            isinstance(button.callback_data, str)
            and button.callback_data.startswith(f"{FEEDBACK_PREFIX}:")
            for button in row
        )
    ]
    return InlineKeyboardMarkup(rows) if rows else None


# -- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How calls to the Bot API are retried.

    Args:
        attempts: calls in all, the first included.
        base_delay_s: wait after the first 5xx/network failure; doubled each time.
        max_delay_s: the longest backoff wait.
        max_retry_after_s: a 429 asking to wait longer than this is not waited for.
        sleep: how to wait (tests pass a recorder).
    """

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)


def _retry_after_seconds(exc: RetryAfter) -> float:
    # PTB 22 warns on `retry_after` until PTB_TIMEDELTA is set; accept both of its shapes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: int | float | dtm.timedelta = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


class ChatOrderedUpdateProcessor(BaseUpdateProcessor):
    """Processes updates of different chats concurrently, those of one chat in order.

    Concurrency lets the model micro-batcher serve many customers at once; per-chat order
    keeps a conversation's messages answered in the order they were written.
    """

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._chats: KeyedLocks[int] = KeyedLocks()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is None:
            await coroutine
            return
        async with self._chats.hold(chat.id):
            await coroutine

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to tear down."""


class TelegramConnector:
    """Connects Telegram chats to the conversation service, by polling or by webhook.

    Args:
        service: the core.
        settings: the `telegram` settings section (token, base_url, mode, webhook).
        dispatcher: where the connector registers itself to push agent replies.
        retry: how Bot API calls are retried.
        poll_timeout_s: long-polling timeout of getUpdates.
        max_concurrent_updates: updates processed at once (per chat they stay in order).

    Raises:
        ConfigurationError: no token is set.
    """

    def __init__(
        self,
        service: ConversationService,
        settings: TelegramSettings,
        dispatcher: Dispatcher,
        *,
        retry: RetryPolicy | None = None,
        poll_timeout_s: float = 10.0,
        max_concurrent_updates: int = 32,
    ) -> None:
        if settings.token is None or not settings.token.get_secret_value():
            raise ConfigurationError(
                "the Telegram connector needs a bot token; set SUPPORTBOT_TELEGRAM__TOKEN to "
                "the token @BotFather gave you"
            )
        self.service = service
        self.settings = settings
        self.dispatcher = dispatcher
        self.retry = retry or RetryPolicy()
        self.poll_timeout_s = poll_timeout_s
        self.max_concurrent_updates = max_concurrent_updates
        self.polling_error: TelegramError | None = None
        self._application: TelegramApplication | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Expose the connector on the app and, in webhook mode, serve the webhook."""
        app[TELEGRAM] = self
        if self.settings.mode == "webhook":
            app.router.add_post(WEBHOOK_PATH, self.webhook)

    async def start(self) -> None:
        """Connect to the Bot API, register the handlers and start receiving updates.

        Raises:
            ConfigurationError: Telegram rejected the token, webhook mode without a usable
                webhook URL or secret, a webhook Telegram does not confirm, or polling while
                a webhook is active.
            telegram.error.TelegramError: the Bot API is unreachable.
        """
        settings = self.settings
        if settings.mode == "webhook":
            self._check_webhook_settings()
        application = self._build_application()
        application.add_handler(CommandHandler("start", self._on_start))
        application.add_handler(CommandHandler("help", self._on_help))
        application.add_handler(CommandHandler("human", self._on_human))
        application.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, self._on_text
            )
        )
        application.add_handler(
            CallbackQueryHandler(self._on_feedback, pattern=f"^{FEEDBACK_PREFIX}:")
        )
        application.add_handler(
            CallbackQueryHandler(self._on_quick_reply, pattern=f"^{QUICK_REPLY_PREFIX}:")
        )
        application.add_handler(CallbackQueryHandler(self._on_unknown_button))
        application.add_error_handler(self._on_error)

        try:
            await application.initialize()
        except InvalidToken:
            # PTB's message quotes the token, and a traceback would print it: say it plainly.
            raise ConfigurationError(
                "Telegram rejected the bot token (getMe answered 401 Unauthorized); set "
                "SUPPORTBOT_TELEGRAM__TOKEN to the token @BotFather gave you"
            ) from None
        self._application = application
        try:
            if settings.mode == "webhook":
                await self._register_webhook(application)
            else:
                await self._check_no_webhook(application)
            await application.start()
            if application.updater is not None:
                await application.updater.start_polling(
                    timeout=dtm.timedelta(seconds=self.poll_timeout_s),
                    allowed_updates=ALLOWED_UPDATES,
                    error_callback=self._on_polling_error,
                )
        except BaseException:
            self._application = None
            if application.running:
                await application.stop()
            await application.shutdown()
            raise
        self.dispatcher.register(CHANNEL, self)
        log.info(
            "Telegram connector running as @%s (%s)",
            application.bot.username,
            settings.mode,
        )

    def _build_application(self) -> TelegramApplication:
        assert self.settings.token is not None
        builder = (
            Application.builder()
            .token(self.settings.token.get_secret_value())
            .base_url(self.settings.base_url)
            .concurrent_updates(ChatOrderedUpdateProcessor(self.max_concurrent_updates))
        )
        if self.settings.mode == "webhook":
            # Updates arrive on our own aiohttp route, not through PTB's webhook server.
            builder = builder.updater(None)
        return builder.build()

    async def stop(self) -> None:
        """Stop receiving updates and close the connection to the Bot API."""
        application, self._application = self._application, None
        if application is None:
            return
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        if application.running:
            await application.stop()
        await application.shutdown()
        log.info("Telegram connector stopped")

    def _check_webhook_settings(self) -> None:
        url = self.settings.webhook_url
        if not url:
            raise ConfigurationError(
                "SUPPORTBOT_TELEGRAM__MODE=webhook needs SUPPORTBOT_TELEGRAM__WEBHOOK_URL: the "
                f"public HTTPS URL Telegram posts updates to, ending in {WEBHOOK_PATH}; or use "
                "SUPPORTBOT_TELEGRAM__MODE=polling"
            )
        secret = self.settings.secret_token
        if secret is None:
            log.warning(
                "Telegram webhook without a secret token: anyone who finds %s can post fake "
                "updates; set SUPPORTBOT_TELEGRAM__SECRET_TOKEN",
                url,
            )
        elif not SECRET_PATTERN.fullmatch(secret.get_secret_value()):
            raise ConfigurationError(
                "SUPPORTBOT_TELEGRAM__SECRET_TOKEN must be 1-256 characters of A-Z, a-z, 0-9, "
                "_ and -, as Telegram requires; choose another secret"
            )
        if not url.rstrip("/").endswith(WEBHOOK_PATH):
            log.warning(
                "Telegram webhook URL %s does not end in %s; make sure a proxy forwards it there",
                url,
                WEBHOOK_PATH,
            )

    async def _register_webhook(self, application: TelegramApplication) -> None:
        url = self.settings.webhook_url
        secret = self.settings.secret_token
        await self._call(
            "setWebhook",
            lambda: application.bot.set_webhook(
                url=url,
                secret_token=secret.get_secret_value() if secret else None,
                allowed_updates=ALLOWED_UPDATES,
            ),
        )
        info = await self._call("getWebhookInfo", application.bot.get_webhook_info)
        if info.url != url:
            raise ConfigurationError(
                f"Telegram reports the webhook URL {info.url!r} after setWebhook({url!r}); "
                "check SUPPORTBOT_TELEGRAM__WEBHOOK_URL and that no other process sets this "
                "bot's webhook"
            )
        if info.last_error_message:
            log.warning(
                "Telegram's last attempt to reach %s failed: %s", url, info.last_error_message
            )

    async def _check_no_webhook(self, application: TelegramApplication) -> None:
        # PTB's start_polling deletes any webhook without a word; a production webhook
        # silently stolen by a developer's polling bot is worse than refusing to start.
        info = await self._call("getWebhookInfo", application.bot.get_webhook_info)
        if info.url:
            raise ConfigurationError(
                f"a Telegram webhook is active for this bot ({info.url}), so polling "
                "(SUPPORTBOT_TELEGRAM__MODE=polling) cannot receive updates; either run with "
                "SUPPORTBOT_TELEGRAM__MODE=webhook, or delete the webhook first "
                "(https://api.telegram.org/bot<token>/deleteWebhook) if nothing else uses it"
            )

    def _on_polling_error(self, exc: TelegramError) -> None:
        """PTB's polling loop reports getUpdates failures here; it retries by itself."""
        self.polling_error = exc
        if isinstance(exc, Conflict):
            log.error(
                "Telegram refused getUpdates: %s. Another consumer is receiving this bot's "
                "updates: a webhook was set (delete it with deleteWebhook, or switch to "
                "SUPPORTBOT_TELEGRAM__MODE=webhook) or another process polls with the same "
                "token (stop it). Retrying.",
                exc,
            )
        else:
            log.error("polling Telegram failed: %s; retrying", exc)

    # -- webhook -----------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        """`POST /telegram/webhook`: check the secret, handle the update, then answer 200."""
        secret = self.settings.secret_token
        if secret is not None:
            given = request.headers.get(SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
                log.warning("Telegram webhook call from %s with a wrong secret", request.remote)
                return web.json_response(
                    {"error": f"missing or wrong {SECRET_HEADER} header"}, status=401
                )
        application = self._application
        if application is None:
            return web.json_response({"error": "the Telegram connector is not running"}, status=503)
        body = await read_json(request, "the Update")
        try:
            update = Update.de_json(body, application.bot)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise BadRequestError(f"the body is not a Telegram Update: {exc!r}") from exc
        # Handled before answering, not queued: a replica killed mid-update never said 200, so
        # Telegram sends the update again (through the proxy, to any replica), where the
        # client id recognises what was already stored and answered. The processor keeps one
        # chat's updates in order and bounds how many run at once, as for polling.
        await application.update_processor.process_update(
            update, application.process_update(update)
        )
        return web.json_response({})

    # -- handlers ----------------------------------------------------------------------------

    async def _on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = parse_update(update)
        if message is None:
            return
        name = html.escape(message.sender_name or "there", quote=False)
        bot_name = html.escape(context.bot.first_name, quote=False)
        text = (
            f"Hi {name}! I'm {bot_name}, the support assistant. Ask me anything in your own "
            "words and I'll answer right away.\n\n"
            "Type /human at any time to reach a person, or /help to see what I can do."
        )
        await self._send_html(int(message.sender), text)

    async def _on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = parse_update(update)
        if message is None:
            return
        text = (
            "I answer common questions right away (orders, deliveries, refunds, your account), "
            "using what our support team has answered before. Just write your question.\n\n"
            "Under my answers, tap 👍 or 👎 to tell me whether they helped.\n\n"
            "/human - talk to a person from the support team\n"
            "/help - show this message"
        )
        await self._send_html(int(message.sender), text)

    async def _on_human(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = parse_update(update)
        if message is None:
            return
        result = await self.service.request_handoff(message)
        await self._send_result(int(message.sender), result)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = parse_update(update)
        if message is None:
            return
        await self._answer(message)

    async def _answer(self, message: Message) -> None:
        chat_id = int(message.sender)
        if await self.service.handed_off(CHANNEL, message.sender):
            # The bot will not answer (a person has or will have the chat): "typing…" would
            # promise a reply that does not come. The customer gets "it's in the queue" or
            # nothing (an agent is there), see ConversationService.
            result = await self.service.handle(message)
        else:
            async with self._typing(chat_id):
                result = await self.service.handle(message)
        await self._send_result(chat_id, result)

    async def _send_result(self, chat_id: int, result: HandleResult) -> None:
        if result.duplicate:
            # Telegram delivered this update before and it was answered then.
            log.info(
                "Telegram message %s was delivered again; not answering twice", result.message_id
            )
            return
        for reply in result.replies:
            await self._send_reply(chat_id, reply)

    async def _on_feedback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        feedback = parse_feedback(query)
        if feedback is None:
            await self._answer_query(query, INVALID_BUTTON)
            return
        # The press speaks for the chat the button was shown in, never for the message its
        # data names: the service refuses messages outside that chat's own conversation.
        chat = update.effective_chat
        try:
            if chat is None:
                raise BadRequestError("the press came without its message; no chat to rate in")
            await self.service.record_customer_feedback(CHANNEL, str(chat.id), feedback)
        except (NotFoundError, BadRequestError) as exc:
            log.info("Telegram rating by user %s refused: %s", query.from_user.id, exc)
            await self._answer_query(query, RATING_REFUSED)
            return
        await self._answer_query(query, THANKS_FOR_FEEDBACK)
        source = query.message
        if isinstance(source, TelegramMessage):
            markup = _without_feedback(source.reply_markup)
            await self._call(
                "editMessageReplyMarkup",
                lambda: context.bot.edit_message_reply_markup(
                    chat_id=source.chat.id, message_id=source.message_id, reply_markup=markup
                ),
            )

    async def _on_quick_reply(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        message = parse_quick_reply(query)
        if message is None:
            await self._answer_query(query, INVALID_BUTTON)
            return
        await self._answer_query(query, None)
        await self._answer(message)

    async def _on_unknown_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.callback_query is not None:
            await self._answer_query(update.callback_query, INVALID_BUTTON)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The connector's one boundary per update: log with the traceback, tell the customer.

        The customer's message is already stored when a later step fails, so it is not lost;
        when the failure was sending itself, a fallback would fail the same way.
        """
        update_id = update.update_id if isinstance(update, Update) else None
        error = context.error
        log.error("handling Telegram update %s failed: %r", update_id, error, exc_info=error)
        if isinstance(error, DeliveryError) or not isinstance(update, Update):
            return
        chat = update.effective_chat
        if chat is None:
            return
        try:
            await self._send_html(chat.id, html.escape(FALLBACK, quote=False))
        except DeliveryError as exc:
            log.error("could not tell chat %s that its update failed: %s", chat.id, exc)

    # -- delivery ----------------------------------------------------------------------------

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        """Push an agent's (or system) reply to the customer's Telegram chat.

        Raises:
            DeliveryError: the connector is not running, the conversation is not a Telegram
                chat, or Telegram did not accept the message after retries.
        """
        try:
            chat_id = int(conversation.sender)
        except ValueError as exc:
            raise DeliveryError(
                f"conversation {conversation.id} has sender {conversation.sender!r}, which is "
                "not a Telegram chat id; only conversations that came from Telegram can be "
                "delivered there"
            ) from exc
        await self._send_reply(chat_id, reply)

    async def _send_reply(self, chat_id: int, reply: Reply) -> None:
        for kwargs in render_reply(reply):
            await self._send_message(chat_id, kwargs)

    async def _send_html(self, chat_id: int, text: str) -> None:
        await self._send_message(chat_id, {"text": text, "parse_mode": ParseMode.HTML})

    async def _send_message(self, chat_id: int, kwargs: dict[str, Any]) -> None:
        bot = self._running().bot
        await self._call(
            f"sendMessage to chat {chat_id}",
            lambda: bot.send_message(chat_id=chat_id, **kwargs),
        )

    async def _answer_query(self, query: CallbackQuery, text: str | None) -> None:
        bot = self._running().bot
        await self._call(
            "answerCallbackQuery",
            lambda: bot.answer_callback_query(callback_query_id=query.id, text=text),
        )

    @contextlib.asynccontextmanager
    async def _typing(self, chat_id: int) -> AsyncIterator[None]:
        """Show "typing…" while the bot thinks (Telegram shows it for 5 s; refreshed)."""
        bot = self._running().bot

        async def show() -> None:
            try:
                await bot.send_chat_action(chat_id=chat_id, action=ChatAction.TYPING)
            except TelegramError as exc:
                # Only a cosmetic hint: the answer itself must not wait for or fail on it.
                log.warning("could not show typing in chat %s: %s", chat_id, exc)

        async def refresh() -> None:
            while True:
                await asyncio.sleep(4.5)
                await show()

        await show()
        refresher = asyncio.create_task(refresh())
        try:
            yield
        finally:
            await cancel_and_wait(refresher)

    def _running(self) -> TelegramApplication:
        if self._application is None:
            raise DeliveryError(
                "the Telegram connector is not running; start the app with "
                "SUPPORTBOT_TELEGRAM__TOKEN set"
            )
        return self._application

    async def _call(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """One Bot API call with the retry policy.

        Raises:
            DeliveryError: Telegram refused the call (4xx), or still failed after the
                allowed attempts (429 / 5xx / network).
        """
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await action()
            except RetryAfter as exc:
                delay = _retry_after_seconds(exc)
                if delay > policy.max_retry_after_s:
                    raise DeliveryError(
                        f"{what}: Telegram asks to wait {delay:.0f} s (flood control), longer "
                        f"than the {policy.max_retry_after_s:.0f} s the connector waits"
                    ) from exc
                error: TelegramError = exc
            except BadRequest as exc:
                raise DeliveryError(f"{what}: Telegram refused the request: {exc}") from exc
            except NetworkError as exc:  # 5xx, connection failures and timeouts
                delay = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
                error = exc
            except TelegramError as exc:  # Forbidden (bot blocked), Conflict, invalid token
                raise DeliveryError(f"{what}: Telegram refused the request: {exc}") from exc
            if attempt == policy.attempts:
                break
            log.warning(
                "%s failed (%s); attempt %d of %d, retrying in %.2f s",
                what,
                error,
                attempt,
                policy.attempts,
                delay,
            )
            await policy.sleep(delay)
        raise DeliveryError(
            f"{what} failed {policy.attempts} times, last with: {error}; Telegram or the "
            f"network to {self.settings.base_url} is unavailable"
        ) from error


TELEGRAM = web.AppKey("telegram", TelegramConnector)

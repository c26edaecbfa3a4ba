"""The Telegram connector: real python-telegram-bot against a fake Bot API server.

The app comes from `create_app` with real models and SQLite; only api.telegram.org is
replaced, by `tests/fakes/telegram_api.py` reached through the `base_url` setting.
"""

from __future__ import annotations

import asyncio
import html
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from telegram import CallbackQuery, Update
from telegram.error import Conflict

from bot.app.factory import RUNTIME, create_app
from bot.core.delivery import DeliveryError
from bot.core.errors import ConfigurationError
from bot.core.logs import QUIET_LOGGERS, configure_logging
from bot.core.records import Conversation, ConversationStatus, Reply, Role, Route
from bot.settings import Settings
from connectors.telegram import (
    SECRET_HEADER,
    TELEGRAM,
    THANKS_FOR_FEEDBACK,
    WEBHOOK_PATH,
    RetryPolicy,
    TelegramConnector,
    parse_feedback,
    parse_quick_reply,
    parse_update,
    render_reply,
    split_text,
)
from tests.fakes.telegram_api import TOKEN, FakeTelegramApi
from tests.helpers import console_as, runtime_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
WEBHOOK_URL = "https://support.example.com/telegram/webhook"
SECRET = "s3cret_webhook-token"


class RecordedSleeps:
    """Stands in for asyncio.sleep in the retry policy: records delays, waits no real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def settings_for(models: Path, db_url: str, fake: FakeTelegramApi, **telegram: Any) -> Settings:
    return runtime_settings(
        models, db_url, telegram={"token": TOKEN, "base_url": fake.base_url, **telegram}
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramApi]:
    async with FakeTelegramApi() as api:
        yield api


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
def make_app(
    runtime_models: Path, tmp_path: Path, fake: FakeTelegramApi, sleeps: RecordedSleeps
) -> Callable[..., web.Application]:
    def make(**telegram: Any) -> web.Application:
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
        app = create_app(settings_for(runtime_models, db_url, fake, **telegram))
        connector = app[TELEGRAM]
        connector.retry = RetryPolicy(base_delay_s=0.01, sleep=sleeps)
        connector.poll_timeout_s = 1
        return app

    return make


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, make_app: Callable[..., web.Application]
) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app())


async def say(fake: FakeTelegramApi, chat_id: int, text: str, **extra: Any) -> dict[str, Any]:
    """A customer writes; returns the update as queued."""
    return await fake.enqueue(fake.message_update(chat_id, text, **extra))


async def next_reply(fake: FakeTelegramApi, chat_id: int) -> dict[str, Any]:
    """Wait for one more message to `chat_id` than it has had; return its parameters."""
    sent = await fake.wait_for_message(chat_id, count=len(fake.sent_to(chat_id)) + 1)
    return sent[-1].params


def buttons(params: dict[str, Any]) -> list[tuple[str, str]]:
    markup = params.get("reply_markup") or {"inline_keyboard": []}
    return [(b["text"], b["callback_data"]) for row in markup["inline_keyboard"] for b in row]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


# -- parser and renderer (no server) ---------------------------------------------------------


def _reply(text: str, **extra: Any) -> Reply:
    return Reply(
        **{"conversation_id": "c1", "message_id": 42, "role": Role.BOT, "text": text, **extra}
    )


def test_a_long_reply_is_split_below_the_limit_with_html_escaped() -> None:
    sentence = "Your <b>refund</b> & your order are on their way. "
    paragraph = sentence * 30  # ~1500 characters
    text = "\n\n".join([paragraph.strip()] * 6)  # ~9000 characters, more once escaped
    assert len(text) > 9000
    pieces = render_reply(_reply(text, rateable=True))
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece["text"]) <= 4096
        assert piece["parse_mode"] == "HTML"
        assert "<b>" not in piece["text"] and "&lt;b&gt;refund&lt;/b&gt; &amp;" in piece["text"]
        # split at a paragraph or sentence end, never inside a word or an entity
        assert html.unescape(piece["text"]).endswith(".")
    assert all("reply_markup" not in piece for piece in pieces[:-1])
    keyboard = pieces[-1]["reply_markup"].inline_keyboard
    assert [(b.text, b.callback_data) for b in keyboard[-1]] == [
        ("👍", "fb:42:up"),
        ("👎", "fb:42:down"),
    ]
    joined = " ".join(html.unescape(p["text"]) for p in pieces)
    assert joined.split() == text.split()


def test_an_unbreakable_text_is_cut_hard_and_emoji_count_double() -> None:
    assert [len(p) for p in split_text("x" * 9000)] == [4096, 4096, 808]
    pieces = split_text("😀" * 3000)  # two UTF-16 code units each, as Telegram counts
    assert [len(p) for p in pieces] == [2048, 952]


def test_quick_replies_become_buttons_and_unrated_replies_get_none() -> None:
    [piece] = render_reply(_reply("Which one?", quick_replies=("Track my order", "Refunds")))
    rows = piece["reply_markup"].inline_keyboard
    assert [[(b.text, b.callback_data) for b in row] for row in rows] == [
        [("Track my order", "qr:0")],
        [("Refunds", "qr:1")],
    ]
    [plain] = render_reply(_reply("An agent will answer.", role=Role.AGENT))
    assert "reply_markup" not in plain


def test_updates_are_parsed_into_our_own_types() -> None:
    fake = FakeTelegramApi()
    update = Update.de_json(fake.message_update(777, "hi <there>", message_id=9), None)
    message = parse_update(update)
    assert message is not None
    assert (message.channel, message.sender, message.text) == ("telegram", "777", "hi <there>")
    assert message.client_id == "777:9" and message.sender_name == "Ana"
    sent = {
        "message_id": 5001,
        "chat": {"id": 777, "type": "private"},
        "date": 0,
        "text": "Which one?",
        "reply_markup": {"inline_keyboard": [[{"text": "Refunds", "callback_data": "qr:0"}]]},
    }
    press = Update.de_json(fake.callback_update(777, "qr:0", sent, user_id=5), None)
    query = press.callback_query
    assert isinstance(query, CallbackQuery)
    chosen = parse_quick_reply(query)
    assert chosen is not None and chosen.text == "Refunds" and chosen.sender == "777"
    for data in (
        "fb:12:up",
        "fb:x:up",
        "fb:12:meh",
        "nonsense",
        "fb:²:up",
        "fb:0:up",
        f"fb:{2**63}:up",
    ):
        pressed = Update.de_json(fake.callback_update(777, data, sent, user_id=5), None)
        assert pressed.callback_query is not None
        feedback = parse_feedback(pressed.callback_query)
        if data == "fb:12:up":
            assert feedback is not None
            assert (feedback.message_id, feedback.rating, feedback.author) == (
                12,
                "up",
                "telegram:5",
            )
        else:
            assert feedback is None
    assert parse_update(press) is None


# -- polling, end to end ---------------------------------------------------------------------


@pytest.mark.slow
async def test_polling_round_trip_with_typing_and_feedback_buttons(
    client: TestClient[Any, Any], fake: FakeTelegramApi
) -> None:
    await say(fake, 1001, "hello there", first_name="Ana")
    greeting = await next_reply(fake, 1001)
    assert "Ana" in greeting["text"] and greeting["parse_mode"] == "HTML"
    assert buttons(greeting) == []  # small talk: nothing to rate
    await say(fake, 1001, "how long does a refund take to reach my card?")
    reply = await next_reply(fake, 1001)
    [(up, up_data), (down, _)] = buttons(reply)
    assert (up, down) == ("👍", "👎") and up_data.startswith("fb:") and up_data.endswith(":up")
    methods = [(c.method, c.params.get("chat_id")) for c in fake.calls]
    assert methods.index(("sendChatAction", 1001)) < methods.index(("sendMessage", 1001))
    typing = fake.calls_of("sendChatAction")[0].params
    assert typing["action"] == "typing"
    [update_call, *_] = fake.calls_of("getUpdates")
    assert update_call.params["allowed_updates"] == ["message", "callback_query"]


@pytest.mark.slow
async def test_start_and_help(client: TestClient[Any, Any], fake: FakeTelegramApi) -> None:
    await say(fake, 1002, "/start", first_name="Bo<b>")
    welcome = await next_reply(fake, 1002)
    assert "Hi Bo&lt;b&gt;!" in welcome["text"] and "Supportbot" in welcome["text"]
    assert "/human" in welcome["text"]
    await say(fake, 1002, "/help")
    help_text = (await next_reply(fake, 1002))["text"]
    assert "/human" in help_text and "person" in help_text


@pytest.mark.slow
async def test_human_hands_off_then_the_bot_is_silent_and_the_agent_reaches_the_chat(
    client: TestClient[Any, Any], fake: FakeTelegramApi
) -> None:
    runtime = client.app[RUNTIME]
    await say(fake, 1003, "/human")
    handoff = await next_reply(fake, 1003)
    assert "agent" in handoff["text"] and buttons(handoff) == []
    [escalation] = await runtime.store.open_escalations()
    assert escalation.reason == "asked_for_human"
    conversation = await runtime.store.conversation("telegram", "1003")
    assert conversation.status == ConversationStatus.WAITING

    await say(fake, 1003, "hello there")

    async def stored_silently() -> bool:
        transcript = await runtime.store.transcript(conversation.id)
        return transcript[-1].text == "hello there" and transcript[-1].route == Route.AGENT

    await until(stored_silently)
    await asyncio.sleep(0.2)
    # Right after the hand-off message: no echo, and no "typing…" promising a bot answer.
    assert len(fake.sent_to(1003)) == 1
    assert [c for c in fake.calls_of("sendChatAction") if c.params["chat_id"] == 1003] == []

    console, ana = await console_as(client.app, "ana")
    await console.claim(conversation.id, ana)
    joined = fake.sent_to(1003)[-1].params
    assert joined["text"] == "ana joined the conversation." and buttons(joined) == []
    _, delivered = await console.reply(conversation.id, ana, "Hi, Ana here")
    assert delivered
    agent = fake.sent_to(1003)[-1].params
    assert agent["text"] == "Hi, Ana here" and buttons(agent) == []


@pytest.mark.slow
async def test_outside_business_hours_the_chat_hears_when_and_gets_queue_acknowledgements(
    aiohttp_client: ClientFactory, runtime_models: Path, tmp_path: Path, fake: FakeTelegramApi
) -> None:
    # Open one minute a week, so "now" is closed; every waiting message is acknowledged.
    settings = runtime_settings(
        runtime_models,
        f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}",
        telegram={"token": TOKEN, "base_url": fake.base_url},
        handoff={"hours": {"mon": "0:00-0:01"}, "timezone": "UTC", "ack_interval_s": 0},
    )
    app = create_app(settings)
    app[TELEGRAM].poll_timeout_s = 1
    await aiohttp_client(app)
    await say(fake, 1010, "/human")
    handoff = (await next_reply(fake, 1010))["text"]
    assert "Nobody is in right now" in handoff and "at 0:00 UTC" in handoff
    assert "Mon-Sat" not in handoff
    await say(fake, 1010, "my order BC-104522 never arrived")
    ack = (await next_reply(fake, 1010))["text"]
    assert ack.startswith("Got it, it's in the queue")
    assert "at 0:00 UTC" in ack
    conversation = await app[RUNTIME].store.conversation("telegram", "1010")
    assert conversation.status == ConversationStatus.WAITING  # the queue keeps it


@pytest.mark.slow
async def test_a_feedback_press_is_stored_answered_and_the_buttons_removed(
    client: TestClient[Any, Any], fake: FakeTelegramApi
) -> None:
    await say(fake, 1004, "how long does a refund take to reach my card?")
    reply = await next_reply(fake, 1004)
    [(_, up), _] = buttons(reply)
    message_id = int(up.split(":")[1])
    [sent] = [m for m in fake.messages.values() if m["chat"]["id"] == 1004]
    await fake.enqueue(fake.callback_update(1004, up, sent, user_id=4242))

    [answer] = await fake.wait_for("answerCallbackQuery")
    assert answer.params["text"] == THANKS_FOR_FEEDBACK
    [edit] = await fake.wait_for("editMessageReplyMarkup")
    assert edit.params["message_id"] == sent["message_id"] and "reply_markup" not in edit.params
    assert "reply_markup" not in fake.messages[sent["message_id"]]
    [feedback] = await client.app[RUNTIME].store.feedback(message_id)
    assert feedback.rating == "up" and feedback.author == "telegram:4242"

    # Broken or stale buttons are answered with an explanation, and nothing breaks.
    for data in ("fb:999999:down", "fb:oops", "something-else"):
        await fake.enqueue(fake.callback_update(1004, data, sent))
    answers = await fake.wait_for("answerCallbackQuery", count=4)
    assert all(a.params["text"] != THANKS_FOR_FEEDBACK for a in answers[1:])
    assert len(await client.app[RUNTIME].store.feedback(message_id)) == 1
    await say(fake, 1004, "where is my order")
    assert (await next_reply(fake, 1004))["text"]


@pytest.mark.slow
async def test_a_chat_can_rate_only_answers_in_its_own_conversation(
    client: TestClient[Any, Any], fake: FakeTelegramApi
) -> None:
    store = client.app[RUNTIME].store
    # The victim's chat gets a rateable answer.
    await say(fake, 1006, "how long does a refund take to reach my card?")
    [(_, victims_up), _] = buttons(await next_reply(fake, 1006))
    victims_answer = int(victims_up.split(":")[1])
    await say(fake, 1007, "/human")  # the other chat has a conversation, and a bot message
    handoff = await next_reply(fake, 1007)
    [own] = [m for m in fake.messages.values() if m["chat"]["id"] == 1007]
    conversation = await store.conversation("telegram", "1007")
    [_, not_rateable] = await store.transcript(conversation.id)
    assert handoff["text"] == not_rateable.text

    # Callback data comes from the client: a forged press names someone else's answer, or a
    # message of its own chat that has no rating buttons; a chat never seen sends one too.
    forged = [
        (1007, f"fb:{victims_answer}:down", own),
        (1007, f"fb:{not_rateable.id}:up", own),
        (1008, f"fb:{victims_answer}:down", {**own, "chat": {"id": 1008, "type": "private"}}),
        (1007, f"fb:{victims_answer}:down", None),  # no message: no chat to speak for
        (1007, "fb:²:down", own),
        (1007, f"fb:{2**63}:down", own),
    ]
    for chat, data, message in forged:
        await fake.enqueue(fake.callback_update(chat, data, message))
    answers = await fake.wait_for("answerCallbackQuery", count=len(forged))
    assert all(a.params["text"] and a.params["text"] != THANKS_FOR_FEEDBACK for a in answers)
    assert "not saved" in answers[0].params["text"]
    assert await store.feedback(victims_answer) == []
    assert await store.feedback(not_rateable.id) == []
    assert not fake.calls_of("editMessageReplyMarkup")
    # The victim's own press still counts.
    [victims] = [m for m in fake.messages.values() if m["chat"]["id"] == 1006]
    await fake.enqueue(fake.callback_update(1006, victims_up, victims))
    await fake.wait_for("answerCallbackQuery", count=len(forged) + 1)
    assert fake.calls_of("answerCallbackQuery")[-1].params["text"] == THANKS_FOR_FEEDBACK
    [stored] = await store.feedback(victims_answer)
    assert stored.rating == "up" and stored.author == "telegram:1006"


@pytest.mark.slow
async def test_a_redelivered_update_is_not_answered_twice(
    client: TestClient[Any, Any], fake: FakeTelegramApi
) -> None:
    first = await say(fake, 1005, "hello there", message_id=77)
    await next_reply(fake, 1005)
    await fake.enqueue(first)  # Telegram delivers the same message again
    await say(fake, 1005, "where is my order", message_id=78)
    await fake.wait_for_message(1005, count=2)
    await asyncio.sleep(0.2)
    assert len(fake.sent_to(1005)) == 2
    runtime = client.app[RUNTIME]
    conversation = await runtime.store.conversation("telegram", "1005")
    transcript = await runtime.store.transcript(conversation.id)
    assert [m.role for m in transcript] == ["customer", "bot", "customer", "bot"]
    assert transcript[0].client_id == "1005:77"


# -- sending failures ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own
async def test_429_is_honoured_then_the_agent_reply_is_delivered_once(
    client: TestClient[Any, Any], fake: FakeTelegramApi, sleeps: RecordedSleeps
) -> None:
    await say(fake, 2001, "/human")
    await next_reply(fake, 2001)
    runtime = client.app[RUNTIME]
    conversation = await runtime.store.conversation("telegram", "2001")
    fake.fail("sendMessage", times=1, status=429, retry_after=3)
    fake.fail("sendMessage", times=1, status=502)
    console, ana = await console_as(client.app, "ana")
    await console.claim(conversation.id, ana)
    _, taken = await console.reply(conversation.id, ana, "Sorry for the wait")
    assert taken
    delivered = [c for c in fake.sent_to(2001) if c.params["text"] == "Sorry for the wait"]
    assert len(delivered) == 1
    attempts = [c for c in fake.calls_of("sendMessage", ok_only=False) if not c.ok]
    assert [c.status for c in attempts] == [429, 502]
    assert sleeps.delays == [3.0, 0.02]  # retry_after, then the second backoff step


@pytest.mark.slow
async def test_persistent_5xx_raises_delivery_error(
    client: TestClient[Any, Any], fake: FakeTelegramApi, sleeps: RecordedSleeps
) -> None:
    connector = client.app[TELEGRAM]
    now = datetime.now(UTC)
    conversation = Conversation("c-5xx", "telegram", "2002", ConversationStatus.CLAIMED, now, now)
    fake.fail("sendMessage", times=4, status=500)
    reply = Reply("c-5xx", 1, Role.AGENT, "are you there?")
    with pytest.raises(DeliveryError, match="failed 4 times.*Internal Server Error"):
        await connector.deliver(conversation, reply)
    assert len(fake.calls_of("sendMessage", ok_only=False)) == 4
    assert sleeps.delays == [0.01, 0.02, 0.04]
    blocked = "Forbidden: bot was blocked by the user"
    fake.fail("sendMessage", times=1, status=403, description=blocked)
    with pytest.raises(DeliveryError, match="blocked by the user"):
        await connector.deliver(conversation, reply)
    assert len(fake.calls_of("sendMessage", ok_only=False)) == 4 + 1  # a 403 is not retried
    not_a_chat = Conversation("c-web", "telegram", "widget-abc", ConversationStatus.BOT, now, now)
    with pytest.raises(DeliveryError, match="not a Telegram chat id"):
        await connector.deliver(not_a_chat, reply)


@pytest.mark.slow
async def test_a_failing_update_is_logged_and_polling_goes_on(
    client: TestClient[Any, Any], fake: FakeTelegramApi, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail("sendMessage", times=4, status=500)
    with caplog.at_level(logging.ERROR, logger="connectors.telegram"):
        await say(fake, 2003, "hello there")
        await say(fake, 2003, "where is my order")
        reply = await next_reply(fake, 2003)
    assert reply["text"]
    [failure] = [r for r in caplog.records if "handling Telegram update" in r.getMessage()]
    assert failure.exc_info is not None and failure.exc_info[0] is DeliveryError


# -- webhook mode and misconfiguration -------------------------------------------------------


@pytest.mark.slow
async def test_webhook_mode_registers_checks_the_secret_and_answers(
    aiohttp_client: ClientFactory, make_app: Callable[..., web.Application], fake: FakeTelegramApi
) -> None:
    app = make_app(mode="webhook", webhook_url=WEBHOOK_URL, secret_token=SECRET)
    client = await aiohttp_client(app)
    [registered] = fake.calls_of("setWebhook")
    assert registered.params["url"] == WEBHOOK_URL
    assert registered.params["secret_token"] == SECRET
    assert fake.calls_of("getWebhookInfo") and not fake.calls_of("getUpdates")

    wrong = await client.post(
        WEBHOOK_PATH, json=fake.message_update(3001, "hello there"), headers={SECRET_HEADER: "x"}
    )
    missing = await client.post(WEBHOOK_PATH, json=fake.message_update(3002, "hello there"))
    assert (wrong.status, missing.status) == (401, 401)
    right = await client.post(
        WEBHOOK_PATH,
        json=fake.message_update(3003, "how long does a refund take to reach my card?"),
        headers={SECRET_HEADER: SECRET},
    )
    assert right.status == 200
    # Answered before the 200 (a replica that dies mid-update makes Telegram send it again).
    [sent] = fake.sent_to(3003)
    reply = sent.params
    assert reply["text"] and buttons(reply)
    # Updates are processed in order, so the rejected ones would have been answered first.
    assert fake.sent_to(3001) == [] and fake.sent_to(3002) == []
    headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
    for body in (b"{nope", b'{"message": "x"}', b'{"update_id": 9, "message": "x"}'):
        bad = await client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert bad.status == 400, body


@pytest.mark.slow
async def test_webhook_misconfiguration_is_refused_with_a_clear_message(
    runtime_models: Path, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    async with FakeTelegramApi(reported_webhook_url="https://elsewhere.example/hook") as fake:
        settings = settings_for(runtime_models, db_url, fake, mode="webhook")
        runtime = create_app(settings)[RUNTIME]
        connector = TelegramConnector(runtime.service, settings.telegram, runtime.dispatcher)
        with pytest.raises(ConfigurationError, match="SUPPORTBOT_TELEGRAM__WEBHOOK_URL"):
            await connector.start()
        settings = settings_for(
            runtime_models, db_url, fake, mode="webhook", webhook_url=WEBHOOK_URL
        )
        connector = TelegramConnector(runtime.service, settings.telegram, runtime.dispatcher)
        with pytest.raises(ConfigurationError, match="elsewhere.example/hook"):
            await connector.start()
        assert "telegram" not in runtime.dispatcher.channels()


@pytest.mark.slow
async def test_polling_while_a_webhook_is_active_is_refused_then_reported(
    runtime_models: Path, tmp_path: Path, fake: FakeTelegramApi, caplog: pytest.LogCaptureFixture
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    settings = settings_for(runtime_models, db_url, fake)
    runtime = create_app(settings)[RUNTIME]
    connector = TelegramConnector(
        runtime.service, settings.telegram, runtime.dispatcher, poll_timeout_s=1
    )
    await fake.set_webhook_elsewhere(WEBHOOK_URL)
    with pytest.raises(ConfigurationError, match="deleteWebhook") as refused:
        await connector.start()
    assert "SUPPORTBOT_TELEGRAM__MODE=webhook" in str(refused.value)
    assert fake.webhook_url == WEBHOOK_URL  # not silently deleted

    # Started cleanly, then someone sets a webhook: the conflict is reported, not swallowed.
    await fake.set_webhook_elsewhere("")
    await connector.start()
    try:
        with caplog.at_level(logging.ERROR, logger="connectors.telegram"):
            await fake.set_webhook_elsewhere(WEBHOOK_URL)
            await until(_async(lambda: isinstance(connector.polling_error, Conflict)))
        [record] = [r for r in caplog.records if "Telegram refused getUpdates" in r.getMessage()]
        assert "deleteWebhook" in record.getMessage()
        assert "SUPPORTBOT_TELEGRAM__MODE=webhook" in record.getMessage()
    finally:
        await connector.stop()


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


# -- secrets ---------------------------------------------------------------------------------

# Shaped like a real token (the bot's id, a colon, 35 characters), unlike the fake's default.
REAL_TOKEN = "7012345678:AAF3kq9Zx_TqLw8vN2pR5sYb-0cHdJeMiUo"


@pytest.fixture(params=[logging.DEBUG, logging.INFO], ids=["debug", "info"])
def logged(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The app's own logging set-up (`serve` calls configure_logging) at DEBUG or INFO; what
    it writes goes to the buffer yielded.

    Set up before the test runs, so pytest's capture handler (caplog) comes after the
    configured one on the root logger, as any handler added later would.
    """
    root, buffer = logging.getLogger(), io.StringIO()
    before = root.level
    handler = configure_logging("text", "replica-1", request.param, stream=buffer)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(before)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own
async def test_the_bot_token_never_reaches_the_logs(
    logged: io.StringIO,
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.getLogger().level)
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    async with FakeTelegramApi(token=REAL_TOKEN) as fake:
        telegram = {"token": REAL_TOKEN, "base_url": fake.base_url}
        app = create_app(runtime_settings(runtime_models, db_url, telegram=telegram))
        app[TELEGRAM].retry = RetryPolicy(base_delay_s=0.01, sleep=RecordedSleeps())
        app[TELEGRAM].poll_timeout_s = 1
        fake.fail("getUpdates", times=1, status=502)  # a polling error is logged
        client = await aiohttp_client(app)
        await say(fake, 4001, "how long does a refund take to reach my card?")
        reply = await next_reply(fake, 4001)
        [(_, up), _] = buttons(reply)
        [sent] = [m for m in fake.messages.values() if m["chat"]["id"] == 4001]
        await fake.enqueue(fake.callback_update(4001, up, sent))
        await fake.wait_for("answerCallbackQuery")
        fake.fail("sendMessage", times=1, status=429, retry_after=1)  # a retry is logged
        await say(fake, 4001, "where is my order")
        await next_reply(fake, 4001)
        await client.close()  # stops polling

        # A token Telegram refuses: a clear error, without the token in it or its cause.
        wrong = "7012345678:AAwrongwrongwrongwrongwrongwrong123"
        settings = runtime_settings(
            runtime_models, db_url, telegram={"token": wrong, "base_url": fake.base_url}
        )
        connector = TelegramConnector(
            app[RUNTIME].service, settings.telegram, app[RUNTIME].dispatcher
        )
        with pytest.raises(ConfigurationError, match="rejected the bot token") as refused:
            await connector.start()
        assert wrong not in str(refused.value) and refused.value.__suppress_context__
        logging.getLogger("bot.app.serve").error("start failed", exc_info=refused.value)

    assert fake.calls_of("getUpdates") and fake.calls_of("editMessageReplyMarkup")
    assert len(caplog.records) > 5
    written = logged.getvalue()
    assert "replica-1" in written  # the configured handler wrote these lines
    for token in (REAL_TOKEN, wrong):
        secret = token.split(":")[1]
        for record in caplog.records:
            seen = record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
            assert secret not in seen, (record.name, seen)
        assert secret not in written
    # The HTTP client's one line per request (with the URL) is not logged at any level.
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]

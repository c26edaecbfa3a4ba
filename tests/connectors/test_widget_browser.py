"""The widget in headless Chromium (Debian's, driven by Playwright) against the real app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, WebSocket, expect

from bot.app.factory import RUNTIME, create_app
from bot.core.records import Role
from bot.settings import Settings
from connectors.widget import WIDGET
from tests.helpers import ARTIFACTS, BROWSER_TESTS, console_as, runtime_settings

pytestmark = BROWSER_TESTS

expect.set_options(timeout=20_000)

ServerFactory = Callable[..., Awaitable[TestServer]]
# Answered from the index of the test models: a rateable answer.
REFUND_QUESTION = "how long does a refund take to reach my card?"


def settings_for(models: Path, db_url: str, routing: Path | None = None) -> Settings:
    return runtime_settings(models, db_url, routing={"config": routing})


async def serve(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, routing: Path | None = None
) -> tuple[TestServer, web.Application]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    app = create_app(settings_for(runtime_models, url, routing))
    server = await aiohttp_server(app)
    return server, app


async def session_of(page: Page) -> str:
    session: str = await page.evaluate("localStorage.getItem('supportbot.session')")
    return session


async def transcript(app: web.Application, session: str) -> list[Any]:
    runtime = app[RUNTIME]
    conversation = await runtime.store.conversation("widget", session)
    return list(await runtime.store.transcript(conversation.id))


async def test_chat_reload_reconnect_feedback_and_keyboard(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    # The demo page's Content Security Policy must not block the widget (script, styles, socket).
    page.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    await page.goto(str(server.make_url("/")))
    await expect(page).to_have_title("Brightcart: small kitchen appliances, delivered fast")

    launcher = page.get_by_role("button", name="Chat with us: Brightcart support")
    dialog = page.get_by_role("dialog", name="Brightcart support")
    box = page.get_by_role("textbox", name="Your message")
    log = page.get_by_role("log")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await expect(dialog).to_be_hidden()
    await launcher.click()
    await expect(dialog).to_be_visible()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    await expect(box).to_be_focused()
    await expect(log).to_have_attribute("aria-live", "polite")

    # Chat: the customer's text and the bot's answer.
    await box.fill("hello there")
    await box.press("Enter")
    bot_texts = log.locator(".message.bot .text")
    await expect(bot_texts).to_have_count(1)
    await expect(log.locator(".message.customer .text")).to_have_text(["hello there"])
    session = await session_of(page)
    stored = await transcript(app, session)
    assert [m.role for m in stored] == [Role.CUSTOMER, Role.BOT]
    await expect(bot_texts).to_have_text([stored[1].text])
    await expect(page.locator(".typing")).to_be_hidden()

    # Reload: same session, transcript restored, nothing doubled.
    await page.reload()
    await expect(dialog).to_be_visible()
    await expect(log.locator(".message .text")).to_have_text(["hello there", stored[1].text])
    assert await session_of(page) == session

    # The connection drops; a message typed meanwhile waits in the browser.
    await context.set_offline(True)
    for ws in app[WIDGET].open_sockets(session):
        await ws.close()
    await expect(page.locator(".connection")).to_have_attribute("data-state", "offline")
    await box.fill(REFUND_QUESTION)
    await box.press("Enter")
    await expect(log.locator(".message.customer.pending")).to_have_text([REFUND_QUESTION])
    await asyncio.sleep(1.0)
    assert len(await transcript(app, session)) == 2  # not delivered while offline

    # Back online: delivered, answered, exactly once.
    await context.set_offline(False)
    await expect(bot_texts).to_have_count(2)
    await expect(log.locator(".message.customer.pending")).to_have_count(0)
    await asyncio.sleep(1.0)
    stored = await transcript(app, session)
    customer = [m.text for m in stored if m.role == Role.CUSTOMER]
    assert customer == ["hello there", REFUND_QUESTION]
    assert len(stored) == 4
    await expect(log.locator(".message.customer .text")).to_have_text(
        ["hello there", REFUND_QUESTION]
    )
    await expect(bot_texts).to_have_text([stored[1].text, stored[3].text])

    # Thumbs only under answers: none under the greeting, a pair under the refund answer.
    answers = log.locator(".message.bot")
    await expect(answers.first.get_by_role("button")).to_have_count(0)
    rated = answers.last
    rated_id = int(await rated.get_attribute("data-message-id") or 0)
    assert rated_id == stored[3].id and stored[3].route == "answer"
    not_helpful = rated.get_by_role("button", name="Not helpful")
    await not_helpful.click()
    await expect(rated.get_by_text("Thanks for your feedback!")).to_be_visible()
    await expect(not_helpful).to_be_disabled()
    await expect(rated.get_by_role("button", name="Helpful", exact=True)).to_be_disabled()
    [feedback] = await app[RUNTIME].store.feedback(rated_id)
    assert feedback.rating == "down" and feedback.author == f"widget:{session}"
    # Focus stays in the panel after rating (it fell to <body> once), so Escape still works.
    await expect(box).to_be_focused()

    # Keyboard: Escape closes and gives focus back to the launcher; Enter opens again.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(launcher).to_be_focused()
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_visible()
    await expect(box).to_be_focused()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "widget.png"))
    assert problems == []
    await context.close()


async def test_quick_replies_handoff_banner_and_agent_reply(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    routing = tmp_path / "routing.yml"
    routing.write_text(
        """
default: answer
intents:
  greeting:
    response: "Hi {name}! Ask me anything, or pick one:"
    quick_replies: ["Where is my order?", "I want to talk to a human"]
  talk_to_human:
    handoff: true
messages:
  rephrase: "Could you rephrase that?"
  handoff: "I'm handing you to one of our agents."
  waiting: "An agent has your conversation."
  error: "Sorry, something went wrong."
"""
    )
    server, app = await serve(aiohttp_server, runtime_models, tmp_path, routing)
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    await page.goto(str(server.make_url("/")))
    await page.get_by_role("button", name="Chat with us: Brightcart support").click()
    box = page.get_by_role("textbox", name="Your message")
    await box.fill("hello there")
    await box.press("Enter")

    choices = page.get_by_role("group", name="Suggested replies")
    await expect(choices.get_by_role("button")).to_have_text(
        ["Where is my order?", "I want to talk to a human"]
    )
    banner = page.locator(".banner")
    await expect(banner).to_be_hidden()
    await choices.get_by_role("button", name="I want to talk to a human").click()
    await expect(choices).to_have_count(0)
    await expect(page.locator(".message.bot .text").last).to_have_text(
        "I'm handing you to one of our agents."
    )
    # Honest: waiting, not "connected", until an agent claims the conversation.
    await expect(banner).to_be_visible()
    await expect(banner.locator("strong")).to_have_text("Waiting for an agent")
    # A hand-off message is no answer to rate.
    await expect(page.locator(".message.bot").last.get_by_role("button")).to_have_count(0)

    runtime = app[RUNTIME]
    conversation = await runtime.store.conversation("widget", await session_of(page))
    console, ana = await console_as(app, "agent-ana")
    await console.claim(conversation.id, ana)
    await expect(banner.locator("strong")).to_have_text("agent-ana joined")
    await expect(page.locator(".message.system .text").last).to_have_text(
        "agent-ana joined the conversation."
    )
    await console.reply(conversation.id, ana, "Hi, I'm Ana. Let me look.")
    agent = page.locator(".message.agent")
    await expect(agent.locator(".text")).to_have_text(["Hi, I'm Ana. Let me look."])
    await expect(agent.locator(".author")).to_have_text("Agent")
    await expect(banner).to_be_visible()

    # Text is text, both ways: markup is shown as typed, never interpreted.
    markup = "<img src=x onerror=alert(1)> <b>bold</b>"
    await box.fill(markup)
    await box.press("Enter")
    await expect(page.locator(".message.customer.pending")).to_have_count(0)
    await expect(page.locator(".message.customer .text").last).to_have_text(markup)
    await console.reply(conversation.id, ana, "<i>not italic</i>")
    await expect(agent.locator(".text").last).to_have_text("<i>not italic</i>")
    assert await page.get_by_role("log").locator("img, b, i").count() == 0

    # While the panel is closed, an agent reply shows as unread on the launcher.
    await page.keyboard.press("Escape")
    await console.reply(conversation.id, ana, "Found it: it ships today.")
    await expect(page.locator(".badge")).to_have_text("1")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.get_by_role("button", name="Chat with us: Brightcart support").click()
    await expect(page.locator(".badge")).to_be_hidden()
    await expect(agent).to_have_count(3)
    await page.screenshot(path=str(ARTIFACTS / "widget-agent.png"))
    await context.close()


async def test_the_embed_snippet_works_on_another_site(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    # A shop on another origin (another port) embeds the widget with the README's snippet.
    snippet: list[str] = []

    async def shop_page(request: web.Request) -> web.Response:
        body = f"<!doctype html><title>Shop</title>{snippet[0]}<h1>A shop</h1>"
        return web.Response(text=body, content_type="text/html")

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)  # no 404 in the console log

    shop_app = web.Application()
    shop_app.router.add_get("/", shop_page)
    shop_app.router.add_get("/favicon.ico", no_icon)
    shop = await aiohttp_server(shop_app)
    shop_origin = str(shop.make_url("/").origin())
    url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    settings = runtime_settings(runtime_models, url, widget={"allowed_origins": [shop_origin]})
    server = await aiohttp_server(create_app(settings))
    snippet.append(
        f'<script src="{server.make_url("/widget.js")}" data-title="Shop help" '
        'data-color="#7a3cff" defer></script>'
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    await page.goto(str(shop.make_url("/")))
    assert shop_origin != str(server.make_url("/").origin())

    await page.get_by_role("button", name="Chat with us: Shop help").click()
    box = page.get_by_role("textbox", name="Your message")
    await box.fill("hello there")
    await box.press("Enter")
    await expect(page.locator(".message.bot .text")).to_have_count(1)
    await expect(page.locator(".connection")).to_have_attribute("data-state", "online")
    # The shared helpers the server pasted in stay inside the widget's closure.
    shared = "['el', 'svg', '$', 'Backoff', 'readStorage', 'writeStorage', 'offlineText']"
    assert await page.evaluate(f"{shared}.filter((n) => n in window)") == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "widget-embedded.png"))
    assert problems == []
    await context.close()


async def test_phone_handoff_waiting_acknowledged_claimed(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    """At phone size (390x844): the panel fills the screen with no horizontal overflow and
    no launcher over Send; the hand-off says "waiting" until a claim, a message meanwhile is
    acknowledged, the claim says who joined; no favicon 404."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    settings = runtime_settings(runtime_models, url, handoff={"ack_interval_s": 0})
    app = create_app(settings)
    server = await aiohttp_server(app)
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await page.goto(str(server.make_url("/")))
    launcher = page.get_by_role("button", name="Chat with us: Brightcart support")
    await launcher.tap()
    dialog = page.get_by_role("dialog", name="Brightcart support")
    await expect(dialog).to_be_visible()
    # Full screen, nothing sticking out sideways, and the launcher hidden (not over Send).
    await expect(launcher).to_be_hidden()
    box = await dialog.bounding_box()
    assert box is not None and (box["x"], box["width"]) == (0, 390)
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]"
    )
    assert max(widths) <= 390, widths
    send = page.get_by_role("button", name="Send")
    text = page.get_by_role("textbox", name="Your message")
    await text.fill("I want to talk to a human")
    await send.tap()
    banner = page.locator(".banner")
    await expect(banner.locator("strong")).to_have_text("Waiting for an agent")
    await text.fill("My order BC-104522 never arrived")
    await send.tap()
    system = page.locator(".message.system .text")
    await expect(system).to_have_text(["Got it, it's in the queue: an agent will see it."])
    await expect(page.locator(".typing")).to_be_hidden()

    runtime = app[RUNTIME]
    conversation = await runtime.store.conversation("widget", await session_of(page))
    console, ana = await console_as(app, "Ana")
    await console.claim(conversation.id, ana)
    await expect(banner.locator("strong")).to_have_text("Ana joined")
    await expect(system.last).to_have_text("Ana joined the conversation.")
    await console.reply(conversation.id, ana, "Hi, I'm Ana. I'm checking BC-104522 now.")
    await expect(page.locator(".message.agent .text")).to_have_count(1)
    assert max(await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")) <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "widget-phone.png"))
    # Escape (a hardware keyboard) still closes, and the launcher comes back.
    await text.focus()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(launcher).to_be_visible()
    # The demo page asked for its icon and got it.
    icon = await page.request.get(str(server.make_url("/favicon.ico")))
    assert icon.status == 200
    assert missing == [] and problems == []
    await context.close()


async def test_the_console_page_has_an_icon(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, _ = await serve(aiohttp_server, runtime_models, tmp_path)
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await page.goto(str(server.make_url("/console")))
    icon = await page.request.get(str(server.make_url("/favicon.ico")))
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert missing == []
    await context.close()


# Half an emoji: a lone surrogate, which JavaScript strings can hold and the server refuses.
BROKEN_TEXT = "'broken ' + String.fromCharCode(0xd83d)"


async def chat_started(page: Page, server: TestServer) -> None:
    """Open the demo page's chat, say hello and wait for the bot's answer."""
    await page.goto(str(server.make_url("/")))
    await page.get_by_role("button", name="Chat with us: Brightcart support").click()
    box = page.get_by_role("textbox", name="Your message")
    await box.fill("hello there")
    await box.press("Enter")
    await expect(page.locator(".message.bot")).to_have_count(1)


async def type_broken_text(page: Page) -> None:
    box = page.get_by_role("textbox", name="Your message")
    await box.evaluate(f"(box) => {{ box.value = {BROKEN_TEXT}; }}")
    await box.press("Enter")


async def test_a_refused_message_is_shown_as_not_sent_never_resent_and_later_ones_go_through(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    urls: list[str] = []
    sent: list[str] = []

    def watch(socket: WebSocket) -> None:
        urls.append(socket.url)
        socket.on("framesent", lambda payload: sent.append(str(payload)))

    page.on("websocket", watch)
    await chat_started(page, server)
    box = page.get_by_role("textbox", name="Your message")
    log = page.get_by_role("log")
    bot_texts = log.locator(".message.bot .text")

    # The session id is in the socket's first frame, not in its URL.
    session = await session_of(page)
    assert urls == [str(server.make_url("/ws")).replace("http:", "ws:")]
    assert json.loads(sent[0]) == {"type": "hello", "session": session}
    assert all(session not in url for url in urls)

    # Refused for good: marked as not sent, its text back in the box, nothing waiting.
    await type_broken_text(page)
    failed = log.locator(".message.customer.failed")
    await expect(failed).to_have_count(1)
    await expect(failed.locator(".error")).to_contain_text("Not sent")
    await expect(failed.locator(".error")).to_contain_text("lone surrogate")
    assert await box.evaluate(f"(box) => box.value === {BROKEN_TEXT}")
    await expect(log.locator(".message.customer.pending")).to_have_count(0)
    await expect(page.locator(".typing")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "widget-phone-not-sent.png"))

    # The next message goes through, on the same socket.
    await box.fill("where is my order")
    await box.press("Enter")
    await expect(bot_texts).to_have_count(2)
    assert len(urls) == 1

    # Queued while offline: the refused one is dropped, the one after it is delivered, and
    # the widget does not reconnect over and over to resend it.
    await context.set_offline(True)
    for ws in app[WIDGET].open_sockets(session):
        await ws.close()
    await expect(page.locator(".connection")).to_have_attribute("data-state", "offline")
    await type_broken_text(page)
    await box.fill("i want a refund")
    await box.press("Enter")
    await expect(log.locator(".message.customer.pending")).to_have_count(2)
    await context.set_offline(False)
    await expect(bot_texts).to_have_count(3)
    await expect(log.locator(".message.customer.failed")).to_have_count(1)
    await expect(log.locator(".message.customer.pending")).to_have_count(0)
    opened = len(urls)  # attempts while offline included
    await asyncio.sleep(3.0)  # longer than the widget's retry delay and first backoff step
    assert len(urls) == opened
    assert sum(json.loads(frame)["type"] == "hello" for frame in sent) == 2
    refused = [f for f in sent if "broken" in f]
    assert len(refused) == 2  # each refused message was sent once, never again
    stored = await transcript(app, session)
    assert [m.text for m in stored if m.role == Role.CUSTOMER] == [
        "hello there",
        "where is my order",
        "i want a refund",
    ]
    assert problems == []
    await context.close()


async def test_a_message_the_store_could_not_take_is_kept_and_sent_again(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    await chat_started(page, server)
    box = page.get_by_role("textbox", name="Your message")
    log = page.get_by_role("log")
    session = await session_of(page)

    store = app[RUNTIME].store
    await store.stop()  # the database is gone: messages get `retry: true` errors
    try:
        await box.fill("where is my order")
        await box.press("Enter")
        await asyncio.sleep(2.5)  # refused at least once, retried once
        pending = log.locator(".message.customer.pending")
        await expect(pending).to_have_text(["where is my order"])
        await expect(log.locator(".message.customer.failed")).to_have_count(0)
    finally:
        await store.start()
    await expect(log.locator(".message.bot")).to_have_count(2)
    await expect(log.locator(".message.customer.pending")).to_have_count(0)
    stored = await transcript(app, session)
    assert [m.text for m in stored if m.role == Role.CUSTOMER] == [
        "hello there",
        "where is my order",
    ]
    await context.close()

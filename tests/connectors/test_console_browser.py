"""The agent console in headless Chromium (Debian's, driven by Playwright) against the real app.

The app is the real one (`create_app`, real models from `runtime_models`, SQLite) on a real
port; customers use the real widget in a second browser context, or Telegram through the fake
Bot API (`tests/fakes/telegram_api.py`). Accounts are created through the accounts store, as
`supportbot agents add` does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    expect,
)
from yarl import URL

from bot.app.factory import RUNTIME, create_app
from bot.core.records import Agent, ConversationStatus, Escalation, Role
from bot.store.accounts import SqlAccountStore
from connectors.console import ASSETS, CONSOLE, PAGE_HEADERS, SIGN_IN_PAGE
from connectors.static_files import read_static
from connectors.telegram import TELEGRAM
from tests.fakes.telegram_api import TOKEN, FakeTelegramApi
from tests.helpers import ARTIFACTS, BROWSER_TESTS, runtime_settings

PASSWORD = "correct horse battery"
ANGRY = "absolutely terrible, i am furious"
VIEWPORT = {"width": 1400, "height": 900}
# Counts the console's notification beeps: wraps the real Web Audio call, plays nothing less.
COUNT_BEEPS = """
window.__beeps = 0;
const createOscillator = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () {
  window.__beeps += 1;
  return createOscillator.call(this);
};
"""

pytestmark = BROWSER_TESTS

expect.set_options(timeout=20_000)

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramApi]:
    async with FakeTelegramApi() as api:
        yield api


async def serve(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, **sections: Any
) -> tuple[TestServer, web.Application]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    app = create_app(runtime_settings(runtime_models, url, **sections))
    if TELEGRAM in app:
        app[TELEGRAM].poll_timeout_s = 1
    server = await aiohttp_server(app)
    return server, app


async def add_account(app: web.Application, name: str, role: str) -> Agent:
    runtime = app[RUNTIME]
    return await SqlAccountStore(runtime.store, runtime.settings.console).add(name, role, PASSWORD)


async def console_page(browser: Browser, problems: list[str]) -> tuple[BrowserContext, Page]:
    """A page in a new browser context; its script errors and every Content Security Policy
    violation (Chromium reports them as console errors) land in `problems`."""
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    await context.add_init_script(COUNT_BEEPS)
    page = await context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))

    def refused(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", refused)
    return context, page


async def sign_in(page: Page, server: TestServer, name: str, password: str = PASSWORD) -> None:
    """Open the console unsigned, get sent to the sign-in page, sign in, land in the console."""
    await page.goto(str(server.make_url("/console")))
    await expect(page).to_have_url(re.compile(r"/console/sign-in\?next=(/|%2F)console$"))
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(str(server.make_url("/console")))
    await expect(page.locator("#agent-name")).to_have_text(name)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "online")


async def api_get(page: Page, server: TestServer, path: str) -> Any:
    """GET a console API path with the page's session cookie."""
    response = await page.request.get(str(server.make_url(f"/console/api/{path}")))
    assert response.ok, f"{path}: {response.status} {await response.text()}"
    return await response.json()


async def settle(page: Page, quiet_s: float = 0.5) -> None:
    """Wait until the page has sent no API request for `quiet_s`: the refetches that earlier
    events caused are over, so a later change in the store is news to it."""
    busy = True

    def saw(request: Request) -> None:
        nonlocal busy
        busy = busy or "/console/api/" in request.url

    page.on("request", saw)
    try:
        while busy:
            busy = False
            await asyncio.sleep(quiet_s)
    finally:
        page.remove_listener("request", saw)


def screenshot(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def test_a_widget_customer_goes_to_an_agent_and_back_to_the_bot(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    runtime = app[RUNTIME]
    await add_account(app, "ana", "agent")
    problems: list[str] = []

    # The agent signs in and waits with an empty queue.
    agent_context, agent = await console_page(browser, problems)
    await sign_in(agent, server, "ana")
    await expect(agent.get_by_role("tab", name="Dashboard")).to_be_hidden()
    queue = agent.get_by_role("list", name="Queue")
    items = queue.locator(".queue-item")
    await expect(items).to_have_count(0)
    await expect(agent.get_by_text("No one is waiting.")).to_be_visible()
    await expect(agent.locator("#queue-count")).to_have_attribute("aria-live", "polite")
    await expect(agent).to_have_title("supportbot console")

    # A customer in the widget writes something angry: the bot hands over.
    customer_context = await browser.new_context(viewport={"width": 1100, "height": 820})
    customer = await customer_context.new_page()
    customer.on("pageerror", lambda error: problems.append(str(error)))
    await customer.goto(str(server.make_url("/")))
    await customer.get_by_role("button", name="Chat with us: Brightcart support").click()
    box = customer.get_by_role("textbox", name="Your message")
    await box.fill(ANGRY)
    await box.press("Enter")
    banner = customer.locator(".banner")
    await expect(banner).to_be_visible()
    await expect(banner.locator("strong")).to_have_text("Waiting for an agent")  # not claimed yet
    await expect(customer.locator(".message.bot .text").last).to_contain_text("support agents")
    session = await customer.evaluate("localStorage.getItem('supportbot.session')")
    conversation = await runtime.store.conversation("widget", session)
    [escalation] = await runtime.store.open_escalations()
    assert escalation.conversation_id == conversation.id

    # It appears in the agent's queue live, without a reload, with a badge and a beep.
    await expect(items).to_have_count(1)
    item = items.first
    await expect(item).to_contain_text("Web chat")
    await expect(item).to_contain_text(ANGRY)
    await expect(item).to_contain_text("Unassigned")
    await expect(item).to_contain_text(re.compile(r"waiting \d+ s"))
    await expect(item).to_have_class(re.compile(r"\bnew\b"))
    await expect(agent).to_have_title("(1) supportbot console")
    assert await agent.evaluate("window.__beeps") >= 1
    reason_label = {
        "negative_message": "Negative message",
        "negative_trend": "Negative trend",
        "asked_for_human": "Asked for a person",
    }[escalation.reason]
    await expect(item).to_contain_text(reason_label)
    await agent.screenshot(path=screenshot("console-queue.png"))

    # The agent opens it: the reason, the explanation, the scores and the transcript.
    await item.click()
    await expect(agent).to_have_title("supportbot console")
    await expect(item).to_have_attribute("aria-current", "true")
    details = agent.get_by_role("complementary", name="Details")
    await expect(details.locator(".reason-badge")).to_have_text(reason_label)
    await expect(details.locator(".explanation")).to_have_text(escalation.explanation)
    await expect(details).to_contain_text("negativity")
    await expect(details.locator(".guess")).not_to_have_count(0)
    transcript = agent.get_by_role("log", name="Transcript")
    said = transcript.locator("article.msg.customer")
    await expect(said.locator(".text")).to_have_text([ANGRY])
    await expect(said.first).to_contain_text("negativity")
    await expect(said.first).to_contain_text("route handoff")
    reply = agent.get_by_role("textbox", name="Reply to the customer")
    await expect(reply).to_be_disabled()
    await expect(agent.get_by_text("Claim the conversation to reply.")).to_be_visible()
    await expect(agent.get_by_role("button", name="Resolve", exact=True)).to_be_disabled()

    # Claim, then reply: Shift+Enter is a new line, Enter sends.
    await agent.get_by_role("button", name="Claim", exact=True).click()
    await expect(reply).to_be_enabled()
    await expect(agent.get_by_role("button", name="Claim", exact=True)).to_be_disabled()
    await expect(item).to_contain_text("Claimed by you")
    await reply.click()
    await reply.type("Hi, I'm Ana from Brightcart.")
    await reply.press("Shift+Enter")
    await reply.type("Tell me your order number and I'll fix it.")
    await reply.press("Enter")
    answer = "Hi, I'm Ana from Brightcart.\nTell me your order number and I'll fix it."
    await expect(reply).to_have_value("")
    await expect(transcript.locator("article.msg.agent .text")).to_have_text([answer])

    # The customer sees the reply in the widget.
    agent_said = customer.locator(".message.agent .text")
    await expect(agent_said).to_have_text([answer])
    await expect(banner).to_be_visible()
    await expect(banner.locator("strong")).to_have_text("ana joined")

    # The agent corrects the customer message's intent (a new one) and saves the reply.
    first = said.first
    await first.get_by_role("combobox", name="Correct intent").select_option(label="New intent…")
    await first.get_by_role("textbox", name="New intent name").fill("damaged_item")
    await first.get_by_role("button", name="Save").click()
    await expect(first.locator(".label-state")).to_have_text("Corrected to damaged_item by ana")
    approve = transcript.locator("article.msg.agent").get_by_role(
        "button", name="Save as approved answer"
    )
    await approve.click()
    # The pair is shown before it is saved: the customer's question, not a hand-off request.
    dialog = agent.get_by_role("dialog", name="Save as approved answer")
    await expect(dialog.get_by_label("Answer")).to_have_value(answer)
    await dialog.get_by_role("button", name="Save approved answer").click()
    await expect(transcript.locator("article.msg.agent")).to_contain_text(
        "Saved as an approved answer"
    )
    await agent.screenshot(path=screenshot("console-conversation.png"))

    # The label is stored with the agent's name: in the console API and in the store.
    view = await api_get(agent, server, f"conversations/{conversation.id}")
    [labelled] = [m for m in view["messages"] if m["role"] == "customer"]
    assert labelled["labels"]["intent"] == "damaged_item" and labelled["labels"]["by"] == "ana"
    feedback = await runtime.store.feedback(labelled["id"])
    assert [(f.corrected_intent, f.author) for f in feedback] == [("damaged_item", "ana")]
    assert "damaged_item" in (await api_get(agent, server, "intents"))["intents"]

    # Resolve: the queue empties and the customer is back with the bot.
    await agent.get_by_role("button", name="Resolve", exact=True).click()
    await expect(items).to_have_count(0)
    await expect(reply).to_be_disabled()
    await expect(agent.get_by_role("button", name="Resolve", exact=True)).to_be_disabled()
    await expect(banner).to_be_hidden()
    assert (await runtime.store.get_conversation(conversation.id)).status == ConversationStatus.BOT

    bot_said = customer.locator(".message.bot .text")
    answered = await bot_said.count()
    await box.fill("where is my order")
    await box.press("Enter")
    await expect(bot_said).to_have_count(answered + 1)
    stored = await runtime.store.transcript(conversation.id)
    assert stored[-1].role == Role.BOT and stored[-2].text == "where is my order"
    await expect(bot_said.last).to_have_text(stored[-1].text)
    await expect(banner).to_be_hidden()
    await customer.screenshot(path=screenshot("console-widget-customer.png"))

    # The agent's open conversation follows live: the new exchange is in the transcript.
    await expect(transcript.locator("article.msg.customer .text").last).to_have_text(
        "where is my order"
    )
    # A narrow window: the details move under the transcript, nothing overlaps.
    await agent.set_viewport_size({"width": 900, "height": 1000})
    await agent.screenshot(path=screenshot("console-narrow.png"))
    assert problems == []
    await customer_context.close()
    await agent_context.close()


async def test_a_telegram_customer_is_answered_from_the_console(
    aiohttp_server: ServerFactory,
    runtime_models: Path,
    tmp_path: Path,
    browser: Browser,
    fake: FakeTelegramApi,
) -> None:
    server, app = await serve(
        aiohttp_server,
        runtime_models,
        tmp_path,
        telegram={"token": TOKEN, "base_url": fake.base_url},
    )
    await add_account(app, "bob", "agent")
    problems: list[str] = []
    context, agent = await console_page(browser, problems)
    await sign_in(agent, server, "bob")

    chat = 4242
    await fake.enqueue(fake.message_update(chat, "/human", first_name="Olga"))
    await fake.wait_for_message(chat)  # the bot says a person will take over
    item = agent.get_by_role("list", name="Queue").locator(".queue-item")
    await expect(item).to_have_count(1)
    await expect(item).to_contain_text("Telegram")
    await expect(item).to_contain_text("Olga")
    await expect(item).to_contain_text("Asked for a person")

    await item.click()
    await expect(agent.locator("#conversation-title")).to_have_text("Olga")
    claim = agent.get_by_role("button", name="Claim", exact=True)
    reply = agent.get_by_role("textbox", name="Reply to the customer")
    error = agent.locator("#conversation-error")

    # A race: a colleague claims it a moment before bob (straight in the store, so bob's page
    # has not heard of it). Bob's click gets 409, shown inline, and the page catches up.
    runtime = app[RUNTIME]
    [escalation] = await runtime.store.open_escalations()
    cid = escalation.conversation_id
    await runtime.store.claim(cid, "eve")
    await claim.click()
    await expect(error).to_contain_text("eve")
    await expect(error).to_contain_text("409")
    await expect(claim).to_be_disabled()
    await expect(reply).to_be_disabled()
    await expect(agent.get_by_text("eve has this conversation")).to_be_visible()
    # Eve releases it through the console: bob's page follows live and he can claim.
    eve = await add_account(app, "eve", "agent")
    await app[CONSOLE].console.release(cid, eve)
    await expect(claim).to_be_enabled()
    await claim.click()
    await expect(reply).to_be_enabled()
    await expect(error).to_be_empty()
    text = "Hello Olga, Bob here. How can I help?"
    await reply.fill(text)
    await reply.press("Enter")
    await expect(reply).to_have_value("")

    [sent] = await fake.wait_for(
        "sendMessage", lambda c: c.params.get("chat_id") == chat and "Bob here" in c.params["text"]
    )
    assert sent.params["text"] == text
    transcript = agent.get_by_role("log", name="Transcript")
    await expect(transcript.locator("article.msg.agent .text")).to_have_text([text])
    await expect(error).to_be_empty()

    # A later customer message reaches the console live.
    await fake.enqueue(fake.message_update(chat, "it's order BC-104522", first_name="Olga"))
    await expect(transcript.locator("article.msg.customer .text").last).to_have_text(
        "it's order BC-104522"
    )
    await agent.screenshot(path=screenshot("console-telegram.png"))

    # An escalation the page was never told about (straight in the store): after a `lagged`
    # event the page reloads everything, and it is there.
    await settle(agent)  # the refetch for Olga's message event could see it otherwise
    zoe = await runtime.store.conversation("rest", "zoe-42", "Zoe")
    await runtime.store.escalate(
        zoe.id, Escalation("negative_trend", 3.5, "The conversation turned negative.", {})
    )
    await asyncio.sleep(0.5)
    await expect(item).to_have_count(1)
    await runtime.bus.publish("console", {"type": "lagged"})
    await expect(item).to_have_count(2)
    await expect(item.first).to_contain_text("Zoe")  # more urgent: first
    await expect(item.first).to_contain_text("REST API")
    await expect(agent).to_have_title("(1) supportbot console")
    # The queue by keyboard: arrows move, Enter opens.
    await item.first.focus()
    await agent.keyboard.press("ArrowDown")
    await expect(item.nth(1)).to_be_focused()
    await agent.keyboard.press("ArrowUp")
    await expect(item.first).to_be_focused()
    await agent.keyboard.press("Enter")
    await expect(agent.locator("#conversation-title")).to_have_text("Zoe")
    await expect(agent).to_have_title("supportbot console")
    assert problems == []
    await context.close()


async def test_sign_in_roles_and_the_operator_dashboard(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(
        aiohttp_server, runtime_models, tmp_path, console={"max_failed_sign_ins": 2}
    )
    await add_account(app, "carl", "agent")
    await add_account(app, "olivia", "operator")

    # Some traffic for the dashboard: answers, a hand-off, feedback both ways.
    async with aiohttp.ClientSession() as http:
        replies = []
        for sender, text in [
            ("u1", "hi"),
            ("u1", "when will my refund arrive"),  # "where is my order" asks for its number
            ("u2", "how long does a refund take"),
            ("u3", "i want to talk to a human"),
        ]:
            async with http.post(
                str(server.make_url("/api/v1/messages")), json={"sender": sender, "text": text}
            ) as response:
                assert response.status == 200, await response.text()
                replies.extend((await response.json())["replies"])
        rateable = [r["message_id"] for r in replies if r["rateable"]]
        assert len(rateable) >= 2
        for message_id, rating in zip(rateable, ["up", "down"], strict=False):
            async with http.post(
                str(server.make_url("/api/v1/feedback")),
                json={"message_id": message_id, "rating": rating},
            ) as response:
                assert response.status == 201, await response.text()

    problems: list[str] = []
    context, page = await console_page(browser, problems)

    # Unsigned: /console sends to the sign-in page; a wrong password is refused.
    await page.goto(str(server.make_url("/console")))
    await expect(page).to_have_url(re.compile(r"/console/sign-in\?next=(/|%2F)console$"))
    await expect(page).to_have_title("Sign in · supportbot console")
    name = page.get_by_label("Name")
    password = page.get_by_label("Password")
    await expect(name).to_be_focused()
    await name.fill("carl")
    await password.fill("not the password")
    await password.press("Enter")
    error = page.get_by_role("alert")
    await expect(error).to_have_text("Wrong name or password.")
    await expect(password).to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=screenshot("console-sign-in.png"))

    # Too many failures for one name: 429, with the wait, even for the right password.
    await name.fill("olivia")
    for attempt in ("guess one", "guess two", PASSWORD):
        await password.fill(attempt)
        await page.get_by_role("button", name="Sign in").click()
        await expect(error).not_to_be_empty()
    await expect(error).to_have_text(re.compile(r"Too many failed sign-ins\. Try again in \d+"))
    await expect(page).to_have_url(re.compile(r"/console/sign-in"))
    await expect(page.get_by_role("button", name="Sign in")).to_be_disabled()

    # An agent: no dashboard tab, and the API refuses the dashboard.
    await name.fill("carl")
    await password.fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(str(server.make_url("/console")))
    await expect(page.locator("#agent-role")).to_have_text("agent")
    await expect(page.get_by_role("tab", name="Queue")).to_be_visible()
    await expect(page.get_by_role("tab", name="Dashboard")).to_be_hidden()
    refused = await page.request.get(str(server.make_url("/console/api/dashboard")))
    assert refused.status == 403
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/console/sign-in"))
    await page.goto(str(server.make_url("/console")))
    await expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    await context.close()

    # An operator (in a fresh browser: the rate limit is per name, olivia waits it out
    # through a new account) sees the dashboard with every chart drawn from the data.
    await add_account(app, "oscar", "operator")
    context, page = await console_page(browser, problems)
    await sign_in(page, server, "oscar")
    tab = page.get_by_role("tab", name="Dashboard")
    await expect(tab).to_be_visible()
    await tab.click()
    await expect(tab).to_have_attribute("aria-selected", "true")
    # Tabs by keyboard: the arrow keys move between them, Home goes to the first.
    await page.keyboard.press("ArrowLeft")
    await expect(page.get_by_role("tab", name="Answer library")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page.get_by_role("tabpanel", name="Dashboard")).to_be_hidden()
    await page.keyboard.press("Home")
    await expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
    await page.keyboard.press("End")
    await expect(tab).to_be_focused()
    await expect(tab).to_have_attribute("aria-selected", "true")
    await expect(page.get_by_role("tabpanel", name="Dashboard")).to_be_visible()
    data = await api_get(page, server, "dashboard?days=7")
    days = data["days"]
    assert len(days) == 7
    assert sum(d["customer_messages"] for d in days) == 4

    def chart(title: str) -> Any:
        return page.locator("figure.chart").filter(
            has=page.locator("figcaption", has_text=re.compile(f"^{title}$"))
        )

    await expect(chart("Messages per day").locator("circle.point")).to_have_count(2 * len(days))
    rated_days = [d for d in days if d["customer_messages"]]  # no messages: a gap
    await expect(chart("Automation rate").locator("circle.point")).to_have_count(len(rated_days))
    reasons = {reason for d in days for reason in d["escalations"]}
    assert reasons == {"asked_for_human"}
    await expect(chart("Escalations by reason").locator("rect.bar")).to_have_count(len(reasons))
    await expect(chart("Escalations by reason")).to_contain_text("Asked for a person")
    await expect(chart("Feedback").locator("rect.bar.up")).to_have_count(len(days))
    await expect(chart("Feedback").locator("rect.bar.down")).to_have_count(len(days))
    assert sum(d["feedback"]["up"] for d in days) == 1
    assert sum(d["feedback"]["down"] for d in days) == 1
    intents = [i for i in data["intents"] if i["mean_confidence"] is not None]
    assert intents
    await expect(chart("Mean confidence per intent").locator("rect.bar")).to_have_count(
        len(intents)
    )
    for figure in await page.locator("figure.chart svg").all():
        assert await figure.get_attribute("role") == "img"
        assert await figure.get_attribute("aria-label")
    await page.screenshot(path=screenshot("console-dashboard.png"), full_page=True)
    assert problems == []
    await context.close()


async def test_the_console_runs_as_native_modules_served_from_a_whitelist(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "mia", "agent")
    problems: list[str] = []
    context, page = await console_page(browser, problems)
    errors: list[str] = []
    scripts: dict[str, tuple[int, str]] = {}

    def console_error(message: ConsoleMessage) -> None:
        # E.g. "Failed to load module script", a refused MIME type (the favicon is no module).
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            errors.append(message.text)

    def script_loaded(response: Response) -> None:
        path = URL(response.url).path
        if path.startswith("/console/static/") and path.endswith(".js"):
            scripts[path.removeprefix("/console/static/")] = (
                response.status,
                response.headers.get("content-type", ""),
            )

    page.on("console", console_error)
    page.on("response", script_loaded)
    await sign_in(page, server, "mia")
    await expect(page.get_by_text("No one is waiting.")).to_be_visible()

    # One module tag; the browser fetched the entry and every module it imports, as JavaScript.
    await expect(page.locator('script[type="module"]')).to_have_count(1)
    await expect(page.locator("script:not([type])")).to_have_count(0)
    modules = {name for name in ASSETS if name.endswith(".js") and name != "console-sign-in.js"}
    loaded = {name: status for name, status in scripts.items() if name in modules}
    assert set(loaded) == modules
    assert set(loaded.values()) == {(200, "text/javascript; charset=utf-8")}
    # Module scope: nothing leaks onto window, and the shared modules can be imported.
    leaked = await page.evaluate(
        "['api', 'el', 'svg', 'Backoff', 'connect'].filter((n) => n in window)"
    )
    assert leaked == []
    built = await page.evaluate(
        """async () => {
            const { el } = await import("/console/static/lib/dom.js");
            return el("b", { class: "x", text: "<i>hi</i>", hidden: false }).outerHTML;
        }"""
    )
    assert built == '<b class="x">&lt;i&gt;hi&lt;/i&gt;</b>'

    # The sound setting goes through lib/storage.js and survives a reload.
    sound = page.get_by_role("button", name=re.compile("^Sound"))
    await expect(sound).to_have_text("Sound on")
    await sound.click()
    await expect(sound).to_have_attribute("aria-pressed", "false")
    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    await expect(sound).to_have_text("Sound off")
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.screenshot(path=screenshot("console-modules.png"))
    assert errors == [] and problems == []
    await context.close()

    # Only whitelisted names are served: a path that climbs out is a 404, however it is spelled
    # (sent as is: the client does not normalise these URLs).
    base = str(server.make_url("/console/static/"))
    async with aiohttp.ClientSession() as http:
        for name in [
            "console/../../console.py",
            "lib/../../../pyproject.toml",
            "..%2F..%2Fpyproject.toml",
            "console%2F..%2F..%2Fconsole.py",
            "%2e%2e/%2e%2e/pyproject.toml",
            "lib//dom.js",
            "console.html",
        ]:
            async with http.get(URL(base + name, encoded=True)) as response:
                assert response.status == 404, name
        async with http.get(URL(base + "lib/dom.js")) as response:
            assert response.status == 200 and response.content_type == "text/javascript"


async def test_signing_in_goes_back_to_a_path_on_this_site_only(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "nia", "agent")
    own = str(server.make_url("")).rstrip("/")
    problems: list[str] = []
    context, page = await console_page(browser, problems)
    elsewhere: list[str] = []

    async def other_site(route: Route) -> None:
        elsewhere.append(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="<p>another site</p>")

    await context.route(lambda url: not url.startswith(own), other_site)
    name, password = page.get_by_label("Name"), page.get_by_label("Password")

    async def sign_in_at(query: str) -> None:
        await page.goto(f"{own}/console/sign-in?{query}")
        await name.fill("nia")
        await password.fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()

    unsafe = [
        "/%09/evil.example/x",
        "/%0a/evil.example/x",
        "/%0d/evil.example/x",
        "//evil.example/x",
        "/%5Cevil.example/x",
        "/%5C/evil.example/x",
        "%5C%5Cevil.example/x",
        "https://evil.example/x",
        "javascript:alert(document.domain)",
    ]
    # The server puts an unsafe `next` right before the page loads.
    for bad in unsafe:
        await page.goto(f"{own}/console/sign-in?next={bad}")
        await expect(page).to_have_url(f"{own}/console/sign-in?next=/console")

    # The page's script checks it too: here it gets the page with `next` as it came.
    async def unchecked(route: Route) -> None:
        headers = {**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"}
        await route.fulfill(status=200, headers=headers, body=read_static(SIGN_IN_PAGE))

    await page.route(re.compile(r"/console/sign-in\?next="), unchecked)
    for bad in unsafe:
        await sign_in_at(f"next={bad}")
        await expect(page).to_have_url(f"{own}/console")
        await expect(page.locator("#agent-name")).to_have_text("nia")
    assert elsewhere == []
    # A path on this site is where it goes.
    await sign_in_at("next=%2Fconsole%23dashboard")
    await expect(page).to_have_url(f"{own}/console#dashboard")
    assert problems == []
    await context.close()

"""The console's essentials in headless Chromium against the real app (real models, SQLite):
per-message sentiment labels and the runtime's annotations, search and history, canned
responses and notes, transfers, shortcuts and notifications, CSAT on the dashboard.

The helpers (serving, accounts, signing in, screenshots) are those of
test_console_browser.py; customers' messages are stored the way the runtime stores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from playwright.async_api import Browser, expect

from bot.app.factory import RUNTIME
from connectors.console import CONSOLE
from tests.connectors.test_console_browser import (
    ServerFactory,
    add_account,
    api_get,
    console_page,
    screenshot,
    serve,
    sign_in,
)
from tests.helpers import BROWSER_TESTS, angry, understanding

pytestmark = BROWSER_TESTS

ORDER_TEXT = "my order bc-104522 never came, I paid €24.50"


async def customer_said(
    app: web.Application,
    sender: str,
    text: str,
    name: str | None = None,
    channel: str = "rest",
    **details: Any,
) -> tuple[str, int]:
    """A customer's message as the runtime stores it (annotated, with `details`), the
    conversation escalated: (conversation id, message id)."""
    store = app[RUNTIME].store
    conversation = await store.conversation(channel, sender, name)
    message, _ = await store.add_customer_message(conversation.id, text)
    await store.annotate(message.id, understanding(), "handoff", 12.0, details=details or None)
    if (await store.get_conversation(conversation.id)).status == "bot":
        await store.escalate(conversation.id, angry())
    # As the service does: open consoles hear of it.
    await app[RUNTIME].bus.publish(
        "console",
        {"type": "escalation.opened", "conversation_id": conversation.id, "channel": channel},
    )
    return conversation.id, message.id


async def test_an_agent_labels_a_message_sentiment_and_sees_entities_and_out_of_scope(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "ana", "agent")
    cid, said = await customer_said(
        app,
        "c1",
        ORDER_TEXT,
        entities=[
            {"type": "order_id", "value": "BC-104522", "text": "bc-104522", "start": 9, "end": 18},
            {"type": "amount", "value": "24.50 EUR", "text": "€24.50", "start": 38, "end": 44},
        ],
    )
    _, weather = await customer_said(
        app, "c1", "what's the weather tomorrow", out_of_scope=True, oos_score=0.91
    )
    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await sign_in(page, server, "ana")
    await page.locator(".queue-item").first.click()
    transcript = page.get_by_role("log", name="Transcript")
    first = transcript.locator(f'article[data-message-id="{said}"]')
    second = transcript.locator(f'article[data-message-id="{weather}"]')
    await expect(first.locator(".chip.entity")).to_have_text(
        ["order id: bc-104522 → BC-104522", "amount: €24.50 → 24.50 EUR"]
    )
    await expect(first.locator(".chip.oos")).to_have_count(0)
    await expect(second.locator(".chip.oos")).to_have_text("out of scope 0.91")
    await expect(second.locator(".chip.entity")).to_have_count(0)

    # The intent list offers out_of_scope; the agent picks it for the weather question.
    await second.get_by_role("combobox", name="Correct intent").select_option("out_of_scope")
    await second.get_by_role("button", name="Save").click()
    await expect(second.locator(".label-state")).to_have_text("Corrected to out_of_scope by ana")

    # The per-message sentiment: pressed, stated, stored as the agent's feedback.
    sentiment = first.get_by_role("group", name="Message sentiment")
    await sentiment.get_by_role("button", name="Negative").click()
    await expect(sentiment.get_by_role("button", name="Negative")).to_have_attribute(
        "aria-pressed", "true"
    )
    await expect(first.locator(".sentiment-label")).to_have_text("Labelled negative by ana")
    view = await api_get(page, server, f"conversations/{cid}")
    [labelled] = [m for m in view["messages"] if m["id"] == said]
    assert labelled["labels"]["sentiment"] == "negative"
    feedback = await app[RUNTIME].store.feedback(said)
    assert [(f.corrected_sentiment, f.author) for f in feedback] == [("negative", "ana")]
    await page.screenshot(path=screenshot("console-message-labels.png"))
    assert problems == []
    await context.close()


async def test_an_agent_searches_old_conversations_and_sees_the_customers_history(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    ana = await add_account(app, "ana", "agent")
    store = app[RUNTIME].store
    # Ada's REST conversation was handed to ana and resolved; she is back on the web chat.
    earlier, _ = await customer_said(app, "ada-1", "my parcel never arrived", "Ada Lovelace")
    await store.claim(earlier, "ana")
    await app[CONSOLE].console.resolve(earlier, ana)
    now, _ = await customer_said(
        app, "ada-web", "parcel 2 is late as well", "Ada Lovelace", channel="widget"
    )
    for i in range(24):
        await customer_said(app, f"r{i}", f"refund {i} missing")

    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await sign_in(page, server, "ana")
    await page.goto(str(server.make_url(f"/console#conversation={now}")))
    await page.reload()  # only the hash changed: load the page with it
    details = page.get_by_role("complementary", name="Details")
    others = details.get_by_role("list", name="Same customer elsewhere")
    await expect(others.locator(".search-hit")).to_have_count(1)
    await expect(others).to_contain_text("REST API")
    await expect(others).to_contain_text("resolved by an agent")
    await page.screenshot(path=screenshot("console-history.png"))
    # Her earlier conversation opens from there, with its closed hand-off listed.
    await others.locator(".search-hit").click()
    await expect(page).to_have_url(f"{server.make_url('/console')}#conversation={earlier}")
    await expect(page.locator("#conversation-sub")).to_contain_text("escalation closed")
    episodes = details.get_by_role("list", name="Earlier hand-offs")
    await expect(episodes.locator("li")).to_have_count(1)
    await expect(episodes).to_contain_text("Negative message, resolved")
    await expect(details.get_by_role("list", name="Same customer elsewhere")).to_contain_text(
        "waiting for an agent"
    )

    # Search: resolved ones included, filtered, paged.
    await page.get_by_role("tab", name="Search").click()
    search = page.get_by_role("search", name="Search conversations")
    await search.get_by_label("Text").fill("PARCEL")
    await search.get_by_role("button", name="Search").click()
    results = page.get_by_role("list", name="Search results").locator(".search-hit")
    await expect(results).to_have_count(2)
    await expect(page.locator("#search-summary")).to_have_text(
        "2 conversations found, most recently active first."
    )
    await search.get_by_label("Status").select_option("resolved")
    await search.get_by_role("button", name="Search").click()
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("Ada Lovelace")
    await expect(results.first).to_contain_text("my parcel never arrived")
    await page.screenshot(path=screenshot("console-search.png"))
    await search.get_by_label("Status").select_option("")
    await search.get_by_label("Text").fill("refund")
    await search.get_by_role("button", name="Search").click()
    await expect(page.locator("#search-page")).to_have_text("Page 1 of 2")
    await expect(results).to_have_count(20)
    await page.get_by_role("button", name="Next").click()
    await expect(page.locator("#search-page")).to_have_text("Page 2 of 2")
    await expect(results).to_have_count(4)
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()
    # A result opens the conversation in the Queue tab.
    await results.first.click()
    await expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#conversation-title")).to_have_text("r3")
    assert problems == []
    await context.close()


async def test_canned_responses_are_managed_and_inserted_and_notes_stay_private(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "ana", "agent")
    cid, _ = await customer_said(
        app,
        "ada-1",
        ORDER_TEXT,
        "Ada Lovelace",
        entities=[{"type": "order_id", "value": "BC-104522", "text": "bc-104522"}],
    )
    problems: list[str] = []
    context, page = await console_page(browser, problems)
    page.on("dialog", lambda dialog: dialog.accept())
    await sign_in(page, server, "ana")

    # The team's library: create two, edit one, delete it.
    await page.get_by_role("tab", name="Canned responses").click()
    form = page.locator("#canned-form")
    library = page.get_by_role("list", name="Canned responses").locator(".canned-item")
    for count, (shortcut, title, text) in enumerate(
        (
            ("late", "Parcel late", "Sorry {first_name}, order {order_id} ships today. {agent}"),
            ("track", "Tracking", "Your tracking number is {tracking}."),
        ),
        start=1,
    ):
        await form.get_by_label("Shortcut").fill(shortcut)
        await form.get_by_label("Title").fill(title)
        await form.get_by_label("Text").fill(text)
        await form.get_by_role("button", name="Save").click()
        # Saved (and the form cleared) before the next one is typed.
        await expect(library).to_have_count(count)
        await expect(form.get_by_label("Shortcut")).to_have_value("")
    await page.get_by_role("button", name="Edit /track").click()
    await form.get_by_label("Title").fill("Tracking number")
    await form.get_by_role("button", name="Save").click()
    await expect(library.filter(has_text="/track")).to_contain_text("Tracking number")
    # A taken shortcut is refused with the reason.
    await form.get_by_label("Shortcut").fill("late")
    await form.get_by_label("Title").fill("Twice")
    await form.get_by_label("Text").fill("again")
    await form.get_by_role("button", name="Save").click()
    await expect(page.locator("#canned-error")).to_contain_text("'late' is taken")
    await page.screenshot(path=screenshot("console-canned.png"))
    await page.get_by_role("button", name="Delete /track").click()
    await expect(library).to_have_count(1)

    # A private note, before anyone claimed: in the transcript, for agents only.
    await page.get_by_role("tab", name="Queue").click()
    await page.locator(".queue-item").first.click()
    await page.get_by_label("Private note (agents only)").fill("VIP: refund approved by Olga")
    await page.get_by_role("button", name="Add note").click()
    transcript = page.get_by_role("log", name="Transcript")
    note = transcript.locator("article.msg.note")
    await expect(note).to_contain_text("Private note · ana")
    await expect(note.locator(".text")).to_have_text("VIP: refund approved by Olga")

    # Claim; /la then Tab expands to the filled response; Enter sends it.
    await page.get_by_role("button", name="Claim", exact=True).click()
    reply = page.get_by_role("textbox", name="Reply to the customer")
    await expect(reply).to_be_enabled()
    await reply.click()
    await reply.type("Hi! /la")
    await reply.press("Tab")
    filled = "Sorry Ada, order BC-104522 ships today. ana"
    await expect(reply).to_have_value(f"Hi! {filled}")
    await expect(reply).to_be_focused()
    await reply.press("Enter")
    await expect(transcript.locator("article.msg.agent .text")).to_have_text([f"Hi! {filled}"])
    # The picker inserts at the caret too.
    await page.get_by_role("combobox", name="Insert canned response").select_option(
        label="/late · Parcel late"
    )
    await expect(reply).to_have_value(filled)
    await page.screenshot(path=screenshot("console-notes.png"))

    stored = await app[RUNTIME].store.transcript(cid)
    assert [m.text for m in stored if m.role == "agent"] == [f"Hi! {filled}"]
    assert all("VIP" not in m.text for m in stored)  # the note is no message: never sent
    assert problems == []
    await context.close()


# Records desktop notifications (then shows them as usual) and lets the test hide the tab.
RECORD_NOTIFICATIONS = """
window.__notifications = [];
window.__hidden = false;
Object.defineProperty(Document.prototype, "hidden", { get: () => window.__hidden });
const RealNotification = window.Notification;
window.Notification = class extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.__notifications.push({ title, body: (options || {}).body || "" });
  }
};
"""


async def test_transfer_keyboard_shortcuts_and_desktop_notifications(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "ana", "agent")
    await add_account(app, "bo", "agent")
    store = app[RUNTIME].store
    urgent = (await store.conversation("rest", "urgent", "Una Urgent")).id
    await store.add_customer_message(urgent, "this is the worst service ever")
    await store.escalate(urgent, angry(0.95))
    calm, _ = await customer_said(app, "calm", "could someone call me back?", "Cal Calm")

    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await context.add_init_script(RECORD_NOTIFICATIONS)
    await context.grant_permissions(["notifications"], origin=str(server.make_url("/")))
    await sign_in(page, server, "ana")
    items = page.locator(".queue-item")
    await expect(items).to_have_count(2)

    # ? opens the help overlay (focus on Close), Esc closes it.
    await page.keyboard.press("?")
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    await expect(help_dialog).to_be_visible()
    await expect(help_dialog).to_contain_text("Claim the open conversation")
    await expect(help_dialog.get_by_role("button", name="Close")).to_be_focused()
    await page.screenshot(path=screenshot("console-shortcuts.png"))
    await page.keyboard.press("Escape")
    await expect(help_dialog).to_be_hidden()

    # n / p walk the queue in its order; c claims.
    title = page.locator("#conversation-title")
    await page.keyboard.press("n")
    await expect(title).to_have_text("Una Urgent")
    await page.keyboard.press("n")
    await expect(title).to_have_text("Cal Calm")
    await page.keyboard.press("p")
    await expect(title).to_have_text("Una Urgent")
    await page.keyboard.press("c")
    reply = page.get_by_role("textbox", name="Reply to the customer")
    await expect(reply).to_be_enabled()
    await expect(items.first).to_contain_text("Claimed by you")

    # Transfer the claim to bo: he has it, ana no longer can reply.
    await page.get_by_role("combobox", name="Transfer to a colleague").select_option("bo")
    await page.get_by_role("button", name="Transfer", exact=True).click()
    await expect(page.locator("#conversation-sub")).to_contain_text("claimed by bo")
    await expect(reply).to_be_disabled()
    await page.screenshot(path=screenshot("console-transfer.png"))
    conversation = await store.get_conversation(urgent)
    assert (conversation.status, conversation.assignee) == ("claimed", "bo")
    transcript = await store.transcript(urgent)
    assert transcript[-1].role == "system" and transcript[-1].text.startswith("bo")

    # The calm one: n, c, then r resolves it; it leaves the queue.
    await page.locator("#transcript").focus()
    await page.keyboard.press("n")
    await expect(title).to_have_text("Cal Calm")
    await page.keyboard.press("c")
    await expect(reply).to_be_enabled()
    await page.keyboard.press("Escape")  # out of the reply box, shortcuts work again
    await page.keyboard.press("r")
    await expect(items).to_have_count(1)
    assert (await store.get_conversation(calm)).status == "bot"
    # Shortcuts do nothing while typing.
    await page.keyboard.press("e")
    await expect(reply).to_be_disabled()  # nothing to reply to: the bot has it again

    # Desktop notifications: switched on, they come only while the tab is hidden.
    await page.get_by_role("button", name="Notifications off").click()
    await expect(page.locator("#notifications")).to_have_text("Notifications on")
    await page.evaluate("window.__hidden = true")
    await customer_said(app, "late", "my parcel is late", "Lee Late")
    await expect(items).to_have_count(2)
    notes = await page.evaluate("window.__notifications")
    assert [n["title"] for n in notes] == ["New hand-off: Lee Late"]
    assert "my parcel is late" in notes[0]["body"]
    await page.evaluate("window.__hidden = false")
    await customer_said(app, "seen", "hello?", "Sid Seen")
    await expect(items).to_have_count(3)
    assert len(await page.evaluate("window.__notifications")) == 1
    assert problems == []
    await context.close()


async def test_a_widget_customer_rates_the_help_and_the_operator_sees_csat(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "olga", "operator")
    store = app[RUNTIME].store
    problems: list[str] = []

    # A customer in the widget is handed over (as the service would), olga resolves it.
    customer_context = await browser.new_context(viewport={"width": 1100, "height": 820})
    customer = await customer_context.new_page()
    customer.on("pageerror", lambda error: problems.append(str(error)))
    await customer.goto(str(server.make_url("/")))
    await customer.get_by_role("button", name="Chat with us: Brightcart support").click()
    box = customer.get_by_role("textbox", name="Your message")
    await box.fill("hello")
    await box.press("Enter")
    await expect(customer.locator(".message.bot")).not_to_have_count(0)
    session = await customer.evaluate("localStorage.getItem('supportbot.session')")
    cid = (await store.conversation("widget", session)).id
    await store.escalate(cid, angry())
    await app[RUNTIME].bus.publish(
        "console", {"type": "escalation.opened", "conversation_id": cid, "channel": "widget"}
    )

    context, page = await console_page(browser, problems)
    await sign_in(page, server, "olga")
    await page.locator(".queue-item").first.click()
    await page.get_by_role("button", name="Claim", exact=True).click()
    await expect(page.get_by_role("button", name="Resolve", exact=True)).to_be_enabled()
    await page.get_by_role("button", name="Resolve", exact=True).click()

    # The widget asks for a rating with five buttons; the customer taps 5 and is thanked.
    scores = customer.get_by_role("group", name="Suggested replies")
    await expect(scores.get_by_role("button")).to_have_text(["1", "2", "3", "4", "5"])
    await customer.screenshot(path=screenshot("widget-csat.png"))
    await scores.get_by_role("button", name="5").click()
    await expect(customer.locator(".message .text").last).to_have_text(
        "Thank you for rating us 5/5!"
    )

    # The operator's dashboard: CSAT 5.0 of 1 rating, and its distribution.
    await page.get_by_role("tab", name="Dashboard").click()
    tile = page.locator("#csat-tile")
    await expect(tile).to_contain_text("5.0 / 5")
    await expect(tile).to_contain_text("CSAT (1 rating)")
    chart = page.get_by_role("img", name="CSAT: mean 5.00 of 5 over 1 ratings", exact=False)
    await expect(chart).to_be_visible()
    await page.screenshot(path=screenshot("console-dashboard-csat.png"), full_page=True)
    assert problems == []
    await context.close()
    await customer_context.close()


async def test_escalation_facts_show_counts_whole_and_scores_to_three_decimals(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    """Issue 18: a repeated-fallback hand-off read "failed turns 2.000"."""
    from bot.core.escalation import REPEATED_FALLBACK
    from bot.core.records import Escalation

    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "ana", "agent")
    store = app[RUNTIME].store
    conversation = await store.conversation("rest", "f1", None)
    await store.add_customer_message(conversation.id, "blorp frumious")
    await store.escalate(
        conversation.id,
        Escalation(
            REPEATED_FALLBACK,
            1.2,
            "The bot could not answer 2 turns in a row.",
            {"failed_turns": 2, "negativity": 0.12345},
        ),
    )
    await app[RUNTIME].bus.publish(
        "console",
        {"type": "escalation.opened", "conversation_id": conversation.id, "channel": "rest"},
    )
    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await sign_in(page, server, "ana")
    await page.locator(".queue-item").first.click()
    facts = page.get_by_role("complementary", name="Details").locator(".facts-list")
    await expect(facts).to_contain_text("failed turns")
    pairs = await facts.evaluate(
        "dl => [...dl.querySelectorAll('dt')].map(dt => [dt.textContent, "
        "dt.nextElementSibling.textContent])"
    )
    assert ["failed turns", "2"] in pairs and ["negativity", "0.123"] in pairs, pairs
    assert problems == []
    await context.close()

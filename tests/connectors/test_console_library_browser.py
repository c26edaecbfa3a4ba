"""The answer library and "Save as approved answer" in headless Chromium against the real app
(real models and answer index, SQLite): the dialog shows the customer's real question (not
their "I want a human") and saves the edited pair; an agent disables an answer in the
library and the next customer asking over the REST API no longer gets it. Screenshots at
phone (390x844) and desktop (1366x900) sizes go to test-artifacts/ and /work/briefs/out/ when
that folder exists.

The helpers (serving, accounts, signing in) are those of test_console_browser.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select

from bot.app.factory import RUNTIME
from bot.store.schema import ApprovedAnswerRow
from tests.connectors.test_console_browser import (
    ServerFactory,
    add_account,
    console_page,
    screenshot,
    serve,
    sign_in,
)
from tests.connectors.test_console_library import REFUND_ANSWER, REFUND_QUESTION
from tests.helpers import BROWSER_TESTS

pytestmark = BROWSER_TESTS

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
BRIEF_OUT = Path("/work/briefs/out")
AGENT_REPLY = "Hi Ada, I checked BC-204719 for you: refunds take 5-7 business days."


async def ask(server: TestServer, sender: str, text: str) -> dict[str, Any]:
    """A customer's message over the REST API; the bot's reply."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            str(server.make_url("/api/v1/messages")), json={"sender": sender, "text": text}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        (reply,) = (await response.json())["replies"]
        return dict(reply)


async def shot(page: Page, name: str) -> None:
    """A screenshot in test-artifacts/, copied to the brief's output folder when it exists."""
    path = screenshot(name)
    await page.screenshot(path=path)
    if BRIEF_OUT.is_dir():
        shutil.copy(path, BRIEF_OUT / name)


async def no_horizontal_overflow(page: Page) -> None:
    widths = await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], widths


async def test_save_as_approved_shows_the_real_question_and_the_library_disables_an_answer(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    server, app = await serve(aiohttp_server, runtime_models, tmp_path)
    await add_account(app, "ana", "agent")
    assert (await ask(server, "ada", REFUND_QUESTION))["text"] == REFUND_ANSWER
    assert (await ask(server, "ada", "i want to talk to a human"))["route"] == "handoff"

    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    await sign_in(page, server, "ana")
    await page.locator(".queue-item").first.click()
    await page.get_by_role("button", name="Claim").click()
    await page.locator("#reply").fill(AGENT_REPLY)
    await page.get_by_role("button", name="Send").click()
    transcript = page.get_by_role("log", name="Transcript")
    reply = transcript.locator("article").filter(has_text=AGENT_REPLY)
    await reply.get_by_role("button", name="Save as approved answer").click()

    # The dialog proposes the question the reply answers, not "i want to talk to a human".
    dialog = page.get_by_role("dialog", name="Save as approved answer")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Question")).to_have_value(REFUND_QUESTION)
    await expect(dialog.get_by_label("Answer")).to_have_value(AGENT_REPLY)
    await expect(dialog.get_by_label("Intent")).to_have_value("refund_status")
    await shot(page, "console-approve-dialog-desktop.png")
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await no_horizontal_overflow(page)
    box = await dialog.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    await shot(page, "console-approve-dialog-phone.png")
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

    await dialog.get_by_label("Question").fill("How long does a refund take?")
    await dialog.get_by_label("Answer").fill("Refunds reach your card within 5-7 business days.")
    await dialog.get_by_role("button", name="Save approved answer").click()
    await expect(dialog).to_be_hidden()
    await expect(reply.locator(".label-state")).to_have_text("Saved as an approved answer ✓")
    async with app[RUNTIME].store.reading("test") as session:
        rows = (await session.scalars(select(ApprovedAnswerRow))).all()
    assert [(r.question, r.answer, r.intent, r.author) for r in rows] == [
        (
            "How long does a refund take?",
            "Refunds reach your card within 5-7 business days.",
            "refund_status",
            "ana",
        )
    ]

    # The library: the answer Ada was served, with its use; disabled, it is served no more.
    await page.get_by_role("tab", name="Answer library").click()
    answers = page.get_by_role("list", name="Indexed answers").locator(".library-item")
    await expect(answers).to_have_count(2)
    refund = answers.filter(has_text=REFUND_ANSWER)
    await expect(refund.locator(".usage")).to_contain_text("served 1×")
    await expect(page.locator("#library-summary")).to_have_text(
        "2 of 2 indexed answers, the most served first."
    )
    await refund.get_by_role("button", name="Disable").click()
    await expect(refund.locator(".chip.status-disabled")).to_have_text("disabled")
    await expect(refund.locator(".state")).to_contain_text("Disabled by ana")
    await expect(refund.get_by_role("button", name="Enable")).to_be_visible()
    assert (await ask(server, "bob", REFUND_QUESTION))["text"] != REFUND_ANSWER
    await shot(page, "console-library-desktop.png")

    # The parcel answer is edited in place; the library says what customers get now.
    parcel = answers.filter(has_text="Track parcel")
    await parcel.get_by_role("button", name="Edit").click()
    await parcel.get_by_label("Edited answer").fill("Open My orders, then Track parcel.")
    await parcel.get_by_role("button", name="Save edit").click()
    await expect(parcel.locator(".chip.status-edited")).to_have_text("edited")
    await expect(parcel.locator(".answer")).to_have_text("Open My orders, then Track parcel.")

    await page.get_by_label("disabled", exact=True).check()
    await expect(answers).to_have_count(1)
    await page.get_by_label("disabled", exact=True).uncheck()
    await expect(answers).to_have_count(2)
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await no_horizontal_overflow(page)
    await shot(page, "console-library-phone.png")
    assert problems == []
    await context.close()

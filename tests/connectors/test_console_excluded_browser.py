"""The answer library's "Excluded by curation" view in headless Chromium against the real app
(real models, an answer index built with its curation report, SQLite): the excluded answer is
listed with its reasons and how many conversations had it; "Approve a clean version" opens the
approval dialog on it and saves the agent's pair. Screenshots at phone (390x844) and desktop
(1366x900) sizes go to test-artifacts/ and /work/briefs/out/ (library2-*.png) when that folder
exists."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.async_api import Browser, expect
from sqlalchemy import select

from bot.app.factory import RUNTIME
from bot.store.schema import ApprovedAnswerRow
from tests.conftest import RUNTIME_CONVERSATIONS
from tests.connectors.test_console_browser import (
    ServerFactory,
    add_account,
    console_page,
    serve,
    sign_in,
)
from tests.connectors.test_console_excluded import CANCEL, CLEAN, CLEAN_QUESTION, PERSONAL, rebuild
from tests.connectors.test_console_library_browser import (
    DESKTOP,
    PHONE,
    no_horizontal_overflow,
    shot,
)
from tests.helpers import BROWSER_TESTS, runtime_settings

pytestmark = BROWSER_TESTS


async def test_the_excluded_view_lists_curated_out_answers_and_approves_a_clean_version(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path, browser: Browser
) -> None:
    logs = tmp_path / "conversations.jsonl"
    logs.write_text("".join(json.dumps(c) + "\n" for c in [*RUNTIME_CONVERSATIONS, *CANCEL]))
    index_dir = tmp_path / "answers"
    rebuild(
        runtime_settings(
            runtime_models, "sqlite+aiosqlite:///", retrieval={"index_dir": index_dir}
        ),
        logs,
    )
    server, app = await serve(
        aiohttp_server, runtime_models, tmp_path, retrieval={"index_dir": index_dir}
    )
    await add_account(app, "ana", "agent")

    problems: list[str] = []
    context, page = await console_page(browser, problems)
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    await sign_in(page, server, "ana")
    await page.get_by_role("tab", name="Answer library").click()
    answers = page.get_by_role("list", name="Indexed answers").locator(".library-item")
    await expect(answers).to_have_count(2)
    await page.get_by_label("excluded by curation").check()
    await expect(answers).to_have_count(1)
    excluded = answers.first
    await expect(excluded.locator(".answer")).to_have_text(PERSONAL.format("Ada", 0))
    await expect(excluded.locator(".usage")).to_have_text("2 conversations")
    await expect(excluded.locator(".chip").first).to_have_text("first-person action")
    await expect(page.locator("#library-summary")).to_contain_text(
        "1 of the 1 most frequent answers curation kept out of the index"
    )
    # The index's own filters do not apply to excluded answers.
    await expect(page.locator("#library-intent")).to_be_disabled()
    await shot(page, "library2-excluded-desktop.png")
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await no_horizontal_overflow(page)
    await excluded.scroll_into_view_if_needed()
    await shot(page, "library2-excluded-phone.png")

    await excluded.get_by_role("button", name="Approve a clean version").click()
    dialog = page.get_by_role("dialog", name="Approve a clean version")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Answer")).to_have_value(PERSONAL.format("Ada", 0))
    await no_horizontal_overflow(page)
    await shot(page, "library2-clean-version-dialog-phone.png")
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    await dialog.get_by_label("Question").fill(CLEAN_QUESTION)
    await dialog.get_by_label("Answer").fill(CLEAN)
    await dialog.get_by_role("button", name="Save approved answer").click()
    await expect(dialog).to_be_hidden()
    await expect(excluded.locator(".chip.status-approved")).to_have_text("clean version approved")
    await expect(excluded.locator(".clean")).to_have_text(CLEAN)
    await expect(excluded.get_by_role("button", name="Edit the clean version")).to_be_visible()
    async with app[RUNTIME].store.reading("test") as session:
        rows = (await session.scalars(select(ApprovedAnswerRow))).all()
    assert [(r.question, r.answer, r.author) for r in rows] == [(CLEAN_QUESTION, CLEAN, "ana")]
    await shot(page, "library2-excluded-approved-desktop.png")

    await page.get_by_label("excluded by curation").uncheck()
    await expect(answers).to_have_count(2)
    assert problems == []
    await context.close()

"""The answer library's "Excluded by curation" view and "Approve a clean version" over HTTP,
in-process (the real app, real models and answer index with its curation report, real
SQLite); then `supportbot index build`'s steps bring the approved answers into the index, and
an edited answer is served once after its approved replacement is indexed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.app.factory import RUNTIME, create_app
from bot.app.index_cli import approved_from_store, build_index
from bot.core.router import RoutingConfig
from bot.settings import Settings
from bot.store.schema import ApprovedAnswerRow
from connectors.console import CONSOLE
from tests.conftest import RUNTIME_CONVERSATIONS
from tests.connectors.test_console import PASSWORD
from tests.connectors.test_console_library import REFUND_QUESTION, ask, signed_in
from tests.helpers import runtime_settings

pytestmark = pytest.mark.slow

PERSONAL = "Hi {}, I've cancelled order BC-20471{} for you and refunded the card."
CANCEL = [
    {
        "id": f"x{i}",
        "resolved": True,  # no intent: the test models know none for cancelling
        "messages": [
            {"role": "customer", "text": f"please cancel my order BC-20471{i}, I'm {name}"},
            {"role": "agent", "text": PERSONAL.format(name, i)},
        ],
    }
    for i, name in enumerate(("Ada", "Bo"))
]
CLEAN_QUESTION = "How do I cancel my order?"
CLEAN = "Open My orders and choose Cancel order; the refund reaches your card in 5-7 days."


def rebuild(settings: Settings, logs: Path) -> None:
    """What `supportbot index build --config` does: the logs plus the store's approved
    answers, saved with the curation report."""
    build_index(
        [logs],
        settings.retrieval.index_dir,
        entities=RoutingConfig.load(settings.routing.config).entities,
        approved=lambda: approved_from_store(settings)[0],
    )


@pytest.fixture
async def app(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    runtime_models: Path,
    sqlite_url: str,
    tmp_path: Path,
) -> tuple[TestClient[Any, Any], Settings, Path]:
    logs = tmp_path / "conversations.jsonl"
    logs.write_text("".join(json.dumps(c) + "\n" for c in [*RUNTIME_CONVERSATIONS, *CANCEL]))
    settings = runtime_settings(
        runtime_models, sqlite_url, retrieval={"index_dir": tmp_path / "answers"}
    )
    rebuild(settings, logs)
    client = await aiohttp_client(create_app(settings))
    accounts = client.server.app[CONSOLE].accounts
    await accounts.add("ana", "agent", PASSWORD)
    return client, settings, logs


async def test_agents_approve_a_clean_version_of_an_excluded_answer_and_the_build_indexes_it(
    app: tuple[TestClient[Any, Any], Settings, Path],
) -> None:
    client, settings, logs = app
    ana = await signed_in(client, "ana")
    try:
        status, body = await ana.get("/answers/excluded")
        assert status == 200
        assert (body["total"], body["listed"], body["pages"]) == (1, 1, 1)
        (excluded,) = body["excluded"]
        assert excluded["conversations"] == 2  # Ada's and Bo's, the same answer but details
        assert excluded["answer"] == PERSONAL.format("Ada", 0)
        assert "first-person action" in excluded["reasons"]
        assert excluded["source"] == f"{logs}:3" and excluded["intent"] is None
        assert excluded["approved_answer_id"] is None
        _, none = await ana.get("/answers/excluded?q=shipping+email")
        assert none["excluded"] == [] and none["listed"] == 1
        # The pair is not in the index: the bot does not serve it.
        _, library = await ana.get("/answers?q=cancelled")
        assert library["answers"] == []

        status, saved = await ana.post(
            "/answers/excluded/approve",
            {"source": excluded["source"], "question": CLEAN_QUESTION, "answer": CLEAN},
        )
        assert status == 201
        assert saved["excluded"]["clean_answer"] == CLEAN
        assert saved["excluded"]["by"] == "ana" and saved["excluded"]["approved_answer_id"]
        store = client.server.app[RUNTIME].store
        async with store.reading("test") as session:
            rows = (await session.scalars(select(ApprovedAnswerRow))).all()
        assert [(r.question, r.answer, r.intent, r.author) for r in rows] == [
            (CLEAN_QUESTION, CLEAN, None, "ana")
        ]
        _, listed = await ana.get("/answers/excluded")
        assert listed["excluded"][0]["approved_answer_id"] == rows[0].id

        for body, code, says in (
            ({"source": "nowhere:1", "question": "q", "answer": "a"}, 404, "lists no excluded"),
            ({"source": excluded["source"], "question": " ", "answer": "a"}, 400, "question"),
            ({"source": excluded["source"], "question": "q"}, 400, 'field "answer" is missing'),
            ({"question": "q", "answer": "a"}, 400, 'field "source" is missing'),
        ):
            status, refused = await ana.post("/answers/excluded/approve", body)
            assert status == code and says in refused["error"], body
        status, refused = await ana.get("/answers/excluded?page=0")
        assert status == 400 and "page" in refused["error"]
        async with client.get("/console/api/answers/excluded") as response:
            assert response.status == 401

        # An edit of an indexed answer, then `supportbot index build` with the database.
        _, library = await ana.get("/answers?intent=refund_status")
        (refund,) = library["answers"]
        clean_refund = "Refunds reach your card 5-7 business days after we receive the return."
        status, _ = await ana.post(
            "/answers/edit", {"source": refund["source"], "answer": clean_refund}
        )
        assert status == 200
        # In a worker thread, as the command runs beside the serving bot (it has its loop).
        await asyncio.to_thread(rebuild, settings, logs)
        assert await client.server.app[RUNTIME].answers.reload_if_changed()

        _, approved = await ana.get("/answers?kind=approved")
        assert sorted(a["answer"] for a in approved["answers"]) == sorted([CLEAN, clean_refund])
        assert (await ask(client, "c1", "how do I cancel my order?"))["text"] == CLEAN
        # The edit's approved answer has the original's question: it took the original's
        # place in the index (the duplicate rule), so the text is listed and served once.
        _, both = await ana.get("/answers?q=after+we+receive")
        [(source, replaced)] = [(a["source"], a["replaced_by"]) for a in both["answers"]]
        assert source.startswith("store:approved_answers:") and replaced is None
        served = await ask(client, "c2", REFUND_QUESTION)
        assert (served["route"], served["text"]) == ("answer", clean_refund)
        # The excluded answer stays listed (the data still holds it), with its clean version.
        _, listed = await ana.get("/answers/excluded")
        assert listed["excluded"][0]["clean_answer"] == CLEAN
    finally:
        await ana.http.close()

"""The answer library and "Save as approved answer" over HTTP, in-process (the real app, real
models and answer index, real SQLite): listing the live index's answers with use and
ratings, disabling, editing and approving one (and what customers are served next, over the
REST API), the question a reply is paired with, and the API's input rules. (In Chromium:
test_console_library_browser.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.app.factory import RUNTIME, create_app
from bot.store.schema import ApprovedAnswerRow
from connectors.console import CONSOLE
from tests.connectors.test_console import PASSWORD, Person
from tests.helpers import runtime_settings

pytestmark = pytest.mark.slow

REFUND_QUESTION = "how long does a refund take to reach my card?"
REFUND_ANSWER = (
    "Refunds reach your card 5-7 business days after the warehouse scans your return; "
    "PayPal usually takes 1-2 days."
)


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    runtime_models: Path,
    sqlite_url: str,
) -> TestClient[Any, Any]:
    made = await aiohttp_client(create_app(runtime_settings(runtime_models, sqlite_url)))
    accounts = made.server.app[CONSOLE].accounts
    await accounts.add("ana", "agent", PASSWORD)
    await accounts.add("bo", "agent", PASSWORD)
    return made


async def ask(client: TestClient[Any, Any], sender: str, text: str) -> dict[str, Any]:
    """A customer's message over the REST API; the bot's reply."""
    response = await client.post("/api/v1/messages", json={"sender": sender, "text": text})
    assert response.status == 200, await response.text()
    (reply,) = (await response.json())["replies"]
    return dict(reply)


async def signed_in(client: TestClient[Any, Any], name: str) -> Person:
    person = Person(client)
    assert (await person.sign_in(name)).status == 200
    return person


async def test_agents_list_disable_edit_and_approve_answers_and_customers_see_it(
    client: TestClient[Any, Any],
) -> None:
    ana, bo = await signed_in(client, "ana"), await signed_in(client, "bo")
    try:
        status, library = await ana.get("/answers")
        assert status == 200
        assert (library["total"], library["indexed"], library["pages"]) == (2, 2, 1)
        assert set(library["intents"]) == {"refund_status", "order_status"}
        refund = next(a for a in library["answers"] if a["intent"] == "refund_status")
        assert (refund["question"], refund["answer"], refund["kind"]) == (
            REFUND_QUESTION,
            REFUND_ANSWER,
            "conversation",
        )
        assert (refund["served"], refund["disabled"], refund["action"]) == (0, False, None)
        source = refund["source"]
        assert source.endswith("conversations.jsonl:1")

        first = await ask(client, "c1", REFUND_QUESTION)
        assert (first["route"], first["text"]) == ("answer", REFUND_ANSWER)
        rated = await client.post(
            "/api/v1/feedback", json={"message_id": first["message_id"], "rating": "down"}
        )
        assert rated.status in (200, 201), await rated.text()
        _, library = await ana.get("/answers?rated_down=1")
        [listed] = library["answers"]
        assert (listed["source"], listed["served"], listed["rated_down"]) == (source, 1, 1)

        # Disabled: the next customer no longer gets it, on the same question.
        status, body = await ana.post("/answers/disable", {"source": source})
        assert status == 200
        changed = body["answer"]
        assert (changed["disabled"], changed["action"], changed["by"]) == (True, "disabled", "ana")
        assert changed["at"] is not None
        assert (await ask(client, "c2", REFUND_QUESTION))["text"] != REFUND_ANSWER
        _, library = await bo.get("/answers?disabled=1")
        assert [a["source"] for a in library["answers"]] == [source]

        # Edited (by a colleague): served at once in place of the original.
        clean = "Refunds reach your card 5-7 business days after we receive your return."
        status, body = await bo.post("/answers/edit", {"source": source, "answer": clean})
        assert status == 200
        edited = body["answer"]
        assert (edited["disabled"], edited["action"], edited["by"]) == (False, "edited", "bo")
        assert (edited["served_answer"], edited["answer"]) == (clean, REFUND_ANSWER)
        assert edited["approved_answer_id"] is not None
        served = await ask(client, "c3", REFUND_QUESTION)
        assert (served["route"], served["text"]) == ("answer", clean)
        _, library = await ana.get("/answers?q=we+receive+your")
        assert [a["source"] for a in library["answers"]] == [source]

        # Approved: the parcel answer is kept for the next retrain, once.
        _, library = await ana.get("/answers?intent=order_status&kind=conversation")
        [parcel] = library["answers"]
        status, body = await ana.post("/answers/approve", {"source": parcel["source"]})
        assert status == 200 and body["answer"]["action"] == "approved"
        status, again = await bo.post("/answers/approve", {"source": parcel["source"]})
        assert again["answer"]["approved_answer_id"] == body["answer"]["approved_answer_id"]
        async with client.server.app[RUNTIME].store.reading("test") as session:
            rows = (await session.scalars(select(ApprovedAnswerRow).order_by("id"))).all()
        assert [(r.question, r.answer, r.author) for r in rows] == [
            (REFUND_QUESTION, clean, "bo"),
            (parcel["question"], parcel["answer"], "ana"),
        ]

        # Enabled again: the edit stays what is served.
        status, body = await ana.post("/answers/enable", {"source": source})
        assert (body["answer"]["action"], body["answer"]["disabled"]) == ("enabled", False)
        assert (await ask(client, "c4", REFUND_QUESTION))["text"] == clean
    finally:
        await ana.http.close()
        await bo.http.close()


async def test_the_library_refuses_bad_input_with_what_to_fix(
    client: TestClient[Any, Any],
) -> None:
    ana = await signed_in(client, "ana")
    try:
        for query, says in (
            ("kind=manual", "kind must be one of conversation, faq, approved"),
            ("rated_down=maybe", "rated_down must be 1 or 0"),
            ("page=0", "page"),
            ("per_page=500", "per_page"),
            ("q=" + "x" * 201, "at most 200"),
        ):
            status, refused = await ana.get(f"/answers?{query}")
            assert status == 400 and says in refused["error"], query
        for path, body, code, says in (
            ("/answers/disable", {}, 400, 'field "source" is missing'),
            ("/answers/disable", {"source": "nowhere.jsonl:9"}, 404, "holds no answer from"),
            ("/answers/edit", {"source": "nowhere.jsonl:9"}, 400, 'field "answer" is missing'),
            ("/answers/approve", {"source": "x" * 1001}, 400, "limit is 1000"),
        ):
            status, refused = await ana.post(path, body)
            assert status == code and says in refused["error"], (path, body)
        headers = {"X-CSRF-Token": ana.csrf, "Content-Type": "application/json"}
        for raw, says in (
            ('{"source": 7}', "must be a string"),
            ('{"source": ["a"]}', "must be a string"),
            ('{"source": "a\\u0000b"}', "NUL"),
            ('{"source": "\\ud800"}', "lone surrogate"),
            ("[1, 2]", "JSON object"),
        ):
            async with ana.http.post(
                "/console/api/answers/disable", data=raw, headers=headers
            ) as response:
                assert response.status == 400, raw
                assert says in (await response.json())["error"], raw
        async with ana.http.get("/console/api/answers?q=%00") as response:
            assert response.status == 400 and "NUL" in (await response.json())["error"]
        _, library = await ana.get("/answers")
        source = library["answers"][0]["source"]
        status, refused = await ana.post("/answers/edit", {"source": source, "answer": "  "})
        assert status == 400 and '"answer" is empty' in refused["error"]
        # Changes need the session's CSRF token, reading needs a session.
        async with ana.http.post("/console/api/answers/disable", json={"source": source}) as r:
            assert r.status == 403
        async with client.get("/console/api/answers") as r:
            assert r.status == 401
        _, library = await ana.get("/answers?disabled=1")
        assert library["answers"] == []
    finally:
        await ana.http.close()


async def test_save_as_approved_pairs_the_reply_with_the_question_and_keeps_the_edit(
    client: TestClient[Any, Any],
) -> None:
    ana = await signed_in(client, "ana")
    try:
        await ask(client, "ada", REFUND_QUESTION)
        handed = await ask(client, "ada", "i want to talk to a human")
        assert handed["route"] == "handoff"
        store = client.server.app[RUNTIME].store
        conversation = await store.find_conversation("rest", "ada")
        assert conversation is not None
        cid = conversation.id
        await ana.post(f"/conversations/{cid}/claim")
        status, sent = await ana.post(
            f"/conversations/{cid}/reply", {"text": "Hi Ada, I checked BC-204719: 5-7 days."}
        )
        assert status == 201
        reply_id = sent["message"]["id"]

        status, body = await ana.get(f"/messages/{reply_id}/approval")
        assert status == 200
        draft = body["draft"]
        assert (draft["question"], draft["intent"]) == (REFUND_QUESTION, "refund_status")
        assert draft["answer"] == "Hi Ada, I checked BC-204719: 5-7 days."
        transcript = await store.transcript(cid)
        assert draft["question_message_id"] == transcript[0].id

        status, saved = await ana.post(
            "/approved-answers",
            {
                "answer_message_id": reply_id,
                "question_message_id": draft["question_message_id"],
                "question": "How long does a refund take?",
                "answer": "Refunds take 5-7 business days.",
                "intent": "refund_status",
            },
        )
        assert status == 201
        async with store.reading("test") as session:
            row = await session.get(ApprovedAnswerRow, saved["id"])
            assert row is not None
            assert (row.question, row.answer, row.intent, row.question_message_id) == (
                "How long does a refund take?",
                "Refunds take 5-7 business days.",
                "refund_status",
                transcript[0].id,
            )
        _, view = await ana.get(f"/conversations/{cid}")
        assert [m["approved"] for m in view["messages"] if m["id"] == reply_id] == [True]
        status, refused = await ana.get(f"/messages/{transcript[0].id}/approval")
        assert status == 400 and "only agents' replies" in refused["error"]
        status, refused = await ana.get("/messages/999999/approval")
        assert status == 404
    finally:
        await ana.http.close()

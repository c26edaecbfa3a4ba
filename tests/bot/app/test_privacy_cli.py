"""`supportbot privacy export` / `erase` / `purge` as an operator runs them, on a real SQLite
file, a models directory holding replay pools and test sets, and a real answer index that a
running bot's `ReloadingAnswerIndex` serves."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bot.app.cli import main
from bot.app.privacy_cli import customer_pairs, remove_texts
from bot.core.errors import BadRequestError
from bot.core.records import Feedback, Role
from bot.core.router import RoutingConfig
from bot.retrieval.index import EmbeddingAnswerIndex, ReloadingAnswerIndex
from bot.retrieval.sources import AnswerPair, build_answer_pairs
from bot.settings import load_settings
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from bot.store.privacy import Customer, Erasure, SqlPrivacyStore

EMAIL = "ada@example.org"
PHONE = "+44 20 7946 0958"
ALICE = ("my card [CARD] was charged twice", f"refund for A-1234 please, {EMAIL} or {PHONE}")
AGENT_ANSWER = f"Hi Ada, the refund went out; the receipt is on its way to {EMAIL}"
OTHERS = ("where is my parcel", "hello")


def seed(db_url: str) -> str:
    async def run() -> str:
        store = SqlConversationStore(db_url)
        await store.start()
        try:
            alice = await store.conversation("rest", "alice")
            first, _ = await store.add_customer_message(alice.id, ALICE[0])
            await store.add_customer_message(alice.id, ALICE[1])
            reply = await store.add_message(alice.id, Role.BOT, "sorry", reply_to=first.id)
            await store.record_feedback(Feedback(reply.id, rating="down"))
            await store.record_feedback(Feedback(first.id, corrected_intent="refund", author="ann"))
            bob = await store.conversation("rest", "bob")
            await store.add_customer_message(bob.id, OTHERS[0])
            return alice.id
        finally:
            await store.stop()

    return asyncio.run(run())


def write_jsonl(path: Path, texts: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"text": t, "label": "x", "source": "store", "line": i}) + "\n"
        for i, t in enumerate(texts, start=1)
    ]
    path.write_text("".join(lines), encoding="utf-8")


def erasure_counts(db_url: str) -> list[dict[str, int]]:
    async def run() -> list[dict[str, int]]:
        store = SqlConversationStore(db_url)
        await store.start()
        try:
            return [dict(r.counts) for r in await SqlPrivacyStore(store).erasures()]
        finally:
            await store.stop()

    return asyncio.run(run())


def prepare(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """Settings through SUPPORTBOT_* variables, and a models directory with training files."""
    models = tmp_path / "models"
    monkeypatch.setenv("SUPPORTBOT_STORE__URL", db_url)
    monkeypatch.setenv("SUPPORTBOT_MODELS__DIR", str(models))
    monkeypatch.setenv("SUPPORTBOT_RETRIEVAL__INDEX_DIR", str(models / "answers"))
    write_jsonl(models / "intent" / "v1" / "replay_pool.jsonl", (ALICE[0], OTHERS[0], ALICE[0]))
    write_jsonl(models / "intent" / "v2" / "test_set.jsonl", (OTHERS[1], ALICE[1]))
    write_jsonl(models / "sentiment" / "v1" / "replay_pool.jsonl", OTHERS)
    return db_url, models


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    return prepare(f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}", tmp_path, monkeypatch)


@pytest.fixture
def setup_any(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path]:
    """As `setup`, on SQLite and on PostgreSQL."""
    return prepare(database_url, tmp_path, monkeypatch)


def snapshot(models: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file()}


def test_export_then_dry_run_then_erase(
    setup: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url, models = setup
    conversation = seed(db_url)

    out = tmp_path / "alice.json"
    assert main(["privacy", "export", "--sender", "alice", "--output", str(out)]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert [m["text"] for m in document["messages"]] == [*ALICE, "sorry"]
    assert [c["id"] for c in document["conversations"]] == [conversation]
    assert [f["corrected_intent"] for f in document["message_labels"]] == ["refund"]
    assert len(document["feedback"]) == 2
    assert OTHERS[0] not in out.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["privacy", "export", "--conversation", conversation]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == document["messages"]

    files = snapshot(models)
    assert main(["privacy", "erase", "--sender", "alice", "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert "dry run: nothing changed" in report
    assert re.search(r"messages +3 rows", report), report
    assert f"{models / 'intent' / 'v1' / 'replay_pool.jsonl'}  2 lines" in report
    assert snapshot(models) == files
    assert erasure_counts(db_url) == []
    assert main(["privacy", "export", "--sender", "alice"]) == 0  # still there
    capsys.readouterr()

    assert main(["privacy", "erase", "--sender", "alice", "--by", "dpo"]) == 0
    report = capsys.readouterr().out
    assert "removed the data of sender 'alice' on every channel (erasure by dpo)" in report
    assert "answer index: none built" in report
    for path in models.rglob("*.jsonl"):
        content = path.read_text(encoding="utf-8")
        assert not any(text in content for text in ALICE), path
    assert [json.loads(x)["text"] for x in files_lines(models / "intent/v1/replay_pool.jsonl")] == [
        OTHERS[0]
    ]
    sentiment = models / "sentiment" / "v1" / "replay_pool.jsonl"
    assert sentiment.read_bytes() == files[sentiment]
    assert not list(models.rglob(".*"))  # no temporary file left behind
    assert main(["privacy", "export", "--sender", "bob"]) == 0
    assert OTHERS[0] in capsys.readouterr().out
    [counts] = erasure_counts(db_url)
    assert counts["messages"] == 3 and counts["feedback"] == 2 and counts["conversations"] == 1
    assert "alice" not in json.dumps(counts)

    assert main(["privacy", "erase", "--sender", "alice"]) == 2
    assert "holds no conversation of sender 'alice'" in capsys.readouterr().err


def files_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_options_must_name_one_customer(
    setup: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["privacy", "export"]) == 2
    assert "either by sender" in capsys.readouterr().err
    assert main(["privacy", "erase", "--sender", "a", "--conversation", "c"]) == 2
    assert "either by sender" in capsys.readouterr().err


def test_a_broken_training_file_is_named_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "replay_pool.jsonl"
    path.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(BadRequestError, match=r"replay_pool.jsonl line 2: not JSON"):
        remove_texts(path, frozenset({"a"}))
    assert path.read_text(encoding="utf-8") == '{"text": "a"}\nnot json\n'


def seed_with_answers(db_url: str) -> int:
    """Alice's conversation with an agent's answer that an agent approved; its id."""

    async def run() -> int:
        store = SqlConversationStore(db_url)
        await store.start()
        try:
            alice = await store.conversation("rest", "alice")
            asked, _ = await store.add_customer_message(alice.id, ALICE[1])
            answer = await store.add_message(alice.id, Role.AGENT, AGENT_ANSWER, reply_to=asked.id)
            return await SqlDeskStore(store).approve_answer(
                answer.id, "ann", question="refund for my order please"
            )
        finally:
            await store.stop()

    return asyncio.run(run())


def pair(question: str, answer: str, source: str, kind: str = "conversation") -> AnswerPair:
    return AnswerPair.from_dict(
        {"question": question, "answer": answer, "intent": None, "source": source, "kind": kind}
    )


async def reloads(index: ReloadingAnswerIndex) -> bool:
    return await index.reload_if_changed()


def test_erase_rewrites_the_answer_index_and_a_running_bot_reloads_it(
    setup_any: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db_url, models = setup_any
    seed(db_url)
    approved = seed_with_answers(db_url)
    pairs = [
        pair(ALICE[0], "we refunded the double charge", "logs.jsonl:1"),  # her question
        pair("was I refunded?", AGENT_ANSWER, "logs.jsonl:2"),  # the agent's answer to her
        pair(
            "refund for my order please",
            AGENT_ANSWER,
            f"store:approved_answers:{approved}",
            "approved",
        ),
        pair(OTHERS[0], "it is on its way", "logs.jsonl:3"),
        pair("do you refund?", "sorry", "faq.csv:2", "faq"),  # the bot's words, not hers
    ]
    # Her conversation in a support log, read and curated as `index build` does: the question
    # is indexed with her e-mail and phone masked, not as she wrote it.
    logs = models.parent / "conversations.jsonl"
    conversation = {
        "id": "c-1",
        "resolved": True,
        "messages": [
            {"role": "customer", "text": ALICE[1]},
            {"role": "agent", "text": "Refunds reach your card within 5 working days."},
        ],
    }
    logs.write_text(json.dumps(conversation) + "\n", encoding="utf-8")
    routing = load_settings(None).routing.config
    [curated] = build_answer_pairs([logs], entities=RoutingConfig.load(routing).entities)
    assert curated.question != ALICE[1] and EMAIL not in curated.question
    pairs.append(curated)
    index_dir = models / "answers"
    vectors = np.eye(len(pairs), 8, dtype=np.float32)
    # The curation report lists answers kept out of the index as the agents wrote them: the
    # agent's reply to her goes, another conversation's stays.
    excluded = [
        {
            "question": "was I refunded?",
            "answer": AGENT_ANSWER,
            "reasons": ["first-person action"],
            "source": "logs.jsonl:9",
            "intent": None,
            "conversations": 1,
        },
        {
            "question": "where is it?",
            "answer": "I checked: it left today.",
            "reasons": ["first-person action"],
            "source": "logs.jsonl:8",
            "intent": None,
            "conversations": 2,
        },
    ]
    curation = {"kept": 5, "excluded": 3, "excluded_answers": excluded}
    EmbeddingAnswerIndex(pairs, vectors, model="bundled", curation=curation).save(index_dir)
    served = ReloadingAnswerIndex(index_dir, EmbeddingAnswerIndex.load)
    before = {p: p.read_bytes() for p in index_dir.iterdir()}

    assert main(["privacy", "erase", "--sender", "alice", "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert (
        f"answer index {index_dir}: 4 pairs (1 approved, 3 conversation), 2 kept, "
        "1 excluded answers listed for the console"
    ) in report
    assert {p: p.read_bytes() for p in index_dir.iterdir()} == before
    assert not asyncio.run(reloads(served))

    assert main(["privacy", "erase", "--sender", "alice"]) == 0
    report = capsys.readouterr().out
    assert "2 kept, 1 excluded answers listed for the console; rebuilt without them" in report

    assert asyncio.run(reloads(served))  # as after `supportbot retrain`
    assert [p.source for p in served.current.pairs] == ["logs.jsonl:3", "faq.csv:2"]
    assert [e.source for e in served.current.excluded] == ["logs.jsonl:8"]
    # The kept pairs kept their embeddings: a query equal to a kept row's vector finds it.
    [hit] = served.current.search_embedding(vectors[3], k=1)
    assert hit.text == "it is on its way" and hit.score == pytest.approx(1.0)
    needles = [*ALICE, EMAIL, PHONE, AGENT_ANSWER, "refund for my order please"]
    for path in models.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert [n for n in needles if n.encode() in content] == [], path
    assert not [p for p in models.rglob(".*")]  # no staging directory left behind


def test_purge_removes_conversations_older_than_the_retention(
    setup: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db_url, models = setup
    replay = models / "intent" / "v1" / "replay_pool.jsonl"
    files = snapshot(models)

    async def backdated() -> str:
        long_ago = datetime.now(UTC) - timedelta(days=100)
        store = SqlConversationStore(db_url, clock=lambda: long_ago)
        await store.start()
        try:
            old = await store.conversation("rest", "carol")
            await store.add_customer_message(old.id, "an old question")
            return old.id
        finally:
            await store.stop()

    old = asyncio.run(backdated())
    seed(db_url)  # today

    assert main(["privacy", "purge"]) == 2
    assert "give --older-than-days N or set privacy.retention_days" in capsys.readouterr().err
    assert main(["privacy", "purge", "--older-than-days", "30", "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert "dry run: nothing changed" in report and re.search(r"conversations +1 rows", report)
    assert main(["privacy", "export", "--conversation", old]) == 0
    capsys.readouterr()

    assert main(["privacy", "purge", "--older-than-days", "30"]) == 0
    report = capsys.readouterr().out
    assert "in 1 transactions" in report and re.search(r"messages +1 rows", report), report
    assert main(["privacy", "export", "--conversation", old]) == 2
    assert main(["privacy", "export", "--sender", "alice"]) == 0  # today's are kept
    assert snapshot(models) == files and replay in files  # model files untouched
    [counts] = erasure_counts(db_url)
    assert counts["conversations"] == 1
    capsys.readouterr()
    assert main(["privacy", "purge", "--older-than-days", "30"]) == 0
    assert "nothing to purge" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["privacy", "purge", "--older-than-days", "0"])


def test_index_pairs_match_the_customer_texts_as_curation_rewrote_them() -> None:
    said = "I received a wool coat (order BC-203318) and it does not fit.\nBest regards\nClaire"
    reply = "Hi Claire, BC-203318 can go back within 30 days: print the label in My orders."
    erasure = Erasure(Customer(sender="claire"), {}, frozenset({said}), answers=frozenset({reply}))
    holds = customer_pairs(erasure)
    curated = "I received a wool coat (order {order_id}) and it does not fit.\nBest regards\n{name}"
    assert holds(pair(curated, "Sorry to hear that!", "logs.jsonl:23"))
    templated = "Hi {name}, {order_id} can go back within 30 days: print the label in My orders."
    assert holds(pair("can I return it?", templated, "logs.jsonl:24"))
    assert not holds(pair("can I return it?", templated, "faq.csv:3", "faq"))  # FAQ stays
    # Too little text around the holes: it would match anyone's message.
    assert not holds(pair("{order_id} [EMAIL]?", "It ships today.", "logs.jsonl:25"))
    assert not holds(pair("I received a wool coat", "Sorry to hear that!", "logs.jsonl:26"))

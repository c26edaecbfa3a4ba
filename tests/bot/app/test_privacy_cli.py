"""`supportbot privacy export` / `erase` as an operator runs them, on a real SQLite file and a
models directory holding replay pools and test sets."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from bot.app.cli import main
from bot.app.privacy_cli import remove_texts
from bot.core.errors import BadRequestError
from bot.core.records import Feedback, Role
from bot.store.conversations import SqlConversationStore
from bot.store.privacy import SqlPrivacyStore

ALICE = ("my card [CARD] was charged twice", "refund for A-1234 please")
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


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    models = tmp_path / "models"
    monkeypatch.setenv("SUPPORTBOT_STORE__URL", db_url)
    monkeypatch.setenv("SUPPORTBOT_MODELS__DIR", str(models))
    write_jsonl(models / "intent" / "v1" / "replay_pool.jsonl", (ALICE[0], OTHERS[0], ALICE[0]))
    write_jsonl(models / "intent" / "v2" / "test_set.jsonl", (OTHERS[1], ALICE[1]))
    write_jsonl(models / "sentiment" / "v1" / "replay_pool.jsonl", OTHERS)
    return db_url, models


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
    assert "answer index: not touched" in report
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

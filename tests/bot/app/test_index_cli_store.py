"""`supportbot index build` with the database (issue 14, parts 3 and 4): the agents' approved
answers from the store join the index (real SQLite, the real bundled encoder), `--no-approved`
leaves them out, a database file that does not exist is not created, and the curation report
with the excluded answers is saved with the index (`curation.json`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.app.cli import main
from bot.retrieval.index import CURATION_FILE, PAIRS_FILE, EmbeddingAnswerIndex
from bot.settings import load_settings
from bot.store.accounts import SqlAccountStore
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore

pytestmark = pytest.mark.slow

PERSONAL = "Hi Ada, I checked BC-204719 for you: it left our warehouse yesterday."
CONVERSATIONS = [
    {
        "id": f"c{i}",
        "resolved": True,
        "intent": "order_status",
        "messages": [
            {"role": "customer", "text": f"where is my order BC-20471{i}, it is late"},
            {"role": "agent", "text": PERSONAL.replace("204719", f"20471{i}")},
        ],
    }
    for i in range(3)
] + [
    {
        "id": "c9",
        "resolved": True,
        "intent": "shipping",
        "messages": [
            {"role": "customer", "text": "how long does shipping to Austria take?"},
            {"role": "agent", "text": "Parcels to Austria arrive in 3-4 business days."},
        ],
    }
]
CLEAN = "Track your parcel under My orders; most orders arrive in 2-3 business days."


def write_data(folder: Path, db: Path) -> tuple[Path, Path]:
    logs = folder / "logs.jsonl"
    logs.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    config = folder / "supportbot.yml"
    config.write_text(
        f"store:\n  url: sqlite+aiosqlite:///{db}\nretrieval:\n  index_dir: {folder / 'answers'}\n"
    )
    return logs, config


async def approve_in_store(config: Path) -> None:
    """An agent's clean version of an answer, saved as the console saves it."""
    settings = load_settings(config)
    store = SqlConversationStore(settings.store.url)
    await store.start()
    try:
        await SqlAccountStore(store, settings.console).add("ana", "agent", "a long password 1")
        await SqlDeskStore(store).edit_answer(
            "logs.jsonl:1",
            "where is my order?",
            CLEAN,
            "order_status",
            "ana",
            clean_question="Where is my order?",
        )
    finally:
        await store.stop()


def test_build_adds_the_stores_approved_answers_and_saves_the_curation_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "var" / "supportbot.db"
    logs, config = write_data(tmp_path, db)
    out = tmp_path / "answers"

    # No database yet: nothing is read, and no file is created.
    assert main(["index", "build", "--config", str(config), "--data", str(logs)]) == 0
    printed = capsys.readouterr().out
    assert f"approved answers from the database: none (no database file {db})" in printed
    assert not db.exists()
    assert Path(printed.strip().splitlines()[-1]) == out

    # The curation report is saved with the index: the three personal answers are one
    # excluded answer, had by three conversations, with its reasons and origin.
    report = json.loads((out / CURATION_FILE).read_text(encoding="utf-8"))
    assert (report["excluded"], report["distinct_excluded"]) == (3, 1)
    (excluded,) = report["excluded_answers"]
    assert excluded["conversations"] == 3 and excluded["intent"] == "order_status"
    assert excluded["source"] == f"{logs}:1"
    assert "first-person action" in excluded["reasons"]
    assert "BC-" not in excluded["question"]  # the question is scrubbed, the answer kept
    assert "curation.json" in printed and "Excluded by curation" in printed
    assert "most frequent excluded answers" in printed

    asyncio.run(approve_in_store(config))
    assert main(["index", "build", "--config", str(config), "--data", str(logs)]) == 0
    printed = capsys.readouterr().out
    assert f"approved answers from the database ({db}): 1" in printed
    assert "1 trusted (FAQ and approved)" in printed
    pairs = [json.loads(line) for line in (out / PAIRS_FILE).read_text().splitlines()]
    approved = [p for p in pairs if p["kind"] == "approved"]
    assert [(p["question"], p["answer"], p["source"]) for p in approved] == [
        ("Where is my order?", CLEAN, "store:approved_answers:1")
    ]
    index = EmbeddingAnswerIndex.load(out)
    assert [e.conversations for e in index.excluded] == [3]
    hits = index.search_embedding(index._embed(["where is my order"])[0], k=1)
    assert hits[0].text == CLEAN

    assert (
        main(["index", "build", "--config", str(config), "--data", str(logs), "--no-approved"]) == 0
    )
    printed = capsys.readouterr().out
    assert "approved answers from the database: left out (--no-approved)" in printed
    kinds = {json.loads(line)["kind"] for line in (out / PAIRS_FILE).read_text().splitlines()}
    assert kinds == {"conversation"}


def test_an_unreachable_database_is_reported_and_the_files_still_indexed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, config = write_data(tmp_path, tmp_path / "unused.db")
    config.write_text(
        "store:\n  url: postgresql+asyncpg://nobody@127.0.0.1:9/none\n"
        f"retrieval:\n  index_dir: {tmp_path / 'answers'}\n"
    )
    assert main(["index", "build", "--config", str(config), "--data", str(logs)]) == 0
    printed = capsys.readouterr().out
    assert "approved answers from the database: none read, 127.0.0.1:9/none cannot be read" in (
        printed
    )
    assert "pass --no-approved" in printed
    assert (tmp_path / "answers" / "index.json").is_file()

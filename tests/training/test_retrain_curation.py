"""`supportbot retrain`'s answer index (issue 14, parts 3 and 4): built from the data files when
there is none, it prints the curation counts and saves the curation report with the index;
rebuilt from the current index, it keeps that index's report (the real bundled encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.retrieval.index import CURATION_FILE, EmbeddingAnswerIndex
from bot.retrieval.sources import AnswerPair
from bot.settings import load_settings
from tests.bot.app.test_index_cli_store import CONVERSATIONS
from training.feedback import FeedbackSet
from training.retrain import plan_index, rebuild_index

pytestmark = pytest.mark.slow

TEMPLATE = "Order {order_id} ships within 1 business day; track it under My orders."


def test_retrain_builds_the_index_with_its_curation_report_and_keeps_it_later(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    out = tmp_path / "answers"
    settings = load_settings(None, retrieval={"index_dir": out, "data": [logs], "faq": []})
    approved = AnswerPair(
        "Where is my order?", TEMPLATE, None, "store:approved_answers:1", "approved"
    )
    feedback = FeedbackSet(approved=[approved])

    plan, work = plan_index(settings, feedback)
    assert plan["status"] == "rebuild" and work is not None
    assert plan["curation"][0].startswith("curation: 5 answers: 1 kept as written")
    assert "3 excluded" in plan["curation"][0] and "1 trusted" in plan["curation"][0]
    pairs, model, curation = work
    # The approved answer's placeholder is recorded, as for FAQ entries.
    assert [p.slots for p in pairs if p.kind == "approved"] == [("order_id",)]
    rebuild_index(settings, pairs, model, curation)
    saved = json.loads((out / CURATION_FILE).read_text(encoding="utf-8"))
    assert [e["conversations"] for e in saved["excluded_answers"]] == [3]

    # With an index in place, its pairs and its report are kept (no data files re-read).
    feedback.approved.append(
        AnswerPair(
            "Do you ship abroad?", "Yes, to the EU.", None, "store:approved_answers:2", "approved"
        )
    )
    plan, work = plan_index(settings, feedback)
    assert work is not None and work[2] == saved
    assert plan["curation"] == [
        "curation: the current index's report is kept (3 answers excluded, 1 listed in the "
        "console); `supportbot index build` curates the data files again"
    ]
    rebuild_index(settings, *work)
    assert [e.conversations for e in EmbeddingAnswerIndex.load(out).excluded] == [3]

"""The curation report saved with the answer index (`curation.json`): the excluded answers,
the most frequent first, capped, each with its question, reasons, source, intent and how many
conversations had it; written and swapped with the index, read back on load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bot.retrieval.curation import (
    AnswerCurator,
    Candidate,
    CurationReport,
    excluded_from_dict,
)
from bot.retrieval.index import CURATION_FILE, EmbeddingAnswerIndex
from bot.retrieval.sources import AnswerPair
from tests.bot.retrieval.test_index import keyword_embed, keyword_pairs

SAME = "I checked BC-204719 for you: it ships today."


def report_of(candidates: list[Candidate]) -> CurationReport:
    report = CurationReport()
    AnswerCurator().curate_all(candidates, report)
    return report


def chat(question: str, answer: str, source: str, intent: str | None = None) -> Candidate:
    pair = AnswerPair(question, answer, intent, source, "conversation")
    return Candidate(pair, (question,))


def test_the_saved_report_lists_excluded_answers_most_frequent_first_with_their_origin() -> None:
    report = report_of(
        [
            chat("mail me at ada@example.com", "Sent to ada@example.com.", "logs.jsonl:1"),
            chat("where is BC-204719, ada@example.com?", SAME, "logs.jsonl:2", "order_status"),
            chat("and my parcel?", SAME.upper(), "logs.jsonl:5"),
            chat("how long is shipping?", "Shipping takes 2 days.", "logs.jsonl:7"),
        ]
    )
    saved = report.to_dict()
    assert (saved["kept"], saved["excluded"], saved["distinct_excluded"]) == (1, 3, 2)
    first, second = saved["excluded_answers"]
    # The first conversation's pair stands for the answer; its question is scrubbed.
    assert first == {
        "question": "where is BC-204719, [email]?",
        "answer": SAME,
        "reasons": ["first-person action", "number from the customer's message"],
        "source": "logs.jsonl:2",
        "intent": "order_status",
        "conversations": 2,
    }
    assert (second["source"], second["conversations"], second["reasons"]) == (
        "logs.jsonl:1",
        1,
        ["email address"],
    )
    assert saved["reasons"]["first-person action"] == 2
    # Read back as the console lists them; capped at the most frequent.
    assert [e.source for e in excluded_from_dict(saved)] == ["logs.jsonl:2", "logs.jsonl:1"]
    assert [e["source"] for e in report.to_dict(limit=1)["excluded_answers"]] == ["logs.jsonl:2"]


def test_a_malformed_report_says_which_entry_and_field() -> None:
    with pytest.raises(ValueError, match='"excluded_answers" list'):
        excluded_from_dict({"kept": 1})
    entry = {"question": "q", "answer": "a", "reasons": [], "source": "s"}
    with pytest.raises(ValueError, match="excluded answer 2: field 'answer' is missing"):
        excluded_from_dict({"excluded_answers": [entry, {"question": "q"}]})


def test_the_report_is_saved_and_swapped_with_the_index_and_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = report_of([chat("where is it?", SAME, "logs.jsonl:2")])
    out = tmp_path / "answers"
    built = EmbeddingAnswerIndex.build(
        keyword_pairs(), model="keywords", embed=keyword_embed, curation=report.to_dict()
    )
    built.save(out)
    saved = json.loads((out / CURATION_FILE).read_text(encoding="utf-8"))
    assert saved == report.to_dict()
    loaded = EmbeddingAnswerIndex.load(out, embed=keyword_embed)
    assert [(e.source, e.answer) for e in loaded.excluded] == [("logs.jsonl:2", SAME)]
    # An index saved without a report (e.g. one a privacy erasure rewrote) drops the old one:
    # the excluded answers hold customers' details.
    EmbeddingAnswerIndex.build(keyword_pairs(), model="keywords", embed=keyword_embed).save(out)
    assert not (out / CURATION_FILE).exists()
    assert EmbeddingAnswerIndex.load(out, embed=keyword_embed).excluded == ()
    # A broken report does not stop the index from loading: it is logged and ignored.
    (out / CURATION_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert EmbeddingAnswerIndex.load(out, embed=keyword_embed).excluded == ()
    assert "curation.json is unreadable" in caplog.text

"""The sample shop data in data/ is what `make run` trains on: it must stay valid and rich."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bot.retrieval.sources import build_answer_pairs
from training.data import load_examples

DATA = Path(__file__).resolve().parents[1] / "data"


def test_both_tasks_load_without_problems() -> None:
    intents = Counter(e.label for e in load_examples([DATA], "intent"))
    assert len(intents) >= 20
    assert min(intents.values()) >= 30, intents.most_common()[-3:]
    sentiments = Counter(e.label for e in load_examples([DATA], "sentiment"))
    assert set(sentiments) == {"negative", "neutral", "positive"}
    assert min(sentiments.values()) >= 150


def test_conversations_and_answer_pairs() -> None:
    lines = (DATA / "conversations.jsonl").read_text().splitlines()
    conversations = [json.loads(line) for line in lines if line.strip()]
    assert len(conversations) >= 200
    assert all(any(m["role"] == "agent" for m in c["messages"]) for c in conversations)
    pairs = build_answer_pairs([DATA / "conversations.jsonl", DATA / "faq.csv"])
    # Curation keeps answers with another customer's details or an agent's actions out.
    assert len(pairs) >= 120
    assert {p.kind for p in pairs} == {"conversation", "faq"}

"""Shared fixtures: a small realistic labelled set, one real fine-tuned model per session,
and an empty database of each backend the store runs on."""

from __future__ import annotations

import csv
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import needs_postgres, pg_schema
from training.arguments import TrainingArguments
from training.pipeline import TrainingRun, train_joint, train_task

# A few intents of the sample shop, phrased the way customers write.
TINY_INTENTS: dict[str, list[str]] = {
    "order_status": [
        "where is my order",
        "wheres my parcel??",
        "has order BC-104522 shipped yet",
        "when will my package arrive",
        "can you track my order please",
        "is my order on its way",
        "my order still says processing, when does it ship",
        "status of my order pls",
        "i ordered a kettle last week, where is it",
        "any update on my delivery date",
    ],
    "refund_status": [
        "where is my refund",
        "i returned the blender 2 weeks ago and still no money",
        "when do i get my money back",
        "refund not received yet",
        "how long does a refund take to show up",
        "has my refund been processed",
        "still waiting for the refund for BC-220931",
        "you owe me a refund, where is it",
        "did you send the refund to paypal",
        "refund status please",
    ],
    "greeting": [
        "hi",
        "hello there",
        "hey",
        "good morning",
        "hiya",
        "hello!",
        "good evening",
        "hey there, anyone around?",
        "hi team",
        "morning",
    ],
    "password_reset": [
        "i forgot my password",
        "how do i reset my password",
        "reset password link not working",
        "need a new password",
        "the password reset email never came",
        "cant remember my password help",
        "change my password please",
        "password reset link expired",
        "how to set a new password",
        "lost my password",
    ],
}
SENTIMENT_OF = {
    "order_status": "neutral",
    "refund_status": "negative",
    "greeting": "positive",
    "password_reset": "neutral",
}


@pytest.fixture(autouse=True, scope="session")
def _offline() -> None:
    # The suite must never reach a model hub: everything loads from disk.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_tiny_csv(path: Path) -> Path:
    """Write the tiny intent/sentiment set as CSV (text,intent,sentiment)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent", "sentiment"])
        for intent, texts in TINY_INTENTS.items():
            for text in texts:
                writer.writerow([text, intent, SENTIMENT_OF[intent]])
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store file for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=needs_postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each backend: SQLite, a file under a not-yet-existing directory;
    PostgreSQL, a schema of its own on the local server (skipped, with the reason, when no
    server answers)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'supportbot.db'}"
    else:
        async with pg_schema() as url:
            yield url


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_tiny_csv(tmp_path / "tiny.csv")


@pytest.fixture(scope="session")
def trained_intent(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    """One real fine-tune of the bundled backbone on the tiny set (a few seconds on CPU)."""
    folder = tmp_path_factory.mktemp("trained")
    data = write_tiny_csv(folder / "tiny.csv")
    args = TrainingArguments(epochs=4, batch_size=8, seed=7)
    return train_task("intent", [data], folder / "models", args, progress=False)


# A small shop for runtime tests: intents the packaged routing knows, with sentiment that
# the escalation policy can act on.
RUNTIME_ROWS: list[tuple[str, str, str]] = [
    *[
        (t, "greeting", "positive")
        for t in (
            "hi",
            "hello there",
            "hey!",
            "good morning",
            "hiya",
            "hello, nice to meet you",
            "hey there, hope you are well",
            "good evening :)",
            "hi team, lovely day",
            "morning!",
        )
    ],
    *[
        (t, "order_status", "neutral")
        for t in (
            "where is my order",
            "has my order shipped yet",
            "when will my package arrive",
            "can you track my order please",
            "is my order on its way",
            "status of order BC-104522",
            "what's the delivery date for my order",
            "my order says processing, when does it ship",
            "any update on my parcel",
            "i'd like to know where my order is",
        )
    ],
    *[
        (t, "refund_status", "neutral")
        for t in (
            "where is my refund",
            "when do i get my money back",
            "has my refund been processed",
            "how long does a refund take",
            "refund status please",
            "did you send my refund",
            "i returned the kettle, when is the refund",
            "is my refund on the way",
            "when will the refund show on my card",
            "refund for order BC-220931?",
        )
    ],
    *[
        (t, "talk_to_human", "neutral")
        for t in (
            "i want to talk to a human",
            "can i speak to a person",
            "connect me to an agent",
            "real person please",
            "let me talk to someone from support",
            "human agent please",
            "get me a human",
            "i need to speak with a representative",
            "transfer me to a person",
            "is there a real human i can chat with",
        )
    ],
    *[
        (t, "complaint", "negative")
        for t in (
            "this is the worst service ever",
            "absolutely terrible, i am furious",
            "you people are useless and rude",
            "i am so angry, nobody helps me",
            "disgusting service, never again",
            "this is a scam, awful company",
            "horrible experience, i hate this shop",
            "completely unacceptable, shame on you",
            "your support is a joke, pathetic",
            "i'm livid, this is outrageous",
        )
    ],
]
RUNTIME_CONVERSATIONS = [
    {
        "id": "c1",
        "resolved": True,
        "intent": "refund_status",
        "messages": [
            {"role": "customer", "text": "how long does a refund take to reach my card?"},
            {
                "role": "agent",
                "text": "Refunds reach your card 5-7 business days after the "
                "warehouse scans your return; PayPal usually takes 1-2 days.",
            },
        ],
    },
    {
        "id": "c2",
        "resolved": True,
        "intent": "order_status",
        "messages": [
            {"role": "customer", "text": "where can I see where my parcel is right now?"},
            {
                "role": "agent",
                "text": "Open My orders and click Track parcel; the tracking link is "
                "also in the shipping email.",
            },
        ],
    },
]


@pytest.fixture(scope="session")
def runtime_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with live intent + sentiment models and an answer index."""
    import json

    from bot.retrieval.index import EmbeddingAnswerIndex
    from bot.retrieval.sources import build_answer_pairs

    folder = tmp_path_factory.mktemp("runtime")
    data = write_runtime_rows(folder / "shop.csv")
    models = folder / "models"
    for task, epochs in (("intent", 6), ("sentiment", 6)):
        args = TrainingArguments(
            epochs=epochs, batch_size=8, seed=11, validation_fraction=0.2, test_fraction=0.0
        )
        train_task(task, [data], models, args, progress=False)
    logs = folder / "conversations.jsonl"
    logs.write_text("".join(json.dumps(c) + "\n" for c in RUNTIME_CONVERSATIONS))
    EmbeddingAnswerIndex.build(build_answer_pairs([logs])).save(models / "answers")
    return models


def write_runtime_rows(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent", "sentiment"])
        writer.writerows(RUNTIME_ROWS)
    return path


@pytest.fixture(scope="session")
def joint_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with intent and sentiment trained together on one encoder
    (`supportbot train intent+sentiment`), live, on the same data as `runtime_models`."""
    folder = tmp_path_factory.mktemp("joint")
    data = write_runtime_rows(folder / "shop.csv")
    models = folder / "models"
    args = TrainingArguments(
        epochs=6, batch_size=8, seed=11, validation_fraction=0.2, test_fraction=0.2
    )
    train_joint([data], models, args, progress=False)
    return models

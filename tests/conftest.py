"""Shared fixtures: a small realistic labelled set and one real fine-tuned model per session."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from training.arguments import TrainingArguments
from training.pipeline import TrainingRun, train_task

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
def tiny_csv(tmp_path: Path) -> Path:
    return write_tiny_csv(tmp_path / "tiny.csv")


@pytest.fixture(scope="session")
def trained_intent(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    """One real fine-tune of the bundled backbone on the tiny set (a few seconds on CPU)."""
    folder = tmp_path_factory.mktemp("trained")
    data = write_tiny_csv(folder / "tiny.csv")
    args = TrainingArguments(epochs=4, batch_size=8, seed=7)
    return train_task("intent", [data], folder / "models", args, progress=False)

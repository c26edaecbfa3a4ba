"""Retraining benchmark: learn 10 new Banking77 intents from agent labels without forgetting.

1. Train the intent model on Banking77's training set with 10 intents held out (seeded
   choice), evaluated on the official test set of the other 67 (its frozen test set).
2. Feed 20 labelled training examples of each held-out intent into a real SQLite store as
   agent corrections: a customer message per example, then a feedback row authored by an agent
   account, exactly what the console's `POST /console/api/messages/{id}/labels` stores.
3. Run `supportbot retrain`'s code path (replay sample + feedback, fine-tune from the live
   model, frozen-test and held-out-feedback comparison, gate, promotion).
4. Report official-test accuracy on the new intents and on the old intents, before and after,
   and the retrain's wall time.

Reads the data set where it lies (default ../shared/datasets, or --datasets PATH):

    .venv/bin/python benchmarks/retrain_benchmark.py [--replay 8000] [--per-intent 20]
        [--learning-rate LR] [--no-oversample] [--no-align] [--work DIR [--reuse]]

--reuse retrains from the directory's live model and leaves the candidate live if promoted, so a
second --reuse finds nothing new to learn: to repeat a trial from the same base, run each on a
copy holding only v1 (registry.json live "v1") and supportbot.db.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bot.core.records import Feedback
from bot.nlu.classifier import TransformerClassifier
from bot.settings import ConsoleSettings, load_settings
from bot.store.accounts import SqlAccountStore
from bot.store.conversations import SqlConversationStore
from training.arguments import TrainingArguments
from training.data import Example
from training.pipeline import evaluate_model, train_task
from training.retrain import RetrainOptions, describe, retrain

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
AGENT = "benchmark-agent"


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent"])
        writer.writerows(rows)
    return path


async def feed_corrections(url: str, rows: list[tuple[str, str]]) -> float:
    """Store each row as a customer message labelled by an agent; returns seconds taken."""
    started = time.perf_counter()
    store = SqlConversationStore(url)
    await store.start()
    try:
        await SqlAccountStore(store, ConsoleSettings()).add(AGENT, "agent", "benchmark-pass")
        for i, (text, intent) in enumerate(rows):
            conversation = await store.conversation("rest", f"customer-{i}")
            message, _ = await store.add_customer_message(conversation.id, text)
            await store.record_feedback(Feedback(message.id, corrected_intent=intent, author=AGENT))
    finally:
        await store.stop()
    return time.perf_counter() - started


def accuracy(classifier: TransformerClassifier, rows: list[tuple[str, str]]) -> float:
    examples = [Example(text, label, "test", i) for i, (text, label) in enumerate(rows)]
    return float(evaluate_model(classifier, examples)["accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--held-out", type=int, default=10, help="intents left out of training")
    parser.add_argument("--per-intent", type=int, default=20, help="agent labels per new intent")
    parser.add_argument("--replay", type=int, default=8000, help="earlier examples replayed")
    parser.add_argument(
        "--learning-rate", type=float, help="retrain encoder learning rate (default: setting)"
    )
    parser.add_argument(
        "--retrain-epochs", type=int, help="epochs of the retrain (default: supportbot's auto)"
    )
    parser.add_argument(
        "--no-oversample",
        action="store_true",
        help="train on each new intent's labels once (default: repeated to an old intent's count)",
    )
    parser.add_argument(
        "--no-align",
        action="store_true",
        help="leave the new intents' head rows as trained (default: aligned to the old rows' "
        "average norm)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--base-epochs",
        type=int,
        default=3,
        help="epochs of the base model (3, the figures in the README)",
    )
    parser.add_argument("--work", type=Path, help="keep the models and store here")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="the --work directory already holds the base model v1 and the stored "
        "corrections (from an earlier run): only retrain",
    )
    ns = parser.parse_args(argv)

    folder = ns.datasets / "banking77"
    train, test = read_rows(folder / "train.csv"), read_rows(folder / "test.csv")
    rng = random.Random(ns.seed)
    held_out = sorted(rng.sample(sorted({label for _, label in train}), ns.held_out))
    new = set(held_out)
    print(f"held-out intents ({len(held_out)}): {', '.join(held_out)}", flush=True)

    work = ns.work or Path(tempfile.mkdtemp(prefix="retrain-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    old_train = [row for row in train if row[1] not in new]
    old_test = [row for row in test if row[1] not in new]
    new_test = [row for row in test if row[1] in new]

    url = f"sqlite+aiosqlite:///{work / 'supportbot.db'}"
    base_seconds = float("nan")
    if not ns.reuse:
        started = time.perf_counter()
        train_task(
            "intent",
            [write_rows(work / "train_old.csv", old_train)],
            models,
            TrainingArguments(seed=ns.seed, epochs=ns.base_epochs),
            test=[write_rows(work / "test_old.csv", old_test)],
            promote=True,
        )
        base_seconds = time.perf_counter() - started
        print(f"base model v1: {len(old_train)} examples, {base_seconds / 60:.1f} min", flush=True)
        by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for row in train:
            if row[1] in new:
                by_label[row[1]].append(row)
        corrections = [
            row for label in held_out for row in rng.sample(by_label[label], ns.per_intent)
        ]
        feed_seconds = asyncio.run(feed_corrections(url, corrections))
        print(f"stored {len(corrections)} agent corrections in {feed_seconds:.1f} s", flush=True)

    settings = load_settings(
        None,
        store={"url": url},
        models={"dir": models},
        retrieval={"index_dir": work / "answers"},
    )
    started = time.perf_counter()
    result = retrain(
        settings,
        RetrainOptions(
            replay=ns.replay,
            seed=ns.seed,
            epochs=ns.retrain_epochs,
            learning_rate=ns.learning_rate or settings.retrain.learning_rate,
            oversample_new_labels=not ns.no_oversample,
            align_new_rows=not ns.no_align,
        ),
    )
    retrain_seconds = time.perf_counter() - started
    for line in describe(result):
        print(line)

    intent = next(t for t in result.tasks if t.task == "intent")
    assert intent.report is not None, intent.reasons
    # The frozen test set is exactly the official test set of the old intents.
    frozen = intent.report["comparison"]["frozen_test"]
    old_before, old_after = frozen["live"]["accuracy"], frozen["candidate"]["accuracy"]
    before = TransformerClassifier(models / "intent" / "v1")
    after = TransformerClassifier(models / "intent" / str(intent.version))
    new_before, new_after = accuracy(before, new_test), accuracy(after, new_test)
    drop = (old_before - old_after) * 100
    print()
    print("| measure | before | after | target |")
    print("|---|---:|---:|---|")
    print(
        f"| new intents, official test ({len(new_test)}) | {new_before:.1%} | "
        f"**{new_after:.1%}** | >= 85 % |"
    )
    print(
        f"| old intents, official test ({frozen['n']}) | {old_before:.1%} | "
        f"{old_after:.1%} ({-drop:+.1f} points) | drop <= 1 point |"
    )
    print(
        f"| retrain wall time | | {retrain_seconds / 60:.1f} min | "
        f"(base training {base_seconds / 60:.1f} min; nan: reused) |"
    )
    print(f"| gate | | {intent.status} | |")
    met = new_after >= 0.85 and drop <= 1.0
    print(f"targets {'met' if met else 'NOT met'}; work directory {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

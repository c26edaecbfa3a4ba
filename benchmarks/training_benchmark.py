"""Fine-tuning benchmarks on public data sets, with a TF-IDF baseline on the same splits.

Reads the data sets where they lie (default ../shared/datasets, or --datasets PATH); never
copies them into the project. Runs the same `train_task` pipeline as `supportbot train` into
a temporary models directory and prints one table.

    .venv/bin/python benchmarks/training_benchmark.py banking77 banking77-10shot airline
"""

from __future__ import annotations

import argparse
import csv
import html
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from training.arguments import TrainingArguments
from training.cli import layers_to_tune, tuned_layers
from training.data import normalize
from training.pipeline import train_task

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@dataclass(frozen=True)
class Rows:
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    task: str


def read_csv(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row[text], row[label]) for row in csv.DictReader(handle)]


def banking77(root: Path, seed: int) -> Rows:
    folder = root / "banking77"
    return Rows(
        read_csv(folder / "train.csv", "text", "category"),
        read_csv(folder / "test.csv", "text", "category"),
        "intent",
    )


def banking77_few_shot(root: Path, seed: int, per_label: int = 10) -> Rows:
    full = banking77(root, seed)
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in full.train:
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    train = [row for label in sorted(by_label) for row in rng.sample(by_label[label], per_label)]
    return Rows(train, full.test, "intent")


def airline(root: Path, seed: int) -> Rows:
    """Deduplicated, HTML-unescaped tweets, seeded stratified 80/20 split.

    Duplicates are judged as `supportbot train` judges them (case and spacing ignored); the
    first occurrence is kept, which also settles the few repeated texts labelled differently.
    """
    seen: set[str] = set()
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for text, label in read_csv(
        root / "airline_sentiment" / "Tweets.csv", "text", "airline_sentiment"
    ):
        text = html.unescape(text).strip()
        if normalize(text) in seen:
            continue
        seen.add(normalize(text))
        by_label[label].append((text, label))
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        cut = round(len(group) * 0.2)
        test += group[:cut]
        train += group[cut:]
    return Rows(train, test, "sentiment")


BENCHMARKS: dict[str, Callable[[Path, int], Rows]] = {
    "banking77": banking77,
    "banking77-10shot": banking77_few_shot,
    "airline": airline,
}
TARGETS = {
    "banking77": "accuracy >= 0.930, <= 8 min",
    "banking77-10shot": "accuracy >= 0.80",
    "airline": "macro-F1 >= 0.80",
}


def tfidf_baseline(rows: Rows) -> tuple[float, float, float]:
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform([t for t, _ in rows.train])
    classifier = LogisticRegression(max_iter=2000, C=10.0)
    classifier.fit(x_train, [y for _, y in rows.train])
    predicted = classifier.predict(vectorizer.transform([t for t, _ in rows.test]))
    truth = [y for _, y in rows.test]
    return (
        float(accuracy_score(truth, predicted)),
        float(f1_score(truth, predicted, average="macro")),
        time.perf_counter() - started,
    )


def write_csv(rows: list[tuple[str, str]], path: Path, task: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", task])
        writer.writerows(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("benchmarks", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, help="override the automatic epoch count")
    parser.add_argument("--model", default="bundled")
    parser.add_argument(
        "--tuned-layers", type=tuned_layers, help="as `supportbot train` (default 3)"
    )
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args()
    if not ns.datasets.is_dir():
        print(f"no data sets at {ns.datasets}; pass --datasets PATH", file=sys.stderr)
        return 2
    lines = [
        "| benchmark | train / test | TF-IDF+LR acc | TF-IDF+LR macro-F1 | supportbot acc "
        "| supportbot macro-F1 | fine-tune wall time | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ns.benchmarks:
        rows = BENCHMARKS[name](ns.datasets, ns.seed)
        base_acc, base_f1, base_s = tfidf_baseline(rows)
        print(
            f"[{name}] TF-IDF + LR: accuracy {base_acc:.4f} macro-F1 {base_f1:.4f} ({base_s:.0f} s)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_csv(rows.train, folder / "train.csv", rows.task)
            write_csv(rows.test, folder / "test.csv", rows.task)
            args = TrainingArguments(
                model=ns.model,
                epochs=ns.epochs,
                seed=ns.seed,
                min_examples_per_label=2,
                tuned_layers=layers_to_tune(ns.tuned_layers, lora=False),
            )
            started = time.perf_counter()
            run = train_task(
                rows.task,
                [folder / "train.csv"],
                folder / "models",
                args,
                test=[folder / "test.csv"],
                progress=not ns.no_progress,
            )
            seconds = time.perf_counter() - started
        test = run.metrics["test"]
        training = run.metrics["training"]
        print(
            f"[{name}] supportbot: accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f} "
            f"ECE {test['ece']:.4f} ({seconds:.0f} s, {training['epochs_run']} epochs, best "
            f"{training['best_epoch']})"
        )
        lines.append(
            f"| {name} | {len(rows.train)} / {len(rows.test)} | {base_acc:.1%} | {base_f1:.3f} | "
            f"{test['accuracy']:.1%} | {test['macro_f1']:.3f} | {seconds / 60:.1f} min | "
            f"{TARGETS[name]} |"
        )
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Intent and sentiment trained together on one encoder, against each trained alone, on the
same test sets (issue 19: one model pass, quality unchanged).

Settings:
- `shop`: the sample shop's `data/` (most texts carry both labels); a seeded 20 % of the
  texts labelled with both is the test set of both tasks, the rest is trained on.
- `banking77+airline`: Banking77's intents and the airline tweets' sentiment, different texts
  (as a support team with separately labelled sets would have them), each with its own test
  set (Banking77's; the airline tweets' seeded stratified 20 %, as training_benchmark.py).

Each seed runs the pipelines of `supportbot train intent`, `train sentiment` and `train
intent+sentiment` into a temporary models directory and prints accuracy and macro-F1 per task,
alone and joint, and the training time. Reads the data sets where they lie (default
../shared/datasets); never copies them into the project.

    .venv/bin/python benchmarks/joint_benchmark.py shop --seeds 1 2 3
    .venv/bin/python benchmarks/joint_benchmark.py banking77+airline
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from training_benchmark import DEFAULT_DATASETS, airline, banking77, write_csv

from training.arguments import TrainingArguments
from training.data import LoadReport, load_examples, normalize
from training.pipeline import TrainingRun, train_joint, train_task

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("intent", "sentiment")


def shop(work: Path, datasets: Path, seed: int) -> tuple[list[Path], list[Path]]:
    """data/ to train on, and a test file of a seeded 20 % of the texts with both labels."""
    data = ROOT / "data"
    labels: dict[str, dict[str, str]] = {}
    texts: dict[str, str] = {}
    for task in TASKS:
        for e in load_examples([data], task, report=LoadReport()):
            labels.setdefault(normalize(e.text), {})[task] = e.label
            texts.setdefault(normalize(e.text), e.text)
    both = sorted(key for key, found in labels.items() if len(found) == len(TASKS))
    test = random.Random(seed).sample(both, round(len(both) * 0.2))
    path = work / "test.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", *TASKS])
        writer.writerows([texts[key], *(labels[key][t] for t in TASKS)] for key in test)
    return [data], [path]


def banking_and_airline(work: Path, datasets: Path, seed: int) -> tuple[list[Path], list[Path]]:
    """Banking77's intents and the airline tweets' sentiment, each in its own files."""
    intents, tweets = banking77(datasets, seed), airline(datasets, seed)
    # Directories: each task reads the files that carry its labels and skips the others.
    train, test = work / "train", work / "test"
    train.mkdir()
    test.mkdir()
    write_csv(intents.train, train / "banking77.csv", "intent")
    write_csv(tweets.train, train / "airline.csv", "sentiment")
    write_csv(intents.test, test / "banking77.csv", "intent")
    write_csv(tweets.test, test / "airline.csv", "sentiment")
    return [train], [test]


SETTINGS: dict[str, Callable[[Path, Path, int], tuple[list[Path], list[Path]]]] = {
    "shop": shop,
    "banking77+airline": banking_and_airline,
}


def figures(run: TrainingRun) -> tuple[float, float, float]:
    m = run.metrics
    return float(m["accuracy"]), float(m["macro_f1"]), float(m["training"]["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("setting", choices=list(SETTINGS))
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args()

    rows = []
    for seed in ns.seeds:
        with tempfile.TemporaryDirectory(prefix="joint-bench-") as tmp:
            work = Path(tmp)
            data, test = SETTINGS[ns.setting](work, ns.datasets, seed)
            args = TrainingArguments(model=ns.model, seed=seed)
            common = {"test": test, "progress": not ns.no_progress, "promote": True}
            alone = {
                task: figures(train_task(task, data, work / "alone", args, **common))  # type: ignore[arg-type]
                for task in TASKS
            }
            joint_runs = train_joint(data, work / "joint", args, **common)  # type: ignore[arg-type]
            joint = {run.version.task: figures(run) for run in joint_runs}
        for task in TASKS:
            a, j = alone[task], joint[task]
            rows.append((seed, task, a, j))
            print(
                f"seed {seed} {task}: alone accuracy {a[0]:.4f} macro-F1 {a[1]:.4f}; joint "
                f"{j[0]:.4f} / {j[1]:.4f} ({(j[0] - a[0]) * 100:+.2f} points)",
                file=sys.stderr,
                flush=True,
            )
        seconds_alone = sum(alone[t][2] for t in TASKS)
        print(
            f"seed {seed}: training alone {seconds_alone:.0f} s (both), joint "
            f"{joint[TASKS[0]][2]:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    print(f"\n{ns.setting}: intent and sentiment alone vs trained together (same test sets)")
    print(
        f"{'seed':>4}  {'task':<10} {'alone acc':>9} {'joint acc':>9} {'diff':>7} "
        f"{'alone F1':>9} {'joint F1':>9}"
    )
    for seed, task, a, j in rows:
        print(
            f"{seed:>4}  {task:<10} {a[0]:>9.4f} {j[0]:>9.4f} {(j[0] - a[0]) * 100:>+6.2f} "
            f"{a[1]:>9.4f} {j[1]:>9.4f}"
        )
    for task in TASKS:
        diffs = [(j[0] - a[0]) * 100 for _, t, a, j in rows if t == task]
        print(f"{task}: mean difference {sum(diffs) / len(diffs):+.2f} points over {len(diffs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

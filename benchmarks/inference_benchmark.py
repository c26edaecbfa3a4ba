"""In-process inference benchmark of the live intent + sentiment models, fp32 against int8.

Loads the registry's live `ModelSet` twice from --models (as the service does: once as saved,
once with int8 dynamic quantization of the linear layers) and prints figures only (no
assertions):

- cost of `ModelSet.classify` (tokenization, both forward passes, post-processing) per batch
  and per message, for batch sizes 1, 8, 32 and 128 of realistic customer texts, run in one
  worker thread as the service runs them; fp32 and int8 calls alternate, so load from other
  processes hits both alike; the median is reported;
- agreement of int8 with fp32 on every text of data/utterances.csv: served intent (None when
  the model abstains), top-1 intent and sentiment label equal;
- intent and sentiment accuracy of both on data/utterances.csv. Those texts were training data,
  so this is a fidelity check of quantization, not a test score.

    .venv/bin/python benchmarks/inference_benchmark.py --models models
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from inputs import read_table

if TYPE_CHECKING:
    from bot.nlu.understander import ModelSet

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8, 32, 128)


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    intent: str
    sentiment: str


def read_utterances(path: Path) -> list[Utterance]:
    fix = "pass the project's data folder with --data"
    return [
        Utterance(r["text"].strip(), r["intent"], r["sentiment"])
        for _, r in read_table(path, ("text", "intent", "sentiment"), fix)
    ]


def read_conversation_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts += [
                str(m["text"]).strip()
                for m in json.loads(line).get("messages", [])
                if m.get("role") == "customer" and str(m.get("text", "")).strip()
            ]
    return texts


def time_batches(
    models: dict[str, ModelSet], texts: Sequence[str], size: int, min_seconds: float, seed: int
) -> dict[str, list[float]]:
    """Seconds per `classify` call of each model set, calls alternating between the sets."""
    rng = random.Random(f"{seed}:{size}")
    timings: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up: first calls allocate and tune kernels
        model.classify(rng.sample(texts, size))
    spent = 0.0
    rounds = 0
    while spent < min_seconds or rounds < 3:
        batch = rng.sample(texts, size)
        for name, model in models.items():
            started = time.perf_counter()
            model.classify(batch)
            elapsed = time.perf_counter() - started
            timings[name].append(elapsed)
            spent += elapsed
        rounds += 1
    return timings


def report(
    sets: dict[str, ModelSet],
    utterances: Sequence[Utterance],
    pool: Sequence[str],
    ns: argparse.Namespace,
) -> int:
    """Time the batch sizes, then compare the predictions; prints as it goes."""
    lines = [
        "| batch | fp32 ms/batch | int8 ms/batch | fp32 ms/msg | int8 ms/msg | int8 speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in BATCH_SIZES:
        timings = time_batches(sets, pool, size, ns.min_seconds, ns.seed)
        ms = {name: statistics.median(values) * 1000 for name, values in timings.items()}
        lines.append(
            f"| {size} | {ms['fp32']:.1f} | {ms['int8']:.1f} | {ms['fp32'] / size:.2f} "
            f"| {ms['int8'] / size:.2f} | {ms['fp32'] / ms['int8']:.2f}x |"
        )
        print(
            f"batch {size:>3}: fp32 {ms['fp32']:.1f} ms, int8 {ms['int8']:.1f} ms per batch "
            f"(median of {len(timings['fp32'])} calls each)",
            flush=True,
        )
    print()
    print("\n".join(lines))

    texts = [u.text for u in utterances]
    chunk = 64  # the service's default max_batch
    results = {
        name: [r for i in range(0, len(texts), chunk) for r in model.classify(texts[i : i + chunk])]
        for name, model in sets.items()
    }
    a, b = results["fp32"], results["int8"]
    n = len(texts)

    def share(count: int) -> str:
        return f"{count / n:.4f} ({count}/{n})"

    served = sum(x.intent == y.intent for x, y in zip(a, b, strict=True))
    top1 = sum(x.top_intents[0].label == y.top_intents[0].label for x, y in zip(a, b, strict=True))
    sentiment = sum(x.sentiment == y.sentiment for x, y in zip(a, b, strict=True))
    print()
    print(f"int8 vs fp32 agreement on {ns.data / 'utterances.csv'} ({n} texts):")
    print(f"  served intent (abstention included)  {share(served)}")
    print(f"  top-1 intent                         {share(top1)}")
    print(f"  sentiment label                      {share(sentiment)}")
    print()
    print("accuracy against the file's labels (training data: a fidelity check, not a test):")
    print("| model | served intent | top-1 intent | abstained | sentiment |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, predictions in results.items():
        pairs = list(zip(predictions, utterances, strict=True))
        print(
            f"| {name} | {sum(p.intent == u.intent for p, u in pairs) / n:.4f} "
            f"| {sum(p.top_intents[0].label == u.intent for p, u in pairs) / n:.4f} "
            f"| {sum(p.intent is None for p, _ in pairs)} "
            f"| {sum(p.sentiment == u.sentiment for p, u in pairs) / n:.4f} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="models root")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="sample data folder")
    parser.add_argument(
        "--min-seconds", type=float, default=4.0, help="timed seconds per batch size (both sets)"
    )
    parser.add_argument("--seed", type=int, default=13)
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from bot.core.errors import ModelNotFoundError
    from bot.nlu.understander import ModelSet

    utterances = read_utterances(ns.data / "utterances.csv")
    pool = list(
        dict.fromkeys(
            [u.text for u in utterances] + read_conversation_texts(ns.data / "conversations.jsonl")
        )
    )
    try:
        started = time.perf_counter()
        fp32 = ModelSet.load(ns.models, quantized=False)
        fp32_load = time.perf_counter() - started
        started = time.perf_counter()
        int8 = ModelSet.load(ns.models, quantized=True)
        int8_load = time.perf_counter() - started
    except ModelNotFoundError as exc:
        print(f"inference benchmark: {exc}", file=sys.stderr)
        return 2
    sets = {"fp32": fp32, "int8": int8}

    print(f"inference benchmark: ModelSet.classify (intent + sentiment) from {ns.models}")
    print(
        f"models {fp32.versions}, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, CPUs {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.2f}, seed {ns.seed}"
    )
    print(f"load: fp32 {fp32_load:.1f} s, int8 {int8_load:.1f} s (including quantization)")
    print(f"texts: {len(pool)} distinct customer texts; batches sampled from them")
    print()
    # In one worker thread, as the service runs every model call (bot/app/factory.py): on a busy
    # machine, torch's OpenMP team in the main thread was measured 20-50x slower than the same
    # calls in a worker thread, which would say nothing about the service.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as worker:
        return worker.submit(report, sets, utterances, pool, ns).result()


if __name__ == "__main__":
    sys.exit(main())

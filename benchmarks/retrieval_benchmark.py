"""Answer-retrieval benchmark on the Bitext customer-support set.

Reads the data set where it lies (default ../shared/datasets, or --datasets PATH); never copies
it into the project. Holds out a seeded 20% of the utterances of every intent as queries,
indexes the rest (question = utterance, answer = response, intent = intent) with the same
`EmbeddingAnswerIndex` the bot serves, and prints figures only (no assertions):

- top-1 intent match: the best answer was written for the query's intent;
- recall@3: an answer of the query's intent is among the top 3;
- search latency per query (embedding + exact search, one query at a time): mean, p50, p95;
- the margin rule (`retrieval.min_margin`): for each margin, how many queries would still be
  served (best score >= `--min-score` and at least the margin above the next different
  answer) and how many of those get an answer of another intent;
- index build time, and exact search alone over a synthetic 100k-pair index.

    .venv/bin/python benchmarks/retrieval_benchmark.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from inputs import read_table

from bot.core.datafiles import normalize
from bot.retrieval.embedder import SentenceEmbedder
from bot.retrieval.index import EmbeddingAnswerIndex
from bot.retrieval.sources import AnswerPair
from training.split import shuffled_groups

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
BITEXT = Path("bitext_customer_support") / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
COLUMNS = ("instruction", "intent", "response")


@dataclass(frozen=True, slots=True)
class Row:
    utterance: str
    intent: str
    response: str
    source: str


def read_bitext(path: Path) -> list[Row]:
    """Rows of the Bitext CSV; `source` is `file:line` of the row's first line."""
    fix = f"pass the folder holding {BITEXT.parent} with --datasets"
    return [
        Row(r["instruction"].strip(), r["intent"].strip(), r["response"].strip(), f"{path}:{line}")
        for line, r in read_table(path, COLUMNS, fix)
    ]


def split(rows: list[Row], holdout: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(indexed, queries): `holdout` of every intent's rows, at least one, become queries."""
    rng = random.Random(seed)
    indexed: list[Row] = []
    queries: list[Row] = []
    for group in shuffled_groups(rows, lambda row: row.intent, rng):
        cut = max(1, round(holdout * len(group)))
        queries += group[:cut]
        indexed += group[cut:]
    return indexed, queries


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass(frozen=True, slots=True)
class Outcome:
    """The best answer's score, its margin over the next (different) answer, and whether
    its intent is the query's."""

    score: float
    margin: float
    right: bool


async def evaluate(
    index: EmbeddingAnswerIndex, queries: list[Row], intent_of: dict[str, str], k: int
) -> tuple[float, float, list[float], list[Outcome]]:
    """(top-1 intent match, recall@k, per-query latencies in ms, per-query outcomes)."""
    top1 = recall = 0
    latencies = []
    outcomes = []
    for query in queries:
        started = time.perf_counter()
        hits = await index.search(query.utterance, k=max(k, 2))
        latencies.append((time.perf_counter() - started) * 1000)
        intents = [intent_of[h.source] for h in hits]
        top1 += bool(intents) and intents[0] == query.intent
        recall += query.intent in intents[:k]
        if hits:
            # The index returns distinct answer texts, so the runner-up is a different answer.
            margin = hits[0].score - hits[1].score if len(hits) > 1 else 1.0
            outcomes.append(Outcome(hits[0].score, margin, intents[0] == query.intent))
    return top1 / len(queries), recall / len(queries), latencies, outcomes


def margin_table(outcomes: list[Outcome], min_score: float, margins: list[float]) -> list[str]:
    """One line per margin: queries served, and served answers of another intent."""
    lines = []
    for margin in margins:
        served = [o for o in outcomes if o.score >= min_score and o.margin >= margin]
        wrong = sum(not o.right for o in served)
        lines.append(
            f"  min_margin {margin:.3f}: served {len(served)} / {len(outcomes)} "
            f"({len(served) / len(outcomes):.1%}), another intent's answer {wrong} "
            f"({wrong / max(1, len(served)):.2%} of served)"
        )
    return lines


def exact_search_latency(size: int, dimension: int, seed: int, repeats: int = 200) -> list[float]:
    """Latency (ms) of `search_embedding` alone over `size` random unit vectors."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size, dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = [AnswerPair(f"q{i}", f"a{i}", None, f"synthetic:{i}", "faq") for i in range(size)]
    index = EmbeddingAnswerIndex(pairs, vectors, embed=lambda texts: vectors[: len(texts)])
    queries = rng.standard_normal((repeats, dimension), dtype=np.float32)
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search_embedding(query, k=3)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--model", default="bundled", help="bundled, HF name or path")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of each intent")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--min-score", type=float, default=0.55, help="retrieval.min_score")
    parser.add_argument(
        "--margins", default="0,0.005,0.01,0.02,0.03,0.05", help="retrieval.min_margin values"
    )
    parser.add_argument(
        "--scale", type=int, default=100_000, help="synthetic size for exact search (0: skip)"
    )
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    path = ns.datasets / BITEXT
    rows = read_bitext(path)
    indexed, queries = split(rows, ns.holdout, ns.seed)
    # Bitext repeats some utterances verbatim; such a query would just find itself.
    indexed_texts = {normalize(r.utterance) for r in indexed}
    fresh = [q for q in queries if normalize(q.utterance) not in indexed_texts]
    pairs = [AnswerPair(r.utterance, r.response, r.intent, r.source, "approved") for r in indexed]
    intent_of = {r.source: r.intent for r in indexed}

    embedder = SentenceEmbedder(ns.model)
    started = time.perf_counter()
    embedder(["warm up"])
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    index = EmbeddingAnswerIndex.build(pairs, model=ns.model, embed=embedder)
    build_s = time.perf_counter() - started

    top1, recall, latencies, outcomes = asyncio.run(evaluate(index, fresh, intent_of, ns.k))

    import torch

    intents = len({r.intent for r in rows})
    print(f"retrieval benchmark: {path}")
    print(
        f"model {ns.model} ({index.dimension} dims), torch threads {torch.get_num_threads()}, "
        f"CPUs {os.cpu_count()}, seed {ns.seed}"
    )
    print(
        f"rows {len(rows)} ({intents} intents): indexed {len(indexed)}, held out "
        f"{len(queries)} ({ns.holdout:.0%} per intent), {len(queries) - len(fresh)} dropped as "
        f"verbatim repeats of indexed texts, {len(fresh)} queries"
    )
    print(f"top-1 intent match          {top1:.4f}")
    print(f"recall@{ns.k} (same intent)      {recall:.4f}")
    print(f"margin over the runner-up, no intent filter, min_score {ns.min_score}:")
    margins = [float(m) for m in ns.margins.split(",")]
    print("\n".join(margin_table(outcomes, ns.min_score, margins)))
    print(
        f"search latency per query    mean {statistics.fmean(latencies):.1f} ms  "
        f"p50 {percentile(latencies, 50):.1f} ms  p95 {percentile(latencies, 95):.1f} ms  "
        "(embed + exact search, one at a time)"
    )
    print(
        f"index build                 {build_s:.1f} s for {len(pairs)} questions "
        f"(+ model load {load_s:.1f} s)"
    )
    if ns.scale:
        exact = exact_search_latency(ns.scale, index.dimension, ns.seed)
        print(
            f"exact search only           p50 {percentile(exact, 50):.2f} ms  "
            f"p95 {percentile(exact, 95):.2f} ms over {ns.scale:,} synthetic pairs "
            f"x {index.dimension} dims (no embedding)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

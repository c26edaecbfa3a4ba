"""Does the served answer-index query embedding find what float32 finds? (issue 19)

The answer index is embedded in float32 (`supportbot index build`). Serving computes the query
embedding in the shared forward, whose weights `models.quantize` makes float16 (float32
arithmetic). This compares, query by query, the nearest indexed question found with the
served embedding against the one found with float32, on two sets:

- sample: every text of `data/utterances.csv` against the questions of the index built from
  `data/` (the index folder's `pairs.jsonl`);
- bitext: `--bitext-queries` instructions of the Bitext customer-support set (read where it
  lies, default ../shared/datasets, or --datasets PATH) against `--bitext-index` others.

`--int8` adds what was tried and dropped: int8 dynamic quantization (per tensor, per channel,
per channel for the attention only) of the same layers, for the same comparison.

    .venv/bin/python benchmarks/precision_benchmark.py --models models --index index [--int8]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import read_table  # noqa: E402
from bot.nlu.artifacts import resolve_backbone  # noqa: E402
from bot.nlu.understander import ModelSet  # noqa: E402
from bot.retrieval.embedder import MeanPoolingEncoder, SentenceEmbedder, Vectors  # noqa: E402
from bot.retrieval.index import index_model  # noqa: E402

DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
BITEXT = Path("bitext_customer_support") / "Bitext_Sample_Customer_Support_Training_Dataset.csv"


def agreement(queries: Vectors, index: Vectors, reference: Vectors) -> tuple[float, float, float]:
    """(share of queries whose nearest indexed question is float32's, mean and min cosine of
    the query embeddings to float32's)."""
    same = (queries @ index.T).argmax(1) == (reference @ index.T).argmax(1)
    cosine = np.sum(queries * reference, axis=1)
    return float(same.mean()), float(cosine.mean()), float(cosine.min())


def int8_variant(encoder: Any, kind: str) -> Any:
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    qconfig = default_dynamic_qconfig if kind == "int8" else per_channel_dynamic_qconfig
    model = copy.deepcopy(encoder)
    for i, layer in enumerate(model.encoder.layer):
        if kind == "int8 attention per channel":
            layer.attention = quantize_dynamic(layer.attention, {nn.Linear: qconfig})
        else:
            model.encoder.layer[i] = quantize_dynamic(layer, {nn.Linear: qconfig})
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--index", type=Path, default=None, help="default <models>/answers")
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--bitext-index", type=int, default=2000)
    parser.add_argument("--bitext-queries", type=int, default=1000)
    parser.add_argument("--int8", action="store_true", help="also the int8 variants")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    index_dir = ns.index or ns.models / "answers"
    pairs = index_dir / "pairs.jsonl"
    if not pairs.is_file():
        sys.exit(f"{pairs} does not exist; build the index with `supportbot index build`")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    sample_index = [json.loads(line)["question"] for line in pairs.open(encoding="utf-8")]
    utterances = [
        row["text"]
        for _, row in read_table(
            ns.data / "utterances.csv", ["text"], "pass the folder with --data"
        )
    ]
    rows = read_table(
        ns.datasets / BITEXT,
        ["instruction"],
        f"pass the folder holding {BITEXT.parent} with --datasets",
    )
    random.Random(ns.seed).shuffle(rows)
    bitext = [row["instruction"] for _, row in rows]
    sets = {
        "sample": (sample_index, utterances),
        "bitext": (
            bitext[: ns.bitext_index],
            bitext[ns.bitext_index : ns.bitext_index + ns.bitext_queries],
        ),
    }
    embedder = SentenceEmbedder(index_model(index_dir))
    served = ModelSet.load(ns.models, quantized=True, query_encoder=embedder)
    if served.shared is None or "query" not in served.shared.names:
        sys.exit("these models do not share the answer index's encoder: nothing to compare")
    float32 = {
        name: (embedder(index), embedder(queries)) for name, (index, queries) in sets.items()
    }

    def served_queries(texts: Sequence[str]) -> Vectors:
        found = []
        for start in range(0, len(texts), 16):
            found += [u.query_embedding for u in served.classify(texts[start : start + 16])]
        return np.stack(found).astype(np.float32)

    variants: dict[str, Callable[[Sequence[str]], Vectors]] = {
        "served (models.quantize: float16 weights)": served_queries
    }
    if ns.int8:
        base = MeanPoolingEncoder.load_if_plain(resolve_backbone(embedder.model))
        assert base is not None, "the index's encoder is not a plain mean-pooling encoder"
        for kind in ("int8", "int8 per channel", "int8 attention per channel"):
            quantized = MeanPoolingEncoder(
                int8_variant(base.encoder, kind), base.tokenizer, base.max_length
            )
            variants[kind] = lambda texts, q=quantized: q.encode(texts, 16)
    print(
        f"models {ns.models}, index {index_dir}; queries: sample {len(utterances)}, "
        f"bitext {len(sets['bitext'][1])} against {len(sets['bitext'][0])}"
    )
    print("| query embedding | set | top-1 same as float32 | mean cosine | min cosine |")
    print("|---|---|---:|---:|---:|")
    for name, embed in variants.items():
        for set_name, (_, queries) in sets.items():
            index, reference = float32[set_name]
            same, mean, low = agreement(embed(queries), index, reference)
            print(
                f"| {name} | {set_name} | {same * 100:.1f} % | {mean:.4f} | {low:.3f} |", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

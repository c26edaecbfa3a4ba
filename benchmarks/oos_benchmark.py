"""Out-of-scope detection benchmark: which score tells unknown questions apart, at what cost.

Two intent models are trained with `train_task` and the default recipe (TrainingArguments()):

- in-domain: Banking77 with a seeded quarter of its intents held out of training; the official
  test queries of the other intents are in scope, those of the held-out intents out of scope
  (same bank, same words: the hardest kind);
- near/far-domain: Banking77 on all 77 intents, facing Bitext customer-support queries (a
  shop: accounts, orders, refunds) and tweets to US airlines as out-of-scope traffic.

Each method is fitted on the model's training split and thresholded on its validation split
(`training.ood.fit_detector`: keep `--keep-recall` of the right answers); the
leave-intents-out draws give the pseudo out-of-scope AUROC and the alternative threshold shown
beside it. No test message and no out-of-scope example takes part in any choice. The
in-scope accuracy drop is against the same model answering everything. Reads the data sets
where they lie (default ../shared/datasets, or --datasets PATH); never copies them.

    .venv/bin/python benchmarks/oos_benchmark.py [--work DIR [--reuse]] [--keep-recall 0.98]

--work keeps the two models and their embeddings; --reuse takes them from an earlier run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import html
import json
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from training_benchmark import banking77, write_csv  # benchmarks/, beside this script

from bot.nlu.classifier import load_model, read_meta
from bot.nlu.shared_encoder import transformer_layers
from training.arguments import TrainingArguments
from training.data import Columns, LoadReport, drop_overlap, load_examples, normalize
from training.ood import (
    OosDetector,
    OosMetrics,
    OosOptions,
    SentenceEncoder,
    backbone_sentences,
    fit_detector,
    msp_score,
    oos_metrics,
    pooled_outputs,
)
from training.pipeline import train_task
from training.registry import FileModelRegistry
from training.split import Split, stratified_split

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
# `method` or `method:k=N`; `today` (the stored abstain threshold) is always first.
METHODS = (
    "msp",
    "energy",
    "mahalanobis",
    "knn",
    "sentence-knn",
    "mahalanobis+msp",
    "mahalanobis+energy",
    "mahalanobis+knn",
    "knn+msp",
    "knn+energy",
    "knn+energy:k=5",
    "sentence-knn+energy",
    "knn+energy+sentence-knn",
)
# Bitext intents a bank's customers ask too, named after the Banking77 intent that covers
# them (chosen from the two intent lists, before any score was looked at): reported apart.
BANK_LIKE_BITEXT = {
    "recover_password": "passcode_forgotten",
    "delete_account": "terminate_account",
    "edit_account": "edit_personal_details",
    "get_refund": "request_refund",
    "track_refund": "Refund_not_showing_up",
    "payment_issue": "card_payment_not_recognised",
    "check_payment_methods": "supported_cards_and_currencies",
}
IN_DOMAIN = "held-out intents"
BITEXT, BITEXT_OTHER, AIRLINE = "Bitext (shop)", "Bitext, no bank counterpart", "airline tweets"


@dataclass(frozen=True)
class Outputs:
    """Pooled embeddings and raw logits of a list of texts, their labels (-1: none), and the
    sentence encoder's embeddings of them (what the answer index's encoder gives at run
    time, the same for the float32 and the int8 model)."""

    embeddings: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    sentences: np.ndarray


@dataclass(frozen=True)
class Scenario:
    """A trained model and everything it was fitted and is tested on."""

    name: str
    model_dir: Path
    temperature: float
    abstain_threshold: float
    train: Outputs
    validation: Outputs
    in_scope: Outputs
    oos: dict[str, Outputs]
    served_train: Outputs
    served_validation: Outputs
    served_in_scope: Outputs
    served_oos: dict[str, Outputs]
    train_seconds: float
    embed_seconds: float


def unique_texts(texts: Sequence[str]) -> list[str]:
    """Texts with duplicates dropped as `supportbot train` judges them (case, spacing)."""
    seen: set[str] = set()
    out = []
    for text in texts:
        text = html.unescape(text).strip()
        if text and normalize(text) not in seen:
            seen.add(normalize(text))
            out.append(text)
    return out


def bitext_queries(root: Path, exclude: Sequence[str] = ()) -> list[str]:
    """Bitext's customer queries (de-duplicated), leaving out those of `exclude` intents."""
    path = root / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return unique_texts([row["instruction"] for row in rows if row["intent"] not in exclude])


def airline_tweets(root: Path) -> list[str]:
    path = root / "airline_sentiment" / "Tweets.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        return unique_texts([row["text"] for row in csv.DictReader(handle)])


def reproduce_split(train_csv: Path, test_csv: Path, args: TrainingArguments) -> Split:
    """The train / validation split `train_task` made (same loader, same seed)."""
    examples = load_examples([train_csv], "intent", Columns(), args.min_examples_per_label)
    test = load_examples([test_csv], "intent", Columns(), 0)
    examples = drop_overlap(examples, test, LoadReport())
    return stratified_split(examples, args.validation_fraction, 0.0, args.seed)


def trained_model(
    work: Path, args: TrainingArguments, reuse: bool, progress: bool
) -> tuple[Path, float]:
    """Train on `work`'s train.csv (or, with `reuse`, find the model an earlier run trained);
    returns the model directory and the seconds training took."""
    models = work / "models"
    if reuse:
        path = FileModelRegistry(models).live_path("intent")
        metrics = json.loads((path / "metrics.json").read_text())
        return path, float(metrics["training"]["seconds"])
    started = time.perf_counter()
    run = train_task(
        "intent",
        [work / "train.csv"],
        models,
        args,
        test=[work / "test.csv"],
        progress=progress,
        promote=True,
    )
    return run.version.path, time.perf_counter() - started


def sentences_cached(cache: Path, encoder: SentenceEncoder, texts: Sequence[str]) -> np.ndarray:
    """The sentence encoder's embeddings of `texts`, from `cache` when it holds these texts."""
    key = hashlib.sha256("\x1e".join([encoder.name, *texts]).encode()).hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["key"]) == key:
                return np.asarray(stored["sentences"])
    sentences = encoder.embed(texts)
    np.savez(cache, key=np.array(key), sentences=sentences)
    return sentences


def outputs_cached(
    cache: Path,
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    length: int,
    sentences: np.ndarray,
) -> tuple[Outputs, float]:
    """Embeddings and logits of `texts`, from `cache` when it holds exactly these texts; and
    the seconds computing them took (when cached: the first time)."""
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["key"]) == key:
                seconds = float(stored["seconds"]) if "seconds" in stored.files else float("nan")
                return Outputs(
                    stored["embeddings"], stored["logits"], np.array(labels), sentences
                ), seconds
    started = time.perf_counter()
    embeddings, logits = pooled_outputs(model, tokenizer, texts, length)
    seconds = time.perf_counter() - started
    np.savez(
        cache, key=np.array(key), embeddings=embeddings, logits=logits, seconds=np.array(seconds)
    )
    return Outputs(embeddings, logits, np.array(labels), sentences), seconds


def served_model(model_dir: Path, tuned_layers: int | None) -> Any:
    """The classifier as `supportbot serve` runs it by default: its own (tuned) top layers
    int8-quantized, the shared lower layers float32 (`SharedEncoder.quantize_tops`)."""
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    model, _, _ = load_model(model_dir)
    layers = transformer_layers(model.encoder)
    assert layers is not None
    own = len(layers) if tuned_layers is None else tuned_layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(layers) - own, len(layers)):
            layers[i] = quantize_dynamic(layers[i], {nn.Linear}, dtype=torch.qint8)
    return model


def build_scenario(
    name: str,
    work: Path,
    train_rows: Sequence[tuple[str, str]],
    test_rows: Sequence[tuple[str, str]],
    oos_texts: dict[str, list[str]],
    args: TrainingArguments,
    reuse: bool,
    progress: bool,
) -> Scenario:
    work.mkdir(parents=True, exist_ok=True)
    if not reuse:
        write_csv(list(train_rows), work / "train.csv", "intent")
        write_csv(list(test_rows), work / "test.csv", "intent")
    model_dir, train_seconds = trained_model(work, args, reuse, progress)
    meta = read_meta(model_dir)
    split = reproduce_split(work / "train.csv", work / "test.csv", args)
    sizes = json.loads((model_dir / "data.json").read_text())["sizes"]
    assert (len(split.train), len(split.validation)) == (sizes["train"], sizes["validation"]), (
        "the reproduced split differs from the one train_task made"
    )
    model, tokenizer, _ = load_model(model_dir)
    served = served_model(model_dir, args.tuned_layers)
    index = {label: i for i, label in enumerate(meta.labels)}
    cache = work / "outputs"
    cache.mkdir(exist_ok=True)
    embed_seconds = 0.0
    encoder = backbone_sentences(args.model)

    def outputs(
        part: str, texts: Sequence[str], labels: Sequence[int], int8: bool = False
    ) -> Outputs:
        nonlocal embed_seconds
        out, seconds = outputs_cached(
            cache / f"{'int8-' if int8 else ''}{part}.npz",
            served if int8 else model,
            tokenizer,
            texts,
            labels,
            meta.max_length,
            sentences_cached(cache / f"sentences-{part}.npz", encoder, texts),
        )
        if part in ("train", "validation") and not int8:
            embed_seconds += seconds
        return out

    train_texts, train_labels = [e.text for e in split.train], [index[e.label] for e in split.train]
    val_texts = [e.text for e in split.validation]
    val_labels = [index[e.label] for e in split.validation]
    test_texts = [text for text, _ in test_rows]
    test_labels = [index[label] for _, label in test_rows]

    return Scenario(
        name=name,
        model_dir=model_dir,
        temperature=meta.temperature,
        abstain_threshold=meta.abstain_threshold,
        train=outputs("train", train_texts, train_labels),
        validation=outputs("validation", val_texts, val_labels),
        in_scope=outputs("test", test_texts, test_labels),
        oos={
            part: outputs(f"oos-{part}", texts, [-1] * len(texts))
            for part, texts in oos_texts.items()
        },
        served_train=outputs("train", train_texts, train_labels, int8=True),
        served_validation=outputs("validation", val_texts, val_labels, int8=True),
        served_in_scope=outputs("test", test_texts, test_labels, int8=True),
        served_oos={
            part: outputs(f"oos-{part}", texts, [-1] * len(texts), int8=True)
            for part, texts in oos_texts.items()
        },
        train_seconds=train_seconds,
        embed_seconds=embed_seconds,
    )


@dataclass(frozen=True)
class MethodResult:
    """One method on one scenario's test sets, per out-of-scope set.

    `metrics` at the detector's threshold (the operating point on validation), `draws` at
    the leave-intents-out threshold, `served` at the detector's threshold on the outputs of
    the int8 model `supportbot serve` runs, `served_refit` the same with the detector fitted
    on that model's outputs.
    """

    method: str
    detector: OosDetector | None
    metrics: dict[str, OosMetrics]
    draws: dict[str, OosMetrics]
    served: dict[str, OosMetrics]
    served_refit: dict[str, OosMetrics]
    fit_seconds: float


def measure(
    in_scope: Outputs,
    oos: dict[str, Outputs],
    score: Callable[[Outputs], np.ndarray],
    threshold: float,
) -> dict[str, OosMetrics]:
    correct = in_scope.logits.argmax(1) == in_scope.labels
    in_scores = score(in_scope)
    return {
        part: oos_metrics(in_scores, score(out), threshold, correct) for part, out in oos.items()
    }


def evaluate(scenario: Scenario, spec: str, options: OosOptions) -> MethodResult:
    """Fit the method `spec` (`name` or `name:k=N`) on the scenario's training and
    validation outputs, then score its test sets."""
    if spec == "today":
        # What the bot does now: abstain below the stored calibrated confidence threshold.
        def confidence(out: Outputs) -> np.ndarray:
            return msp_score(out.logits, scenario.temperature)

        threshold = -scenario.abstain_threshold
        stored = measure(scenario.in_scope, scenario.oos, confidence, threshold)
        served = measure(scenario.served_in_scope, scenario.served_oos, confidence, threshold)
        return MethodResult(spec, None, stored, stored, served, served, 0.0)
    method, _, k = spec.partition(":k=")
    options = dataclasses.replace(options, method=method, k=int(k) if k else options.k)

    def fit(train: Outputs, validation: Outputs) -> OosDetector:
        return fit_detector(
            train.embeddings,
            train.labels,
            validation.embeddings,
            validation.logits,
            validation.labels,
            scenario.temperature,
            options,
            train_sentences=train.sentences,
            validation_sentences=validation.sentences,
        )

    started = time.perf_counter()
    detector = fit(scenario.train, scenario.validation)
    fit_seconds = time.perf_counter() - started
    refit = fit(scenario.served_train, scenario.served_validation)
    assert detector.estimate is not None
    draws = float(np.mean(detector.estimate.thresholds))

    def scorer(d: OosDetector) -> Callable[[Outputs], np.ndarray]:
        return lambda out: d.score(out.embeddings, out.logits, out.sentences)

    score = scorer(detector)
    served_in, served_oos = scenario.served_in_scope, scenario.served_oos
    return MethodResult(
        spec,
        detector,
        measure(scenario.in_scope, scenario.oos, score, detector.threshold),
        measure(scenario.in_scope, scenario.oos, score, draws),
        measure(served_in, served_oos, score, detector.threshold),
        measure(served_in, served_oos, scorer(refit), refit.threshold),
        fit_seconds,
    )


def pct(value: float) -> str:
    return f"{value:.1%}"


def drop(m: OosMetrics) -> str:
    return f"{m.accuracy_drop * 100:.1f}"


def thresholds(r: MethodResult) -> str:
    if r.detector is None or r.detector.estimate is None:
        return "stored"
    return f"{r.detector.threshold:.2f} / {np.mean(r.detector.estimate.thresholds):.2f}"


def in_domain_table(results: Sequence[MethodResult]) -> list[str]:
    lines = [
        "| method | threshold: validation / draws | pseudo-OOS AUROC (draws) | AUROC | FPR@95 "
        "| OOS recall | OOS precision | in-scope accuracy: all answered -> with declining "
        "| drop (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r.metrics[IN_DOMAIN]
        estimate = r.detector.estimate if r.detector is not None else None
        lines.append(
            f"| {r.method} | {thresholds(r)} | "
            f"{'' if estimate is None else f'{estimate.auroc:.3f}'} | {m.auroc:.3f} | "
            f"{pct(m.fpr_at_95)} | {pct(m.oos_recall)} | {pct(m.oos_precision)} | "
            f"{pct(m.accuracy)} -> {pct(m.accuracy_with_abstention)} | {drop(m)} |"
        )
    return lines


def near_far_table(results: Sequence[MethodResult], parts: Sequence[str]) -> list[str]:
    header, rule = "| method | threshold: validation / draws |", "|---|---:|"
    for part in parts:
        header += f" {part}: AUROC | FPR@95 | OOS recall |"
        rule += "---:|---:|---:|"
    lines = [
        header + " in-scope accuracy: all answered -> with declining | drop (points) |",
        rule + "---:|---:|",
    ]
    for r in results:
        row = f"| {r.method} | {thresholds(r)} |"
        for part in parts:
            m = r.metrics[part]
            row += f" {m.auroc:.3f} | {pct(m.fpr_at_95)} | {pct(m.oos_recall)} |"
        first = r.metrics[parts[0]]
        lines.append(
            row + f" {pct(first.accuracy)} -> {pct(first.accuracy_with_abstention)} | "
            f"{drop(first)} |"
        )
    return lines


def recall_table(
    in_domain: Sequence[MethodResult],
    near_far: Sequence[MethodResult],
    parts: Sequence[str],
    which: Callable[[MethodResult], dict[str, OosMetrics]],
) -> list[str]:
    """OOS recall and in-scope accuracy drop of every method, both scenarios, one row each."""
    lines = [
        "| method | in-domain OOS recall | drop (points) | "
        + " | ".join(f"{part} OOS recall" for part in parts)
        + " | near/far drop (points) |",
        "|---|---:|---:|" + "---:|" * len(parts) + "---:|",
    ]
    for a, b in zip(in_domain, near_far, strict=True):
        m, near = which(a)[IN_DOMAIN], which(b)
        lines.append(
            f"| {a.method} | {pct(m.oos_recall)} | {drop(m)} | "
            + " | ".join(pct(near[part].oos_recall) for part in parts)
            + f" | {drop(near[parts[0]])} |"
        )
    return lines


def target_lines(in_domain: Sequence[MethodResult], near_far: Sequence[MethodResult]) -> list[str]:
    """Which targets each method meets as served (the int8 model with the detector fitted on
    its outputs, what `supportbot train` and `serve` do) and on the float32 outputs."""

    def missed(a: dict[str, OosMetrics], b: dict[str, OosMetrics]) -> list[str]:
        m = a[IN_DOMAIN]
        checks = {
            "in-domain AUROC": m.auroc >= 0.90,
            "in-domain recall": m.oos_recall >= 0.60,
            "in-domain drop": m.accuracy_drop <= 0.02,
            "Bitext recall": b[BITEXT].oos_recall >= 0.90,
            "airline recall": b[AIRLINE].oos_recall >= 0.90,
            "near/far drop": b[BITEXT].accuracy_drop <= 0.02,
        }
        return [name for name, ok in checks.items() if not ok]

    lines = []
    for a, b in zip(in_domain[1:], near_far[1:], strict=True):
        parts = []
        for label, pick in (
            ("as served", lambda r: r.served_refit),
            ("float32", lambda r: r.metrics),
        ):
            failed = missed(pick(a), pick(b))
            parts.append(
                f"{label}: " + ("all met" if not failed else "missed " + ", ".join(failed))
            )
        lines.append(f"- {a.method}: " + "; ".join(parts))
    return lines


def cost_lines(
    scenario: Scenario, result: MethodResult, work: Path, texts: Sequence[str]
) -> list[str]:
    """Training and inference cost of one detector on one scenario.

    The forward is timed one message at a time on `texts` (float32), as the scoring is.
    """
    detector = result.detector
    assert detector is not None and detector.estimate is not None
    saved = detector.save(
        work / "detectors" / scenario.name.replace("/", "-") / result.method.replace(":", "-")
    )
    size = sum(path.stat().st_size for path in saved)
    rows = scenario.in_scope
    single = min(300, len(rows.labels))
    started = time.perf_counter()
    for i in range(single):
        detector.score(
            rows.embeddings[i : i + 1], rows.logits[i : i + 1], rows.sentences[i : i + 1]
        )
    per_single = (time.perf_counter() - started) / single * 1000
    started = time.perf_counter()
    for start in range(0, len(rows.labels), 64):
        end = start + 64
        detector.score(
            rows.embeddings[start:end], rows.logits[start:end], rows.sentences[start:end]
        )
    per_batched = (time.perf_counter() - started) / len(rows.labels) * 1000
    model, tokenizer, meta = load_model(scenario.model_dir)
    pooled_outputs(model, tokenizer, texts[:5], meta.max_length)  # warm-up
    started = time.perf_counter()
    for text in texts:
        pooled_outputs(model, tokenizer, [text], meta.max_length)
    forward = (time.perf_counter() - started) / len(texts) * 1000
    n_fit = len(scenario.train.labels) + len(scenario.validation.labels)
    return [
        f"- {scenario.name}, {result.method}: fit {result.fit_seconds:.1f} s (with "
        f"{len(detector.estimate.thresholds)} leave-intents-out draws), after one forward over "
        f"the {n_fit} training + validation texts ({scenario.embed_seconds:.0f} s), beside "
        f"{scenario.train_seconds / 60:.1f} min of fine-tuning; scoring "
        f"{per_single:.2f} ms per message alone, {per_batched:.3f} ms per message in batches "
        f"of 64, beside {forward:.1f} ms for the forward of one message; on disk "
        f"{size / 1e6:.2f} MB ({', '.join(p.name for p in saved)})",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--work", type=Path, help="keep models and embeddings here")
    parser.add_argument(
        "--reuse", action="store_true", help="use the models and embeddings of an earlier --work"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--held-out-share", type=float, default=0.25)
    defaults = OosOptions()
    parser.add_argument("--keep-recall", type=float, default=defaults.keep_recall)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--draws", type=int, default=defaults.draws)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument(
        "--cost", nargs="*", default=[defaults.method, "knn+energy"], help="methods timed"
    )
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    if not ns.datasets.is_dir():
        print(f"no data sets at {ns.datasets}; pass --datasets PATH", file=sys.stderr)
        return 2
    if ns.reuse and ns.work is None:
        print("--reuse needs --work DIR (the directory of an earlier run)", file=sys.stderr)
        return 2
    work = ns.work or Path(tempfile.mkdtemp(prefix="oos-benchmark-"))
    options = OosOptions(keep_recall=ns.keep_recall, k=ns.k, draws=ns.draws, seed=ns.seed)
    args = TrainingArguments(seed=ns.seed)

    banking = banking77(ns.datasets, ns.seed)
    train, test = banking.train, banking.test
    intents = sorted({label for _, label in train})
    rng = random.Random(ns.seed)
    held = set(rng.sample(intents, round(len(intents) * ns.held_out_share)))
    print(f"held-out intents ({len(held)} of {len(intents)}): {', '.join(sorted(held))}")

    in_domain = build_scenario(
        "in-domain",
        work / "in-domain",
        [row for row in train if row[1] not in held],
        [row for row in test if row[1] not in held],
        {IN_DOMAIN: [text for text, label in test if label in held]},
        args,
        ns.reuse,
        not ns.no_progress,
    )
    near_far = build_scenario(
        "near/far-domain",
        work / "all-77",
        train,
        test,
        {
            BITEXT: bitext_queries(ns.datasets),
            BITEXT_OTHER: bitext_queries(ns.datasets, exclude=list(BANK_LIKE_BITEXT)),
            AIRLINE: airline_tweets(ns.datasets),
        },
        args,
        ns.reuse,
        not ns.no_progress,
    )
    for scenario in (in_domain, near_far):
        print(
            f"[{scenario.name}] {scenario.model_dir}: train {len(scenario.train.labels)}, "
            f"validation {len(scenario.validation.labels)}, in-scope test "
            f"{len(scenario.in_scope.labels)}, out of scope "
            + ", ".join(f"{part} {len(out.labels)}" for part, out in scenario.oos.items())
            + f"; fine-tuning {scenario.train_seconds / 60:.1f} min, temperature "
            f"{scenario.temperature:.3f}, stored abstain threshold {scenario.abstain_threshold:.3f}"
        )
    methods = ["today", *ns.methods]
    a = [evaluate(in_domain, m, options) for m in methods]
    b = [evaluate(near_far, m, options) for m in methods]
    parts = list(near_far.oos)

    print(
        f"\nIn-domain: Banking77, {len(held)} intents held out of training, their official test "
        f"queries out of scope; keep_recall {options.keep_recall} (threshold on validation), "
        f"{options.draws} leave-intents-out draws of {options.holdout_share:.0%} of the intents"
    )
    print("\n".join(in_domain_table(a)))
    print("\nNear/far-domain: the model trained on all 77 intents; the official test set in scope")
    print("\n".join(near_far_table(b, parts)))
    print("\nWith the leave-intents-out threshold (the mean of the draws') instead")
    print("\n".join(recall_table(a, b, parts, lambda r: r.draws)))
    print(
        "\nAs served (`models.quantize`, the default: the tuned top layers int8), detectors "
        "fitted on the float32 model's outputs"
    )
    print("\n".join(recall_table(a, b, parts, lambda r: r.served)))
    print("\nAs served, detectors fitted on the int8 model's own outputs")
    print("\n".join(recall_table(a, b, parts, lambda r: r.served_refit)))
    print(
        "\nTargets: in-domain AUROC >= 0.90 and OOS recall >= 60 %; near/far OOS recall >= 90 %; "
        "in-scope accuracy drop <= 2 points"
    )
    print("\n".join(target_lines(a, b)))
    print("\nCost")
    sample = [text for text, _ in test[:100]]
    for scenario, results in ((in_domain, a), (near_far, b)):
        for r in results:
            if r.method in ns.cost:
                print("\n".join(cost_lines(scenario, r, work, sample)))
    print(f"work directory {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

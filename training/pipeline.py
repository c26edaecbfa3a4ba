"""One training run from files to a registered model version."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bot.classifier import ClassifierMeta, TransformerClassifier, save_classifier
from training.arguments import TrainingArguments
from training.calibration import calibrate
from training.data import Columns, Example, LoadReport, drop_overlap, load_examples
from training.evaluation import compute_metrics, plot_confusion, render_report
from training.registry import FileModelRegistry, ModelVersion
from training.split import stratified_split
from training.trainer import FineTuneResult, encode, fine_tune, predict_logits

REPORT_FILE = "report.txt"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """What `train_task` produced."""

    version: ModelVersion
    report: str
    metrics: dict[str, Any]
    load_report: LoadReport


def fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the (text, label) pairs, independent of file names and order."""
    digest = hashlib.sha256()
    for text, label in sorted((e.text, e.label) for e in examples):
        digest.update(text.encode())
        digest.update(b"\x1f")
        digest.update(label.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def evaluate_examples(
    classifier_logits: torch.Tensor,
    examples: Sequence[Example],
    labels: Sequence[str],
    temperature: float,
    threshold: float,
) -> dict[str, Any]:
    """Metrics for examples given the model's raw logits on them."""
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index.get(e.label, -1) for e in examples], dtype=int)
    probs = torch.softmax(classifier_logits / temperature, dim=-1).numpy()
    metrics = compute_metrics(probs, targets, labels, threshold)
    unknown = sorted({e.label for e in examples if e.label not in index})
    if unknown:
        metrics["unknown_labels"] = unknown
    return metrics


def evaluate_model(
    classifier: TransformerClassifier, examples: Sequence[Example]
) -> dict[str, Any]:
    """Evaluate a saved model on labelled examples (the `supportbot evaluate` command)."""
    logits = classifier.logits([e.text for e in examples])
    return evaluate_examples(
        logits,
        examples,
        classifier.labels,
        classifier.meta.temperature,
        classifier.meta.abstain_threshold,
    )


def _history(result: FineTuneResult) -> list[dict[str, Any]]:
    return [
        {
            "epoch": h.epoch,
            "train_loss": round(h.train_loss, 5),
            "validation_macro_f1": h.validation_macro_f1,
            "validation_accuracy": h.validation_accuracy,
            "seconds": round(h.seconds, 2),
        }
        for h in result.history
    ]


def train_task(
    task: str,
    data: Sequence[Path],
    out: Path,
    args: TrainingArguments,
    test: Sequence[Path] = (),
    columns: Columns = Columns(),
    progress: bool = True,
    promote: bool | None = None,
    init_from: Path | None = None,
    extra_examples: Sequence[Example] = (),
) -> TrainingRun:
    """Validate data, fine-tune, calibrate, evaluate and register a new version.

    Args:
        task: `intent` or `sentiment`.
        data: training files or directories.
        out: the models root (registry).
        args: hyperparameters.
        test: a separate test set; otherwise a stratified share of `data` is held out.
        columns: text/label field names for flat files.
        progress: show the progress bar.
        promote: see `FileModelRegistry.commit`.
        init_from: continue from this model directory (retraining).
        extra_examples: examples from elsewhere (e.g. the store) added to `data`.

    Raises:
        DataValidationError: the data has problems; nothing was written.
    """
    started = time.perf_counter()
    load_report = LoadReport()
    examples = list(load_examples(data, task, columns, args.min_examples_per_label, load_report))
    examples += extra_examples
    test_examples: list[Example] = []
    if test:
        test_report = LoadReport()
        test_examples = load_examples(test, task, columns, 0, test_report)
        examples = drop_overlap(examples, test_examples, load_report)
    split = stratified_split(
        examples,
        args.validation_fraction,
        0.0 if test else args.test_fraction,
        args.seed,
    )
    if not test:
        test_examples = split.test
    labels = tuple(sorted({e.label for e in examples}))

    result = fine_tune(split.train, split.validation, labels, args, progress, init_from)
    pad_id = result.tokenizer.pad_token_id or 0
    val_ids = encode(result.tokenizer, [e.text for e in split.validation], args.max_length)
    val_logits = predict_logits(result.model, val_ids, pad_id)
    index = {label: i for i, label in enumerate(labels)}
    val_targets = torch.tensor([index[e.label] for e in split.validation], dtype=torch.long)
    calibration = calibrate(val_logits, val_targets, args.abstain_precision)

    report_source = "held-out test set" if test else "held-out test split"
    if not test_examples:
        # Nothing was held out for testing (tiny labels or test_fraction 0): report on what
        # was held out, and say so; fall back to training data only as a last resort.
        if split.validation:
            test_examples, report_source = split.validation, "validation split (no test data)"
        else:
            test_examples = split.train
            report_source = "training data (nothing held out: figures are optimistic)"
    test_ids = encode(result.tokenizer, [e.text for e in test_examples], args.max_length)
    test_logits = predict_logits(result.model, test_ids, pad_id)
    test_metrics = evaluate_examples(
        test_logits, test_examples, labels, calibration.temperature, calibration.threshold
    )
    val_metrics = evaluate_examples(
        val_logits, split.validation, labels, calibration.temperature, calibration.threshold
    )

    registry = FileModelRegistry(out)
    staging = registry.stage(task)
    try:
        meta = ClassifierMeta(
            task=task,
            labels=labels,
            max_length=args.max_length,
            temperature=calibration.temperature,
            abstain_threshold=calibration.threshold,
            backbone=args.model,
        )
        save_classifier(result.model, result.tokenizer, meta, staging)
        (staging / "label_map.json").write_text(
            json.dumps({"id2label": dict(enumerate(labels))}, indent=2) + "\n"
        )
        (staging / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
        data_info = {
            "fingerprint": fingerprint(examples),
            "test_fingerprint": fingerprint(test_examples),
            "files": load_report.files,
            "test_files": [str(p) for p in test],
            "sizes": {
                "train": len(split.train),
                "validation": len(split.validation),
                "test": len(test_examples),
            },
            "label_counts": {
                label: sum(1 for e in examples if e.label == label) for label in labels
            },
        }
        (staging / "data.json").write_text(json.dumps(data_info, indent=2) + "\n")
        metrics = {
            "task": task,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "evaluated_on": report_source,
            "test": test_metrics,
            "validation": val_metrics,
            "calibration": {
                "temperature": calibration.temperature,
                "abstain_threshold": calibration.threshold,
                "validation_ece_before": calibration.ece_before,
                "validation_ece_after": calibration.ece_after,
                "validation_coverage": calibration.coverage,
                "validation_precision_at_threshold": calibration.precision_at_threshold,
            },
            "training": {
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "seconds": round(time.perf_counter() - started, 1),
                "class_weights": result.class_weights,
                "history": _history(result),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            # Headline figures at the top level, for `evaluate --json`-style consumers.
            "accuracy": test_metrics["accuracy"],
            "macro_f1": test_metrics["macro_f1"],
            "per_class": test_metrics["per_class"],
        }
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        report = render_report(test_metrics, f"{task} model on the {report_source}")
        report += (
            f"\ncalibration: temperature {calibration.temperature:.3f}, validation ECE "
            f"{calibration.ece_before:.4f} -> {calibration.ece_after:.4f}\n"
            f"training: {len(split.train)} train / {len(split.validation)} validation / "
            f"{len(test_examples)} test examples, {len(result.history)} epoch(s), best epoch "
            f"{result.best_epoch}, {metrics['training']['seconds']} s\n"
        )
        (staging / REPORT_FILE).write_text(report)
        plot_confusion(test_metrics["confusion_matrix"], labels, staging / CONFUSION_FILE)
        version = registry.commit(task, staging, promote=promote)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainingRun(version=version, report=report, metrics=metrics, load_report=load_report)

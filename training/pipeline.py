"""One training run from files to a registered model version."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bot.core.datafiles import DEFAULT_LIMITS, InputLimits, normalize
from bot.core.errors import ModelNotFoundError
from bot.nlu.artifacts import REPLAY_POOL_FILE, TEST_SET_FILE
from bot.nlu.classifier import ClassifierMeta, TransformerClassifier, save_classifier
from training.arguments import TrainingArguments
from training.calibration import calibrate, weighting_correction
from training.data import (
    Columns,
    ConflictPolicy,
    Example,
    LoadReport,
    drop_overlap,
    load_examples,
)
from training.evaluation import compute_metrics, plot_confusion, render_report
from training.ood import FittedDetector, OosOptions, backbone_sentences, fit_for_model
from training.registry import FileModelRegistry, ModelVersion
from training.split import Split, split_like, stratified_split
from training.trainer import Companion, FineTuneResult, encode, fine_tune, predict_logits

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


@dataclass
class FittedClassifier:
    """A fine-tuned, calibrated classifier in memory, not yet registered.

    `train_task` registers it at once; `supportbot retrain` first compares it with the live
    model and registers it either way, live only when the gate passes.
    """

    task: str
    labels: tuple[str, ...]
    args: TrainingArguments
    result: FineTuneResult
    temperature: float
    threshold: float
    calibration: dict[str, Any]
    validation_metrics: dict[str, Any]
    oos: FittedDetector | None = None

    def evaluate(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Metrics on labelled examples (labels it does not know count as wrong)."""
        pad_id = self.result.tokenizer.pad_token_id or 0
        ids = encode(self.result.tokenizer, [e.text for e in examples], self.args.max_length)
        logits = (
            predict_logits(self.result.model, ids, pad_id)
            if ids
            else torch.empty(0, len(self.labels))
        )
        return evaluate_examples(logits, examples, self.labels, self.temperature, self.threshold)


def fit_classifier(
    task: str,
    train: Sequence[Example],
    validation: Sequence[Example],
    args: TrainingArguments,
    progress: bool = True,
    init_from: Path | None = None,
    labels: Sequence[str] | None = None,
    align: bool = True,
) -> FittedClassifier:
    """Fine-tune on `train`, keep the best epoch by `validation`, calibrate on `validation`.

    Args:
        labels: the head's labels (default: those in `train` and `validation`, sorted).
        align: see `fine_tune`.
    """
    labels = tuple(labels or sorted({e.label for e in [*train, *validation]}))
    result = fine_tune(train, validation, labels, args, progress, init_from, align)
    return calibrated_fit(task, result, train, validation, args)


def fit_joint(
    first: tuple[str, Sequence[Example], Sequence[Example], Sequence[str]],
    second: tuple[str, Sequence[Example], Sequence[Example], Sequence[str]],
    args: TrainingArguments,
    progress: bool = True,
    init_from: tuple[Path, Path] | None = None,
    align: bool = True,
) -> tuple[FittedClassifier, FittedClassifier]:
    """Fine-tune two tasks on one encoder (each `(task, train, validation, labels)`), then
    calibrate each model on its own validation examples (`fine_tune`'s `companion`).

    Args:
        init_from: the live pair to start from (a retrain), first task's model first.
        align: see `fine_tune`.
    """
    (task_a, train_a, val_a, labels_a), (task_b, train_b, val_b, labels_b) = first, second
    start_a, start_b = init_from if init_from is not None else (None, None)
    result = fine_tune(
        train_a,
        val_a,
        labels_a,
        args,
        progress,
        start_a,
        align,
        companion=Companion(train_b, val_b, labels_b, init_from=start_b),
    )
    assert result.companion is not None
    return (
        calibrated_fit(task_a, result, train_a, val_a, args),
        calibrated_fit(task_b, result.companion, train_b, val_b, args),
    )


def calibrated_fit(
    task: str,
    result: FineTuneResult,
    train: Sequence[Example],
    validation: Sequence[Example],
    args: TrainingArguments,
) -> FittedClassifier:
    """Calibrate a fine-tuned model on `validation` (temperature, abstain threshold, class
    weighting taken back) and, for intent models, fit the out-of-scope detector."""
    labels = result.labels
    pad_id = result.tokenizer.pad_token_id or 0
    val_ids = encode(result.tokenizer, [e.text for e in validation], args.max_length)
    val_logits = predict_logits(result.model, val_ids, pad_id)
    index = {label: i for i, label in enumerate(labels)}
    val_targets = torch.tensor([index[e.label] for e in validation], dtype=torch.long)
    correction = 0.0
    if result.class_weights is not None:
        # Folded into the head's bias: the saved model decides the corrected way everywhere.
        correction, shift = weighting_correction(val_logits, val_targets, result.class_weights)
        if correction:
            with torch.no_grad():
                result.model.head.bias.add_(shift.to(result.model.head.bias.dtype))
            val_logits = val_logits + shift
    calibration = calibrate(val_logits, val_targets, args.abstain_precision)
    val_metrics = evaluate_examples(
        val_logits, validation, labels, calibration.temperature, calibration.threshold
    )
    oos = None
    if task == "intent" and args.oos_method != "none":
        oos = fit_for_model(
            result.model,
            result.tokenizer,
            labels,
            [(e.text, e.label) for e in train],
            [(e.text, e.label) for e in validation],
            calibration.temperature,
            args.max_length,
            OosOptions(method=args.oos_method, keep_recall=args.oos_keep_recall, seed=args.seed),
            args.tuned_layers,
            args.oos_label,
            backbone_sentences(args.model),
        )
    return FittedClassifier(
        task=task,
        labels=labels,
        args=args,
        result=result,
        temperature=calibration.temperature,
        threshold=calibration.threshold,
        calibration={
            "temperature": calibration.temperature,
            "abstain_threshold": calibration.threshold,
            "validation_ece_before": calibration.ece_before,
            "validation_ece_after": calibration.ece_after,
            "validation_coverage": calibration.coverage,
            "validation_precision_at_threshold": calibration.precision_at_threshold,
            "class_weighting_taken_back": correction,
        },
        validation_metrics=val_metrics,
        oos=oos,
    )


def oos_summary(
    oos: FittedDetector | None, test_figures: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The `out_of_scope` entry of metrics.json (None for a model without a detector)."""
    if oos is None:
        return None
    detector = oos.detector
    return {
        "note": oos.note,
        "label": oos.oos_label,
        "method": detector.method if detector else None,
        "keep_recall": detector.keep_recall if detector else None,
        "threshold": detector.threshold if detector else None,
        "leave_intents_out": detector.estimate.to_dict()
        if detector and detector.estimate
        else None,
        "test": test_figures,
    }


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    """Save labelled examples as JSONL (`text`, `label`, `source`, `line`)."""
    with path.open("w", encoding="utf-8") as handle:
        for e in examples:
            record = {"text": e.text, "label": e.label, "source": e.source, "line": e.line}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_examples(path: Path) -> list[Example]:
    """Read examples saved by `write_examples`."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            out.append(
                Example(
                    str(record["text"]),
                    str(record["label"]),
                    str(record.get("source", path)),
                    int(record.get("line", 0)),
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class VersionData:
    """What a registered version needs saved besides the model, for later retraining.

    Attributes:
        test: the frozen test set the version was evaluated on (`test_set.jsonl`); a retrain
            compares candidate and live model on exactly these examples.
        pool: every labelled example the version's lineage learned from, minus the test set
            (`replay_pool.jsonl`); a retrain replays a sample of it so old intents are kept.
        test_source: how the test set was chosen, for the report.
        info: extra entries for `data.json` (files read, feedback counts, ...).
        train_size: examples actually trained on.
    """

    test: Sequence[Example]
    pool: Sequence[Example]
    test_source: str
    info: dict[str, Any]
    train_size: int


def register_version(
    out: Path,
    fitted: FittedClassifier,
    data: VersionData,
    started: float,
    promote: bool | None,
    test_metrics: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> tuple[ModelVersion, str, dict[str, Any]]:
    """Write the model, its data and its reports to a staging directory, then commit it.

    Args:
        out: the models root (registry).
        fitted: from `fit_classifier`.
        data: test set, replay pool and data facts (see `VersionData`).
        started: `time.perf_counter()` at the start of the run (for the report).
        promote: see `FileModelRegistry.commit`.
        test_metrics: the metrics on `data.test` when already computed.
        extra_files: writes more files into the staging directory before the commit.

    Returns:
        The version, the readable report and the metrics.
    """
    task, labels, args, result = fitted.task, fitted.labels, fitted.args, fitted.result
    test_metrics = test_metrics if test_metrics is not None else fitted.evaluate(data.test)
    registry = FileModelRegistry(out)
    staging = registry.stage(task)
    try:
        meta = ClassifierMeta(
            task=task,
            labels=labels,
            max_length=args.max_length,
            temperature=fitted.temperature,
            abstain_threshold=fitted.threshold,
            backbone=args.model,
        )
        save_classifier(result.model, result.tokenizer, meta, staging)
        oos_figures = None
        if fitted.oos is not None and fitted.oos.detector is not None:
            fitted.oos.detector.save(staging)
            oos_figures = fitted.oos.test_figures(
                result.tokenizer, labels, [(e.text, e.label) for e in data.test], args.max_length
            )
        (staging / "label_map.json").write_text(
            json.dumps({"id2label": dict(enumerate(labels))}, indent=2) + "\n"
        )
        (staging / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
        write_examples(staging / TEST_SET_FILE, data.test)
        write_examples(staging / REPLAY_POOL_FILE, data.pool)
        data_info = {
            "fingerprint": fingerprint([*data.pool, *data.test]),
            "test_fingerprint": fingerprint(data.test),
            "pool_fingerprint": fingerprint(data.pool),
            **data.info,
            "sizes": {
                "train": data.train_size,
                "validation": fitted.validation_metrics["n"],
                "test": len(data.test),
                "replay_pool": len(data.pool),
            },
            "label_counts": {
                label: sum(1 for e in [*data.pool, *data.test] if e.label == label)
                for label in labels
            },
        }
        (staging / "data.json").write_text(json.dumps(data_info, indent=2) + "\n")
        seconds = round(time.perf_counter() - started, 1)
        metrics = {
            "task": task,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "evaluated_on": data.test_source,
            "test": test_metrics,
            "validation": fitted.validation_metrics,
            "calibration": fitted.calibration,
            "out_of_scope": oos_summary(fitted.oos, oos_figures),
            "training": {
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "seconds": seconds,
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
        report = render_report(test_metrics, f"{task} model on the {data.test_source}")
        taken_back = fitted.calibration.get("class_weighting_taken_back", 0.0)
        report += (
            f"\ncalibration: temperature {fitted.temperature:.3f}, validation ECE "
            f"{fitted.calibration['validation_ece_before']:.4f} -> "
            f"{fitted.calibration['validation_ece_after']:.4f}"
            + (
                f", {taken_back:.0%} of the class weighting taken back from the decisions"
                if taken_back
                else ""
            )
            + "\n"
            f"training: {data.train_size} train / {fitted.validation_metrics['n']} validation / "
            f"{len(data.test)} test examples, {len(result.history)} epoch(s), best epoch "
            f"{result.best_epoch}, {seconds} s\n"
        )
        if fitted.oos is not None:
            report += fitted.oos.note + "\n"
            if oos_figures is not None and oos_figures["in_scope_declined"] is not None:
                report += (
                    f"out of scope on the {data.test_source}: "
                    f"{oos_figures['in_scope_declined']:.1%} of in-scope messages declined, "
                    f"accuracy {oos_figures['accuracy']:.1%} -> "
                    f"{oos_figures['accuracy_with_declines']:.1%} with declines"
                    + (
                        f"; {oos_figures['oos_recall']:.1%} of {oos_figures['n_oos']} "
                        "out-of-scope examples declined"
                        if "oos_recall" in oos_figures
                        else ""
                    )
                    + "\n"
                )
        (staging / REPORT_FILE).write_text(report)
        # The version commit will give it (the title's only; a concurrent run may take it).
        upcoming = 1 + max((int(v.version[1:]) for v in registry.versions(task)), default=0)
        plot_confusion(
            test_metrics["confusion_matrix"],
            labels,
            staging / CONFUSION_FILE,
            subject=f"{task} v{upcoming}",
        )
        if extra_files is not None:
            extra_files(staging)
        version = registry.commit(task, staging, promote=promote)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version, report, metrics


@dataclass
class _TaskData:
    """One task's examples, read, checked and split, before training."""

    task: str
    examples: list[Example]
    split: Split
    test: list[Example]
    labels: tuple[str, ...]
    load_report: LoadReport


def _load_task(
    task: str,
    data: Sequence[Path],
    args: TrainingArguments,
    test: Sequence[Path],
    columns: Columns,
    extra_examples: Sequence[Example],
    limits: InputLimits,
    on_conflict: ConflictPolicy,
    like: Split | None = None,
) -> _TaskData:
    """Read and split a task's data (`like`: follow that split text by text, `split_like`)."""
    load_report = LoadReport()
    examples = list(
        load_examples(
            data, task, columns, args.min_examples_per_label, load_report, limits, on_conflict
        )
    )
    examples += extra_examples
    test_examples: list[Example] = []
    if test:
        test_report = LoadReport()
        test_examples = load_examples(test, task, columns, 0, test_report, limits, on_conflict)
        examples = drop_overlap(examples, test_examples, load_report)
    test_fraction = 0.0 if test else args.test_fraction
    split = (
        stratified_split(examples, args.validation_fraction, test_fraction, args.seed)
        if like is None
        else split_like(
            examples, like, normalize, args.validation_fraction, test_fraction, args.seed
        )
    )
    if not test:
        test_examples = split.test
    labels = tuple(sorted({e.label for e in examples}))
    return _TaskData(task, examples, split, test_examples, labels, load_report)


def _register_task(
    out: Path,
    fitted: FittedClassifier,
    prepared: _TaskData,
    test: Sequence[Path],
    started: float,
    promote: bool | None,
    info: dict[str, Any] | None = None,
) -> TrainingRun:
    """Register a model fitted on `prepared`, with its test set and replay pool."""
    split, test_examples = prepared.split, prepared.test
    report_source = "held-out test set" if test else "held-out test split"
    if not test_examples:
        # Nothing was held out for testing (tiny labels or test_fraction 0): report on what
        # was held out, and say so; fall back to training data only as a last resort.
        if split.validation:
            test_examples, report_source = split.validation, "validation split (no test data)"
        else:
            test_examples = split.train
            report_source = "training data (nothing held out: figures are optimistic)"
    test_keys = {normalize(e.text) for e in test_examples}
    pool = [e for e in [*split.train, *split.validation] if normalize(e.text) not in test_keys]
    if not pool:
        pool = list(split.train)  # the training-data fallback: nothing else to replay
    version, report, metrics = register_version(
        out,
        fitted,
        VersionData(
            test=test_examples,
            pool=pool,
            test_source=report_source,
            info={
                "fingerprint": fingerprint(prepared.examples),
                "files": prepared.load_report.files,
                "test_files": [str(p) for p in test],
                **(info or {}),
            },
            train_size=len(split.train),
        ),
        started,
        promote,
    )
    return TrainingRun(
        version=version, report=report, metrics=metrics, load_report=prepared.load_report
    )


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
    limits: InputLimits = DEFAULT_LIMITS,
    on_conflict: ConflictPolicy = "error",
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
        limits: the longest text and line and the largest file read from `data` and `test`.
        on_conflict: texts with two labels in `data` or `test` (`load_examples`).

    Raises:
        DataValidationError: the data has problems; nothing was written.
    """
    started = time.perf_counter()
    prepared = _load_task(task, data, args, test, columns, extra_examples, limits, on_conflict)
    split = prepared.split
    fitted = fit_classifier(
        task, split.train, split.validation, args, progress, init_from, prepared.labels
    )
    return _register_task(out, fitted, prepared, test, started, promote)


JOINT_TASKS = ("intent", "sentiment")


def train_joint(
    data: Sequence[Path],
    out: Path,
    args: TrainingArguments,
    test: Sequence[Path] = (),
    columns: Columns = Columns(),
    progress: bool = True,
    promote: bool | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    on_conflict: ConflictPolicy = "error",
) -> list[TrainingRun]:
    """Train the intent and sentiment classifiers together on one encoder and register a
    version of each (`supportbot train intent+sentiment`).

    Both read `data` (each task its own labels; a text may carry both), are split text by
    text the same way, and fine-tune the same tuned layers with a head each. The two
    versions have identical encoders, so the bot runs their tuned layers once per message
    instead of once per model (issue 19). Each version is an ordinary classifier: it loads,
    evaluates, promotes and retrains like one trained alone.

    Raises:
        DataValidationError: either task's data has problems; nothing was written.
    """
    started = time.perf_counter()
    intent = _load_task(JOINT_TASKS[0], data, args, test, columns, (), limits, on_conflict)
    sentiment = _load_task(
        JOINT_TASKS[1], data, args, test, columns, (), limits, on_conflict, like=intent.split
    )
    fitted = fit_joint(
        (intent.task, intent.split.train, intent.split.validation, intent.labels),
        (sentiment.task, sentiment.split.train, sentiment.split.validation, sentiment.labels),
        args,
        progress,
    )
    first = _register_task(out, fitted[0], intent, test, started, promote)
    second = _register_task(
        out,
        fitted[1],
        sentiment,
        test,
        started,
        promote,
        info={"trained_with": f"{first.version.task}/{first.version.version}"},
    )
    return [first, second]


def frozen_data(version_dir: Path) -> tuple[list[Example], list[Example]]:
    """The frozen test set and the replay pool saved with a version.

    Raises:
        ModelNotFoundError: the version was trained before these files were kept.
    """
    test_path, pool_path = version_dir / TEST_SET_FILE, version_dir / REPLAY_POOL_FILE
    if not (test_path.is_file() and pool_path.is_file()):
        raise ModelNotFoundError(
            f"{version_dir} has no {TEST_SET_FILE} / {REPLAY_POOL_FILE} (it was trained by an "
            "older supportbot), so it cannot be compared on the test set it was evaluated on; "
            "train the task once more with `supportbot train ... --promote yes`, then retrain"
        )
    return read_examples(test_path), read_examples(pool_path)

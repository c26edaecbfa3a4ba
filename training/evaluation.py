"""Metrics, the readable report and the confusion-matrix picture of a classifier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from training.calibration import expected_calibration_error


def compute_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.0,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1, calibration error and abstention.

    Args:
        probs: calibrated probabilities, shape (n, len(labels)).
        targets: index of the true label per row; -1 for a label the model does not know
            (counted as wrong, and listed under `unknown_labels` by the caller).
        labels: label names in column order.
        threshold: the model's abstain threshold.
    """
    if len(targets) == 0:
        empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {
            "n": 0,
            "accuracy": 0.0,
            "macro_f1": 0.0,
            "weighted_f1": 0.0,
            "ece": 0.0,
            "abstain_threshold": float(threshold),
            "coverage": 0.0,
            "accuracy_when_confident": 0.0,
            "per_class": {label: dict(empty) for label in labels},
            "confusion_matrix": [],
            "labels": list(labels),
        }
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    index = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=index, zero_division=0
    )
    present = [i for i in index if support[i] > 0]
    per_class = {
        labels[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in index
    }
    covered = confidence >= threshold
    known = targets >= 0
    return {
        "n": int(len(targets)),
        "accuracy": float(accuracy_score(targets, predicted)) if len(targets) else 0.0,
        # Macro over the labels that occur in this set: a label with no examples has no recall.
        "macro_f1": float(
            f1_score(targets, predicted, labels=present, average="macro", zero_division=0)
        )
        if present
        else 0.0,
        "weighted_f1": float(
            f1_score(targets, predicted, labels=present, average="weighted", zero_division=0)
        )
        if present
        else 0.0,
        "ece": expected_calibration_error(probs[known], targets[known]) if known.any() else 0.0,
        "abstain_threshold": float(threshold),
        "coverage": float(covered.mean()) if len(covered) else 0.0,
        "accuracy_when_confident": float((predicted[covered] == targets[covered]).mean())
        if covered.any()
        else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(targets, predicted, labels=index).tolist()
        if known.any()
        # Only labels the model does not know (a retrain's new intents, judged on the live
        # model): no row to fill, and sklearn refuses such a matrix.
        else np.zeros((len(labels), len(labels)), dtype=int).tolist()
        if len(targets)
        else [],
        "labels": list(labels),
    }


def render_report(metrics: dict[str, Any], title: str) -> str:
    """A plain-text report: headline figures, then precision/recall/F1 per class."""
    lines = [
        title,
        "=" * len(title),
        f"examples            {metrics['n']}",
        f"accuracy            {metrics['accuracy']:.4f}",
        f"macro F1            {metrics['macro_f1']:.4f}",
        f"weighted F1         {metrics['weighted_f1']:.4f}",
        f"calibration (ECE)   {metrics['ece']:.4f}",
        f"abstain threshold   {metrics['abstain_threshold']:.3f}  "
        f"(answers {metrics['coverage']:.1%} of messages, "
        f"{metrics['accuracy_when_confident']:.1%} of those right)",
    ]
    if metrics.get("unknown_labels"):
        lines.append(
            "labels the model does not know (counted wrong): "
            + ", ".join(metrics["unknown_labels"])
        )
    width = max([len("class")] + [len(label) for label in metrics["per_class"]])
    lines += ["", f"{'class':<{width}}  precision  recall     f1  support"]
    labels = metrics.get("labels", list(metrics["per_class"]))
    matrix = np.asarray(metrics.get("confusion_matrix") or [], dtype=int)
    predicted = dict(zip(labels, matrix.sum(axis=0), strict=True)) if matrix.size else {}
    rows = sorted(metrics["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    for label, row in rows:
        if row["support"] == 0 and not predicted.get(label, 0):
            continue  # neither in this set nor ever predicted: nothing to say
        lines.append(
            f"{label:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
            f"{row['f1']:5.3f}  {row['support']:7d}"
        )
    lines.append("(classes sorted from weakest F1 up)")
    return "\n".join(lines) + "\n"


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> None:
    """Save a row-normalised confusion-matrix heat map as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    if counts.size == 0:
        counts = np.zeros((len(labels), len(labels)))
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(5.0, 0.28 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (share of each true class)")
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        str(int(counts[i, j])),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=colour,
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

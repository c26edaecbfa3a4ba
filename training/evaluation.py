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


PLOT_DPI = 110
#: smallest number/label size in points: 7 pt at 110 dpi is about 10.7 px, readable on screen.
MIN_FONT_PT = 7.0


def confusion_font_pt(label_count: int) -> float:
    """The size of the numbers and labels: larger for a few labels, never below MIN_FONT_PT."""
    return max(MIN_FONT_PT, min(12.0, 13.0 - 0.1 * label_count))


def confusion_title(matrix: Sequence[Sequence[int]], subject: str = "") -> str:
    """`subject: n=..., accuracy ...` from the matrix itself, so it cannot disagree with it."""
    counts = np.asarray(matrix, dtype=float)
    n = int(counts.sum()) if counts.size else 0
    accuracy = float(np.trace(counts)) / n if n else 0.0
    head = f"{subject}: " if subject else ""
    return f"{head}n={n}, accuracy {accuracy:.1%}\nshare of each true class; numbers are counts"


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, subject: str = ""
) -> None:
    """Save a row-normalised confusion-matrix heat map as a PNG.

    Cells grow with the font, so counts stay readable (at least MIN_FONT_PT) for any number
    of labels; the title names `subject` (e.g. "intent v3"), n and accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    if counts.size == 0:
        counts = np.zeros((len(labels), len(labels)))
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    font = confusion_font_pt(len(labels))
    # A cell holds a four-digit count at `font`; the margin holds the longest label.
    cell = max(0.3, 2.6 * font / 72)
    margin = 0.6 * font / 72 * max([len(str(label)) for label in labels] + [5]) + 1.2
    side = max(5.0, cell * len(labels) + margin)
    fig, ax = plt.subplots(figsize=(side + 1.2, side + 0.6))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(len(labels)), labels, fontsize=font)
    ax.set_xlabel("predicted", fontsize=font + 1)
    ax.set_ylabel("true", fontsize=font + 1)
    ax.set_title(confusion_title(counts.astype(int).tolist(), subject), fontsize=font + 2)
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
                    fontsize=font,
                    color=colour,
                )
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.ax.tick_params(labelsize=font)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)

"""Metrics on a hand-computed example, the text report and the confusion-matrix picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluation import (
    MIN_FONT_PT,
    PLOT_DPI,
    compute_metrics,
    confusion_font_pt,
    confusion_title,
    plot_confusion,
    render_report,
)

LABELS = ["order_status", "refund_status", "greeting", "password_reset"]
# Six predictions over three of the four labels; password_reset never occurs.
#   true            predicted       confidence
#   order_status    order_status    0.90
#   order_status    refund_status   0.60
#   refund_status   refund_status   0.80
#   refund_status   refund_status   0.70
#   greeting        greeting        0.95
#   greeting        order_status    0.50
PROBS = np.array(
    [
        [0.90, 0.04, 0.03, 0.03],
        [0.20, 0.60, 0.10, 0.10],
        [0.10, 0.80, 0.05, 0.05],
        [0.10, 0.70, 0.10, 0.10],
        [0.02, 0.01, 0.95, 0.02],
        [0.50, 0.20, 0.20, 0.10],
    ]
)
TARGETS = np.array([0, 0, 1, 1, 2, 2])


@pytest.fixture
def metrics() -> dict:
    return compute_metrics(PROBS, TARGETS, LABELS, threshold=0.7)


def test_headline_figures(metrics: dict) -> None:
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1: order 0.5, refund 0.8, greeting 2/3; password_reset has no examples and is left out.
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 2 * 2 / 3) / 6)
    assert metrics["labels"] == LABELS


def test_per_class_precision_recall_support(metrics: dict) -> None:
    per_class = metrics["per_class"]

    assert per_class["order_status"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert per_class["refund_status"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert per_class["greeting"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert per_class["password_reset"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_coverage_at_the_threshold(metrics: dict) -> None:
    # Confidences >= 0.7: 0.90, 0.80, 0.70, 0.95 -> 4 of 6 answered, all four right.
    assert metrics["abstain_threshold"] == 0.7
    assert metrics["coverage"] == pytest.approx(4 / 6)
    assert metrics["accuracy_when_confident"] == pytest.approx(1.0)


def test_without_threshold_everything_is_answered() -> None:
    metrics = compute_metrics(PROBS, TARGETS, LABELS)

    assert metrics["coverage"] == 1.0
    assert metrics["accuracy_when_confident"] == pytest.approx(4 / 6)


def test_confusion_matrix_rows_are_true_columns_predicted(metrics: dict) -> None:
    assert metrics["confusion_matrix"] == [
        [1, 1, 0, 0],
        [0, 2, 0, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ]


def test_unknown_labels_count_as_wrong() -> None:
    targets = np.array([0, 0, 1, 1, 2, -1])  # the last one's label is not in the model

    metrics = compute_metrics(PROBS, targets, LABELS)

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["greeting"]["support"] == 1
    assert sum(map(sum, metrics["confusion_matrix"])) == 5


def test_report_shows_the_headline_figures_and_every_class(metrics: dict) -> None:
    metrics = {**metrics, "unknown_labels": ["cancel_order"]}

    report = render_report(metrics, "intent v3 on test.csv")

    lines = report.splitlines()
    assert lines[0] == "intent v3 on test.csv"
    assert lines[1] == "=" * len(lines[0])
    assert "examples            6" in report
    assert "accuracy            0.6667" in report
    assert "macro F1            0.6556" in report
    assert "abstain threshold   0.700  (answers 66.7% of messages, 100.0% of those right)" in report
    assert "cancel_order" in report
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split()[:1] and line.split()[0] in LABELS
    }
    assert rows["order_status"] == ["0.500", "0.500", "0.500", "2"]
    assert rows["refund_status"] == ["0.667", "1.000", "0.800", "2"]
    assert rows["greeting"] == ["1.000", "0.500", "0.667", "2"]
    assert "password_reset" not in rows  # neither in the data nor predicted
    # Weakest class first, so the eye lands on what needs more data.
    order = [line.split()[0] for line in lines if line.split()[:1] and line.split()[0] in rows]
    assert order == ["order_status", "greeting", "refund_status"]


def test_report_lists_a_class_that_is_predicted_but_absent() -> None:
    probs = PROBS.copy()
    probs[5] = [0.1, 0.1, 0.1, 0.7]  # greeting predicted as password_reset

    report = render_report(compute_metrics(probs, TARGETS, LABELS), "t")

    assert any(line.startswith("password_reset") for line in report.splitlines())


def test_plot_confusion_writes_a_png(tmp_path: Path, metrics: dict) -> None:
    path = tmp_path / "confusion.png"

    plot_confusion(metrics["confusion_matrix"], LABELS, path)

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_confusion_of_an_empty_matrix(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"

    plot_confusion([], ["a", "b"], path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_numbers_stay_readable_for_any_number_of_labels() -> None:
    # Issue 18: counts were about 6 px. Points to pixels at the saved resolution.
    sizes = [confusion_font_pt(n) for n in (2, 10, 30, 77, 150, 400)]
    assert all(pt * PLOT_DPI / 72 >= 9 for pt in sizes)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1] == MIN_FONT_PT


def test_confusion_title_names_version_n_and_accuracy(metrics: dict) -> None:
    title = confusion_title(metrics["confusion_matrix"], "intent v3")
    assert title.startswith("intent v3: n=6, accuracy 66.7%")


def test_a_many_label_confusion_png_grows_to_hold_its_numbers(tmp_path: Path) -> None:
    from PIL import Image

    sizes = {}
    for count in (4, 40):
        labels = [f"label_{i}" for i in range(count)]
        path = tmp_path / f"c{count}.png"
        plot_confusion(np.eye(count, dtype=int).tolist(), labels, path, subject="intent v1")
        with Image.open(path) as image:
            sizes[count] = image.size
    # At least ~25 px per cell at 40 labels, so a count at >= 9 px fits inside it.
    assert sizes[40][0] >= 40 * 25 and sizes[40][0] > sizes[4][0]

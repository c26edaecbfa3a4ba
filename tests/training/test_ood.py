from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.core.errors import ConfigurationError
from training.ood import (
    ARRAYS_FILE,
    COMPONENTS,
    DETECTOR_FILE,
    OosDetector,
    OosOptions,
    auroc,
    choose_threshold,
    energy_score,
    fit_detector,
    fpr_at_recall,
    leave_intents_out,
    msp_score,
    oos_label_index,
    oos_metrics,
    threshold_for_recall,
)

DIM, CLASSES = 16, 6
METHODS = [
    *COMPONENTS,
    "mahalanobis+msp",
    "knn+msp",
    "mahalanobis+knn",
    "energy+knn",
    "knn+energy+sentence-knn",
]


def cluster_data(
    per_class: int, seed: int, far: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Well separated clusters (one per class) in the first dimensions, logits from a
    prototype head; `far` extra points in the other dimensions (label -1), whose logits are
    near zero for every class."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((CLASSES, DIM))
    centres[np.arange(CLASSES), np.arange(CLASSES)] = 4.0
    centres += 1.0  # a shared offset, as mean-pooled embeddings have
    labels = np.repeat(np.arange(CLASSES), per_class)
    x = centres[labels] + rng.normal(0, 0.3, (len(labels), DIM))
    if far:
        outside = np.ones((far, DIM))
        outside[:, CLASSES:] += rng.normal(0, 3.0, (far, DIM - CLASSES))
        outside[:, :CLASSES] += rng.normal(0, 0.3, (far, CLASSES))
        x = np.r_[x, outside]
        labels = np.r_[labels, -np.ones(far, dtype=int)]
    head = centres - centres.mean(0)
    logits = 3.0 * (x - centres.mean(0)) @ head.T / 4.0
    return x.astype(np.float32), logits.astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {
        "train": cluster_data(40, 1),
        "validation": cluster_data(30, 2),
        "test": cluster_data(20, 3, far=25),
    }


def sentences(x: np.ndarray) -> np.ndarray:
    """Another encoder's view of the same messages: a fixed rotation of the embeddings plus
    noise (the clusters and the far points stay apart, the coordinates all differ)."""
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(DIM, DIM)))
    noise = np.random.default_rng(len(x)).normal(0, 0.05, x.shape)
    return (x @ rotation + noise).astype(np.float32)


def fit(data: dict, method: str, **options: object) -> OosDetector:
    train_x, _, train_y = data["train"]
    val_x, val_logits, val_y = data["validation"]
    return fit_detector(
        train_x,
        train_y,
        val_x,
        val_logits,
        val_y,
        1.5,
        OosOptions(method=method, **options),
        train_sentences=sentences(train_x),
        validation_sentences=sentences(val_x),
    )


@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_the_far_points_above_the_clusters(data: dict, method: str) -> None:
    detector = fit(data, method)
    x, logits, labels = data["test"]
    scores = detector.score(x, logits, sentences(x))
    assert scores[labels == -1].min() > scores[labels >= 0].max()
    assert auroc(scores[labels >= 0], scores[labels == -1]) == 1.0
    assert detector.is_out_of_scope(x, logits, sentences(x))[labels == -1].all()


def test_sentence_knn_needs_the_sentence_embeddings(data: dict) -> None:
    train_x, _, train_y = data["train"]
    val_x, val_logits, val_y = data["validation"]
    with pytest.raises(ConfigurationError, match="needs the sentence encoder's embeddings"):
        fit_detector(train_x, train_y, val_x, val_logits, val_y, 1.5, OosOptions())
    detector = fit(data, "knn+energy+sentence-knn")
    assert detector.needs_sentences and not fit(data, "knn+energy").needs_sentences
    x, logits, _ = data["test"]
    with pytest.raises(ValueError, match="needs the messages' sentence embeddings"):
        detector.score(x, logits)


def test_a_sentence_detector_is_served_only_with_its_own_encoder(
    data: dict, tmp_path: Path
) -> None:
    """The fallback (fitted without sentence-knn) is served when the runtime has no sentence
    embedding from the same forward, or one from another encoder; the files keep both."""
    probe = sentences(np.eye(DIM, dtype=np.float32)[:4])
    detector = dataclasses.replace(
        fit(data, "knn+energy+sentence-knn"),
        fallback=fit(data, "knn+energy"),
        sentence_probe=probe,
        sentence_model="bundled",
    )
    detector.save(tmp_path)
    loaded = OosDetector.load(tmp_path)
    assert loaded.method == "knn+energy+sentence-knn" and loaded.sentence_model == "bundled"
    assert loaded.fallback is not None and loaded.fallback.method == "knn+energy"
    x, logits, labels = data["test"]
    # Both banks are stored as float16: cosine distances move by ~1e-3 at most.
    np.testing.assert_allclose(
        loaded.raw_scores(x, logits, sentences(x)),
        detector.raw_scores(x, logits, sentences(x)),
        atol=2e-3,
    )
    served, how = loaded.for_sentence_encoder(probe + 1e-5)
    assert served is loaded and how == "knn+energy+sentence-knn"
    for other in (None, probe + 0.05):
        served, how = loaded.for_sentence_encoder(other)
        assert served is loaded.fallback and how.startswith("knn+energy (")
        assert served.threshold == pytest.approx(detector.fallback.threshold)  # type: ignore[union-attr]
        assert served.is_out_of_scope(x, logits)[labels == -1].all()
    assert loaded.fallback.for_sentence_encoder(None)[0] is loaded.fallback


@pytest.mark.parametrize("keep_recall", [0.8, 0.9, 0.98])
@pytest.mark.parametrize("method", ["msp", "mahalanobis", "knn", "knn+energy"])
def test_leave_intents_out_keeps_the_requested_in_scope_recall(
    data: dict, method: str, keep_recall: float
) -> None:
    train_x, _, train_y = data["train"]
    val_x, val_logits, val_y = data["validation"]
    options = OosOptions(method=method, keep_recall=keep_recall, draws=4, seed=3)
    estimate = leave_intents_out(train_x, train_y, val_x, val_logits, val_y, 1.0, options)
    assert len(estimate.thresholds) == 4
    # Every cluster is classified right, so the right answers are all the in-scope messages.
    assert keep_recall <= estimate.in_scope_recall < keep_recall + 0.05
    assert estimate.accuracy_drop == pytest.approx(1 - estimate.in_scope_recall)
    if method != "msp":
        # Held-out clusters lie far from the kept ones: every pseudo out-of-scope is caught.
        assert estimate.auroc == 1.0 and estimate.oos_recall == 1.0


def test_draws_are_seeded(data: dict) -> None:
    assert fit(data, "knn", seed=5).threshold == fit(data, "knn", seed=5).threshold
    a, b = fit(data, "knn", seed=5).estimate, fit(data, "knn", seed=6).estimate
    assert a is not None and b is not None and a.thresholds != b.thresholds


@pytest.mark.parametrize("method", ["mahalanobis+msp", "knn", "energy"])
def test_save_and_load_give_the_same_scores(data: dict, method: str, tmp_path: Path) -> None:
    detector = fit(data, method)
    written = detector.save(tmp_path)
    assert {p.name for p in written} == {DETECTOR_FILE, ARRAYS_FILE}
    loaded = OosDetector.load(tmp_path)
    x, logits, _ = data["test"]
    # The bank is stored as float16: cosine distances move by ~1e-3 at most.
    exact = "knn" not in method
    np.testing.assert_allclose(
        loaded.raw_scores(x, logits), detector.raw_scores(x, logits), atol=1e-5 if exact else 2e-3
    )
    if exact:
        np.testing.assert_allclose(loaded.score(x, logits), detector.score(x, logits), atol=1e-6)
    assert loaded.threshold == detector.threshold and loaded.method == detector.method
    assert loaded.estimate == detector.estimate
    with np.load(tmp_path / ARRAYS_FILE) as arrays:
        expected = {"mahalanobis+msp": {"means", "whitening"}, "knn": {"bank"}, "energy": set()}
        assert set(arrays.files) == expected[method]


def test_msp_is_the_calibrated_confidence_of_the_classifier() -> None:
    logits = np.random.default_rng(0).normal(0, 3, (8, 5)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits) / 1.7, dim=-1).max(-1).values.numpy()
    np.testing.assert_allclose(-msp_score(logits, 1.7), expected, rtol=1e-5)
    np.testing.assert_allclose(
        energy_score(logits, 1.7),
        -1.7 * torch.logsumexp(torch.from_numpy(logits) / 1.7, dim=-1).numpy(),
        rtol=1e-5,
    )


def test_threshold_and_metrics_on_known_scores() -> None:
    in_scores = np.arange(100, dtype=float)  # 0 .. 99
    assert threshold_for_recall(in_scores, 0.95) == 95.0
    assert (in_scores <= threshold_for_recall(in_scores, 0.95)).mean() >= 0.95
    oos = np.array([50.0, 96.0, 97.0, 200.0])
    assert fpr_at_recall(in_scores, oos) == 0.25
    correct = in_scores < 90  # the 10 highest-scored in-scope messages were misclassified
    m = oos_metrics(in_scores, oos, 95.0, correct)
    assert (m.oos_recall, m.in_scope_recall) == (0.75, 0.96)
    assert m.oos_precision == 3 / 7
    assert m.accuracy == 0.9 and m.accuracy_with_abstention == 0.9 and m.accuracy_drop == 0
    assert math.isnan(oos_metrics(in_scores, np.array([]), 95.0).oos_recall)


def test_operating_point_counts_right_answers_only() -> None:
    scores = np.linspace(0, 1, 101)
    # The 20 highest-scored messages were answered wrong: declining them costs nothing, so
    # the threshold keeps 90 % of the 81 right answers, not of all 101 messages.
    correct = scores <= 0.8
    threshold = choose_threshold(scores, correct, 0.9)
    assert (scores[correct] <= threshold).mean() >= 0.9
    assert threshold < threshold_for_recall(scores, 0.9)


def test_real_out_of_scope_examples_can_raise_the_threshold_never_lower_it() -> None:
    in_scores = np.linspace(0, 1, 101)
    correct = np.ones(101, dtype=bool)
    floor = choose_threshold(in_scores, correct, 0.9)
    assert choose_threshold(in_scores, correct, 0.9, np.array([5.0, 6.0])) > floor  # easy
    assert choose_threshold(in_scores, correct, 0.9, np.array([0.5, 0.6])) == floor  # hard


def test_an_out_of_scope_label_is_no_class_and_sets_the_threshold(data: dict) -> None:
    train_x, train_logits, train_y = data["train"]
    val_x, val_logits, val_y = data["validation"]
    far_x, far_logits, _ = cluster_data(0, 9, far=30)
    oos = CLASSES  # one more head column, for an "out_of_scope" label
    extra = np.zeros((30, 1), dtype=np.float32)

    def with_oos_column(logits: np.ndarray, value: float) -> np.ndarray:
        return np.c_[logits, np.full((len(logits), 1), value, dtype=np.float32)]

    detector = fit_detector(
        np.r_[train_x, far_x],
        np.r_[train_y, np.full(30, oos)],
        np.r_[val_x, far_x],
        np.r_[with_oos_column(val_logits, -2.0), np.c_[far_logits, extra + 3.0]],
        np.r_[val_y, np.full(30, oos)],
        1.0,
        OosOptions(method="mahalanobis+msp", keep_recall=0.9),
        oos_label=oos,
    )
    assert detector.means.shape == (CLASSES, DIM)
    assert detector.columns == tuple(range(CLASSES))
    assert detector.softmax_columns == tuple(range(CLASSES + 1))
    assert detector.estimate is not None and detector.estimate.real_oos == 30
    x, logits, labels = data["test"]
    scores = detector.score(x, with_oos_column(logits, 0.0))
    assert scores[labels == -1].min() > scores[labels >= 0].max()


def test_oos_label_conventions() -> None:
    assert oos_label_index(["a", "nlu_fallback", "b"]) == 1
    assert oos_label_index(["out_of_scope", "b"]) == 0
    assert oos_label_index(["a", "other"], configured="other") == 1
    assert oos_label_index(["a", "b"]) is None


@pytest.mark.parametrize(
    "options",
    [
        {"method": "cosine"},
        {"method": "msp+energy+knn+mahalanobis"},
        {"keep_recall": 1.0},
        {"k": 0},
        {"threshold_from": "test"},
        {"holdout_share": 0.0},
        {"draws": 0},
    ],
)
def test_invalid_options_are_refused(options: dict) -> None:
    with pytest.raises(ConfigurationError, match="invalid out-of-scope options"):
        OosOptions(**options)


def test_leave_intents_out_needs_two_intents(data: dict) -> None:
    x, logits, labels = data["validation"]
    one = labels == 0
    with pytest.raises(ConfigurationError, match="at least 2"):
        leave_intents_out(x[one], labels[one], x[one], logits[one], labels[one], 1.0)


@pytest.mark.slow
def test_real_model_declines_out_of_scope_and_answers_in_scope(trained_intent) -> None:  # type: ignore[no-untyped-def]
    from bot.nlu.classifier import load_model
    from training.ood import backbone_sentences, pooled_outputs
    from training.pipeline import frozen_data

    path = trained_intent.version.path
    model, tokenizer, meta = load_model(path)
    test, pool = frozen_data(path)
    index = {label: i for i, label in enumerate(meta.labels)}
    # The pool is the run's training and validation examples; keep 3 of each intent apart.
    validation = [e for label in meta.labels for e in [p for p in pool if p.label == label][:3]]
    train = [e for e in pool if e not in validation]

    def outputs(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return pooled_outputs(model, tokenizer, texts, meta.max_length)

    encoder = backbone_sentences("bundled")
    train_x, _ = outputs([e.text for e in train])
    val_x, val_logits = outputs([e.text for e in validation])
    in_scope = ["where is my parcel, it has not arrived", "i forgot my password, help", "hiya!"]
    out_of_scope = [
        "what is the capital of australia",
        "recommend a vegan lasagne recipe",
        "my cat is sick, what should i do",
    ]
    x, logits = outputs(in_scope + out_of_scope)
    for method in ("knn+energy+sentence-knn", "knn+energy"):
        detector = fit_detector(
            train_x,
            np.array([index[e.label] for e in train]),
            val_x,
            val_logits,
            np.array([index[e.label] for e in validation]),
            meta.temperature,
            OosOptions(method=method),
            train_sentences=encoder.embed([e.text for e in train]),
            validation_sentences=encoder.embed([e.text for e in validation]),
        )
        probes = encoder.embed(in_scope + out_of_scope)
        declined = detector.is_out_of_scope(x, logits, probes)
        assert declined.tolist() == [False] * 3 + [True] * 3, (
            method,
            detector.score(x, logits, probes),
        )


@pytest.mark.parametrize("source", ["validation", "draws"])
def test_the_threshold_comes_from_the_chosen_source(data: dict, source: str) -> None:
    detector = fit(data, "knn+energy", threshold_from=source)
    estimate = detector.estimate
    assert estimate is not None
    expected = (
        estimate.validation_threshold if source == "validation" else np.mean(estimate.thresholds)
    )
    assert detector.threshold == pytest.approx(expected)
    if source == "validation":
        # On validation data itself the operating point holds (every answer there is right).
        val_x, val_logits, _ = data["validation"]
        assert (detector.score(val_x, val_logits) <= detector.threshold).mean() >= 0.98

"""Out-of-scope scores from what one forward already gives: the pooled embedding and the logits.

The intent model is trained on the intents it knows; a message about anything else still gets
a softmax that sums to 1 over them, often confidently. The scores here say how unlike the
training data a message is, from the two things the runtime computes for every message anyway
(the mean-pooled encoder output and the head's logits), so declining out-of-scope messages
costs no second forward:

- `msp`: minus the calibrated max-softmax (today's confidence; Hendrycks & Gimpel 2017);
- `energy`: minus T * logsumexp(logits / T) (Liu et al. 2020);
- `mahalanobis`: squared Mahalanobis distance of the embedding to the nearest class mean under
  one shared (tied) covariance, shrunk by Ledoit-Wolf (Lee et al. 2018; Podolskiy et al. 2021
  for intents);
- `knn`: cosine distance of the unit-length embedding to its k-th nearest training example
  (Sun et al. 2022);
- `sentence-knn`: the same in the sentence encoder's space (the backbone before fine-tuning,
  which the answer index embeds with; the runtime's shared forward gives it for free);
- two or three joined by `+` (e.g. `knn+energy`): the mean of the scores, each z-normalised
  by its mean and spread on in-scope validation messages.

Higher always means more out of scope. No out-of-scope examples are needed. The threshold is
the operating point `OosOptions.keep_recall` on validation data: keep that share of the
in-scope messages the classifier answers right (0.98: under 2 points of in-scope accuracy).
Leaving intents out (`leave_intents_out`) gives pseudo out-of-scope messages: a share of the
intents is dropped, the detector fitted as if they did not exist, and their validation
messages stand in for out-of-scope traffic; the draws' figures go into the training report,
and their mean threshold is the alternative `threshold_from="draws"`. When the data has real
out-of-scope examples (a label such as `out_of_scope` or Rasa's `nlu_fallback`), they are kept
out of the class means and the neighbour bank and used for the threshold too (see
`choose_threshold`).

Every score is z-normalised on in-scope validation messages, so a threshold reads as "this
many in-scope standard deviations above the in-scope mean" whatever the method.

On Banking77 (benchmarks/oos_benchmark.py) `knn+energy+sentence-knn` (the default) catches
the most out-of-scope messages at the same in-scope cost on every out-of-scope set (held-out
bank intents, a shop's queries, airline tweets), `knn+energy` next. The nearest training
example and the head's energy are loosely related on in-scope messages (Spearman about 0.5)
and agree on out-of-scope ones (0.7-0.9): their mean cancels more in-scope noise than it loses
out-of-scope signal. The untuned encoder adds a view fine-tuning has not bent towards the
intents: a message about something else lands near some intent in the tuned space but still
far from every training example by topic. Without sentence embeddings (a model served
without the answer index's encoder in its forward) the detector's fallback, the same method
without `sentence-knn`, fitted on the same data, is served.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.core.errors import ConfigurationError
from bot.nlu.oos import (  # noqa: F401  (the runtime half, re-exported for fitting code)
    ARRAYS_FILE,
    COMPONENTS,
    DETECTOR_FILE,
    FIELDS,
    SENTENCE_KNN,
    SENTENCE_PROBES,
    LoioEstimate,
    OosDetector,
    empty_rows,
    energy_score,
    knn_score,
    logsumexp,
    mahalanobis_score,
    msp_score,
    unit_rows,
)

if TYPE_CHECKING:
    from bot.nlu.classifier import MeanPoolingClassifier

log = logging.getLogger(__name__)

THRESHOLD_SOURCES = ("validation", "draws")
# Label names that mean "none of the intents" in the conventions supportbot reads.
OOS_LABEL_CONVENTIONS = ("out_of_scope", "nlu_fallback")


# --- pure scores -------------------------------------------------------------------------


def class_means(embeddings: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The mean embedding of each class in `classes`, shape (len(classes), dim)."""
    return np.stack([embeddings[labels == c].mean(axis=0) for c in classes]).astype(np.float32)


def tied_whitening(embeddings: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """A matrix W with W @ W.T = the inverse of the shared within-class covariance.

    The covariance is estimated from the examples minus their class mean, shrunk towards a
    scaled identity by Ledoit-Wolf: 384 dimensions from a few thousand examples would
    otherwise give a near-singular estimate whose inverse magnifies noise directions.

    Args:
        embeddings: training embeddings, shape (n, dim).
        labels: for each row, its row in `means`.
        means: class means from `class_means`.
    """
    from sklearn.covariance import LedoitWolf

    centred = embeddings - means[labels]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return np.linalg.cholesky(precision).astype(np.float32)


# --- metrics -----------------------------------------------------------------------------


def threshold_for_recall(in_scope_scores: np.ndarray, keep_recall: float) -> float:
    """The lowest threshold that keeps at least `keep_recall` of in-scope messages.

    A message is out of scope when its score is strictly above the threshold.
    """
    if len(in_scope_scores) == 0:
        return math.inf
    return float(np.quantile(in_scope_scores, keep_recall, method="higher"))


def auroc(in_scope_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling out-of-scope (positive) from in-scope messages."""
    from sklearn.metrics import roc_auc_score

    if len(in_scope_scores) == 0 or len(oos_scores) == 0:
        return math.nan
    truth = np.r_[np.zeros(len(in_scope_scores)), np.ones(len(oos_scores))]
    return float(roc_auc_score(truth, np.r_[in_scope_scores, oos_scores]))


def fpr_at_recall(
    in_scope_scores: np.ndarray, oos_scores: np.ndarray, recall: float = 0.95
) -> float:
    """Share of out-of-scope messages accepted at the threshold keeping `recall` of in-scope."""
    if len(oos_scores) == 0:
        return math.nan
    return float((oos_scores <= threshold_for_recall(in_scope_scores, recall)).mean())


def youden_threshold(in_scope_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    """The threshold that maximises OOS recall minus the share of in-scope declined."""
    candidates = np.unique(np.r_[in_scope_scores, oos_scores])
    in_sorted, oos_sorted = np.sort(in_scope_scores), np.sort(oos_scores)
    kept = np.searchsorted(in_sorted, candidates, side="right") / max(1, len(in_sorted))
    caught = 1.0 - np.searchsorted(oos_sorted, candidates, side="right") / max(1, len(oos_sorted))
    return float(candidates[int(np.argmax(kept + caught))])


def choose_threshold(
    in_scope_scores: np.ndarray,
    correct: np.ndarray,
    keep_recall: float,
    real_oos_scores: np.ndarray | None = None,
) -> float:
    """The operating point: keep `keep_recall` of the in-scope messages answered right.

    Counting only right answers makes the setting the accuracy it costs: declining the
    other `1 - keep_recall` of them drops in-scope accuracy by about that share of it (0.98:
    2 % of the right answers, under 2 points), while wrong answers the detector declines
    cost nothing.

    With real out-of-scope examples the threshold may rise above that point, never fall
    below it: to the one that best separates them from in-scope messages (Youden's J) when
    that declines fewer in-scope messages. `keep_recall` is therefore a floor on the
    in-scope cost, and labelled out-of-scope traffic that is easy to tell apart buys it back.

    Args:
        in_scope_scores: scores of in-scope validation messages.
        correct: per in-scope message, whether the classifier got its intent right.
        keep_recall: see `OosOptions.keep_recall`.
        real_oos_scores: scores of real out-of-scope validation examples, if any.
    """
    right = in_scope_scores[np.asarray(correct, dtype=bool)]
    floor = threshold_for_recall(right if len(right) else in_scope_scores, keep_recall)
    if real_oos_scores is None or len(real_oos_scores) == 0:
        return floor
    return max(floor, youden_threshold(in_scope_scores, real_oos_scores))


@dataclass(frozen=True, slots=True)
class OosMetrics:
    """How a detector and its threshold did on in-scope and out-of-scope messages.

    Attributes:
        auroc: threshold-free separation (1 perfect, 0.5 chance).
        fpr_at_95: share of out-of-scope messages accepted when 95 % of in-scope pass.
        oos_recall / oos_precision: of out-of-scope messages declined; of declined messages,
            the share really out of scope (depends on the mix of the test set).
        in_scope_recall: share of in-scope messages that pass the detector.
        accuracy: in-scope accuracy without abstention.
        accuracy_with_abstention: share of in-scope messages both passed and classified right
            (a declined in-scope message counts as a miss).
    """

    n_in_scope: int
    n_oos: int
    threshold: float
    auroc: float
    fpr_at_95: float
    oos_recall: float
    oos_precision: float
    in_scope_recall: float
    accuracy: float
    accuracy_with_abstention: float

    @property
    def accuracy_drop(self) -> float:
        """Points of in-scope accuracy given up by declining (0.02 = 2 points)."""
        return self.accuracy - self.accuracy_with_abstention

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def oos_metrics(
    in_scope_scores: np.ndarray,
    oos_scores: np.ndarray,
    threshold: float,
    in_scope_correct: np.ndarray | None = None,
) -> OosMetrics:
    """Metrics of declining messages whose score is above `threshold`.

    Args:
        in_scope_scores / oos_scores: detector scores of in-scope and out-of-scope messages.
        threshold: the detector's threshold.
        in_scope_correct: per in-scope message, whether the intent was right (default: all).
    """
    correct = (
        np.ones(len(in_scope_scores), dtype=bool)
        if in_scope_correct is None
        else np.asarray(in_scope_correct, dtype=bool)
    )
    passed = in_scope_scores <= threshold
    caught = oos_scores > threshold
    declined = int(caught.sum()) + int((~passed).sum())
    n_in = max(1, len(in_scope_scores))
    return OosMetrics(
        n_in_scope=len(in_scope_scores),
        n_oos=len(oos_scores),
        threshold=float(threshold),
        auroc=auroc(in_scope_scores, oos_scores),
        fpr_at_95=fpr_at_recall(in_scope_scores, oos_scores, 0.95),
        oos_recall=float(caught.mean()) if len(oos_scores) else math.nan,
        oos_precision=int(caught.sum()) / declined if declined else math.nan,
        in_scope_recall=float(passed.mean()) if len(passed) else math.nan,
        accuracy=float(correct.sum()) / n_in,
        accuracy_with_abstention=float((correct & passed).sum()) / n_in,
    )


# --- the detector ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OosOptions:
    """How an out-of-scope detector is fitted.

    Args:
        method: a name in `COMPONENTS`, or two or three joined by `+` (z-normalised mean).
        keep_recall: the operating point: the share of the in-scope validation messages the
            classifier answers right that the threshold keeps (see `choose_threshold`).
            0.98 costs at most about 2 points of in-scope accuracy.
        k: which nearest training example `knn` measures the distance to (1: the nearest).
        threshold_from: `validation`: the operating point on the fitted detector's scores of
            all validation messages; `draws`: the mean of the leave-intents-out draws'
            thresholds (each on the kept intents' messages, with the held-out intents' means,
            neighbours and logits gone). The draws come out higher for scores that use the
            logits or the nearest neighbour: kept messages that resemble a held-out intent
            lose their closest competitor and look less in scope than they will at run time.
        holdout_share: share of intents left out in each leave-intents-out draw.
        draws: seeded leave-intents-out draws (pseudo out-of-scope estimates, and the
            threshold with `threshold_from="draws"`).
        seed: seed of the draws.
    """

    method: str = "knn+energy+sentence-knn"
    keep_recall: float = 0.98
    k: int = 1
    threshold_from: str = "validation"
    holdout_share: float = 0.25
    draws: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not 1 <= len(self.components) <= 3:
            problems.append(
                f"method must be one of {', '.join(COMPONENTS)} or two or three of them joined "
                f"by '+', got {self.method!r}"
            )
        if not 0.5 <= self.keep_recall < 1:
            problems.append(f"keep_recall must be in [0.5, 1), got {self.keep_recall}")
        if self.k < 1:
            problems.append(f"k must be >= 1, got {self.k}")
        if self.threshold_from not in THRESHOLD_SOURCES:
            problems.append(
                f"threshold_from must be one of {', '.join(THRESHOLD_SOURCES)}, "
                f"got {self.threshold_from!r}"
            )
        if not 0 < self.holdout_share < 1:
            problems.append(f"holdout_share must be in (0, 1), got {self.holdout_share}")
        if self.draws < 1:
            problems.append(f"draws must be >= 1, got {self.draws}")
        if problems:
            raise ConfigurationError("invalid out-of-scope options: " + "; ".join(problems))

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.method.split("+"))

    def without_sentences(self) -> OosOptions:
        """The same options without `sentence-knn` (`knn+energy` if nothing else is left):
        the fallback served without sentence embeddings."""
        rest = [c for c in self.components if c != SENTENCE_KNN]
        return dataclasses.replace(self, method="+".join(rest) if rest else "knn+energy")


def fit_detector(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    validation_embeddings: np.ndarray,
    validation_logits: np.ndarray,
    validation_labels: np.ndarray,
    temperature: float,
    options: OosOptions = OosOptions(),
    oos_label: int | None = None,
    train_sentences: np.ndarray | None = None,
    validation_sentences: np.ndarray | None = None,
) -> OosDetector:
    """Fit on the training embeddings, normalise and threshold on validation data.

    Args:
        train_embeddings / train_labels: pooled embeddings of the training examples and
            their label index (the head's column).
        validation_embeddings / validation_logits / validation_labels: the same for the
            validation split, with the raw logits.
        temperature: the calibration temperature.
        options: method, operating point and leave-intents-out settings.
        oos_label: the head column of an out-of-scope label, if the data has one: its
            training examples are no class, its validation examples are real
            out-of-scope messages for the threshold.
        train_sentences / validation_sentences: the sentence encoder's embeddings of the
            same messages (`sentence-knn` only).

    Raises:
        ConfigurationError: fewer than two in-scope labels with validation examples
            (leave-intents-out needs one to hold out and one to keep), or `sentence-knn`
            without sentence embeddings.
    """
    if SENTENCE_KNN in options.components and (
        train_sentences is None or validation_sentences is None
    ):
        raise ConfigurationError(
            f"out-of-scope method {options.method} needs the sentence encoder's embeddings of "
            "the training and validation messages"
        )
    vs = validation_sentences
    train_labels = np.asarray(train_labels)
    validation_labels = np.asarray(validation_labels)
    n_labels = validation_logits.shape[1]
    classes = [c for c in range(n_labels) if c != oos_label]
    estimate = leave_intents_out(
        train_embeddings,
        train_labels,
        validation_embeddings,
        validation_logits,
        validation_labels,
        temperature,
        options,
        oos_label,
        train_sentences,
        vs,
    )
    detector = _fit_parts(
        options,
        train_embeddings,
        train_labels,
        classes,
        temperature,
        n_labels,
        oos_label,
        train_sentences,
    )
    in_scope = np.isin(validation_labels, classes)
    x, logits = validation_embeddings[in_scope], validation_logits[in_scope]
    sx = None if vs is None else vs[in_scope]
    detector = detector.normalised(x, logits, sx)
    correct = np.array(classes)[logits[:, classes].argmax(axis=1)] == validation_labels[in_scope]
    real = validation_labels == oos_label
    validation_threshold = choose_threshold(
        detector.score(x, logits, sx),
        correct,
        options.keep_recall,
        detector.score(
            validation_embeddings[real], validation_logits[real], None if vs is None else vs[real]
        )
        if real.any()
        else None,
    )
    estimate = dataclasses.replace(estimate, validation_threshold=validation_threshold)
    return OosDetector(
        **{name: getattr(detector, name) for name in FIELDS},
        threshold=validation_threshold
        if options.threshold_from == "validation"
        else float(np.mean(estimate.thresholds)),
        keep_recall=options.keep_recall,
        estimate=estimate,
    )


def _fit_parts(
    options: OosOptions,
    embeddings: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    temperature: float,
    n_labels: int,
    oos_label: int | None,
    sentences: np.ndarray | None = None,
) -> OosDetector:
    """A detector that knows only `classes` (not yet normalised or thresholded)."""
    dim = embeddings.shape[1]
    components = options.components
    known = np.isin(labels, list(classes))
    x, y = embeddings[known].astype(np.float32), labels[known]
    means, whitening, bank = empty_rows(dim), empty_rows(dim), empty_rows(dim)
    if "mahalanobis" in components:
        present = [c for c in classes if (y == c).any()]
        means = class_means(x, y, present)
        row = {c: i for i, c in enumerate(present)}
        whitening = tied_whitening(x, np.array([row[c] for c in y], dtype=int), means)
    if "knn" in components:
        bank = unit_rows(x)
    sentence_bank = empty_rows(0)
    if SENTENCE_KNN in components and sentences is not None:
        sentence_bank = unit_rows(sentences[known])
    softmax = [*classes, oos_label] if oos_label is not None else list(classes)
    return OosDetector(
        method="+".join(components),
        temperature=temperature,
        columns=tuple(classes),
        softmax_columns=tuple(sorted(softmax)),
        means=means,
        whitening=whitening,
        bank=bank,
        k=options.k,
        center=np.zeros(len(components)),
        scale=np.ones(len(components)),
        sentence_bank=sentence_bank,
    )


def leave_intents_out(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    validation_embeddings: np.ndarray,
    validation_logits: np.ndarray,
    validation_labels: np.ndarray,
    temperature: float,
    options: OosOptions = OosOptions(),
    oos_label: int | None = None,
    train_sentences: np.ndarray | None = None,
    validation_sentences: np.ndarray | None = None,
) -> LoioEstimate:
    """Thresholds and pseudo out-of-scope figures from seeded leave-intents-out draws.

    Each draw holds out `options.holdout_share` of the in-scope labels that have validation
    examples and fits the detector on the rest, as if the held-out intents did not exist:
    distance methods lose their class means and neighbour-bank entries (and the covariance
    is re-estimated), logit methods lose their logits (approximate: the encoder and head
    still learned them; nothing is retrained). The kept intents' validation messages are the
    in-scope side (the normaliser is fitted on them), the held-out intents' validation
    messages the out-of-scope side, joined by real out-of-scope validation examples when
    `oos_label` has any. The draw's threshold is `choose_threshold` on them. Sentence
    embeddings (`sentence-knn`) lose their held-out rows like the neighbour bank.

    Raises:
        ConfigurationError: fewer than two in-scope labels have validation examples.
    """
    n_labels = validation_logits.shape[1]
    labelled = sorted(
        {int(c) for c in np.unique(validation_labels) if c != oos_label and 0 <= c < n_labels}
    )
    if len(labelled) < 2:
        raise ConfigurationError(
            f"out-of-scope threshold: {len(labelled)} intent(s) have validation examples; "
            "leaving intents out needs at least 2: add examples (5+ per intent)"
        )
    real = validation_labels == oos_label if oos_label is not None else None
    held_count = min(len(labelled) - 1, max(1, round(options.holdout_share * len(labelled))))
    rng = np.random.default_rng(options.seed)
    thresholds, aurocs, fprs, recalls, kept_recalls, drops = [], [], [], [], [], []
    for _ in range(options.draws):
        held = set(rng.choice(labelled, size=held_count, replace=False).tolist())
        kept = [c for c in range(n_labels) if c != oos_label and c not in held]
        part = _fit_parts(
            options,
            train_embeddings,
            train_labels,
            kept,
            temperature,
            n_labels,
            oos_label,
            train_sentences,
        )
        in_rows = np.isin(validation_labels, kept)
        out_rows = np.isin(validation_labels, list(held))

        def rows(
            selected: np.ndarray,
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            vs = validation_sentences
            return (
                validation_embeddings[selected],
                validation_logits[selected],
                None if vs is None else vs[selected],
            )

        part = part.normalised(*rows(in_rows))
        in_scores = part.score(*rows(in_rows))
        # Right or wrong as the classifier would be without the held-out intents' logits.
        predicted = np.array(kept)[validation_logits[in_rows][:, kept].argmax(axis=1)]
        correct = predicted == validation_labels[in_rows]
        real_scores = part.score(*rows(real)) if real is not None and real.any() else None
        out_scores = part.score(*rows(out_rows))
        if real_scores is not None:
            out_scores = np.r_[out_scores, real_scores]
        threshold = choose_threshold(in_scores, correct, options.keep_recall, real_scores)
        thresholds.append(threshold)
        aurocs.append(auroc(in_scores, out_scores))
        fprs.append(fpr_at_recall(in_scores, out_scores, 0.95))
        recalls.append(float((out_scores > threshold).mean()))
        kept_recalls.append(float((in_scores <= threshold).mean()))
        drops.append(float((correct & (in_scores > threshold)).mean()))
    return LoioEstimate(
        thresholds=tuple(thresholds),
        auroc=float(np.mean(aurocs)),
        fpr_at_95=float(np.mean(fprs)),
        oos_recall=float(np.mean(recalls)),
        in_scope_recall=float(np.mean(kept_recalls)),
        accuracy_drop=float(np.mean(drops)),
        real_oos=int(real.sum()) if real is not None else 0,
    )


def oos_label_index(labels: Sequence[str], configured: str | None = None) -> int | None:
    """The column of the out-of-scope label: `configured`, else a conventional name."""
    names = (configured,) if configured else OOS_LABEL_CONVENTIONS
    for name in names:
        if name in labels:
            return list(labels).index(name)
    return None


# --- the one torch part: embeddings and logits of one forward ----------------------------


def pooled_outputs(
    model: MeanPoolingClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled embeddings and raw logits of `texts` from one forward each, input order."""
    import torch

    from bot.nlu.classifier import length_chunks

    dim, n_labels = model.head.in_features, model.head.out_features
    embeddings = np.zeros((len(texts), dim), dtype=np.float32)
    logits = np.zeros((len(texts), n_labels), dtype=np.float32)
    if not texts:
        return embeddings, logits
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for chunk, input_ids, mask in length_chunks(tokenizer, texts, max_length, batch_size):
            pooled = model.embed(input_ids, mask).float()
            embeddings[chunk] = pooled.numpy()
            logits[chunk] = model.head(pooled).float().numpy()
    model.train(was_training)
    return embeddings, logits


def served_copy(model: MeanPoolingClassifier, tuned_layers: int | None) -> MeanPoolingClassifier:
    """A copy of `model` computing what `supportbot serve` computes by default
    (`models.quantize`): its own tuned top layers int8, the layers it shares float32.

    The detector is fitted and thresholded on these outputs, not the float32 ones: int8 moves
    embeddings and logits a little, and a threshold set on one and applied to the other gives
    up about half a point more in-scope accuracy (benchmarks/oos_benchmark.py).
    """
    import copy
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    from bot.nlu.shared_encoder import transformer_layers

    served = copy.deepcopy(model).eval()
    layers = transformer_layers(served.encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layers is None:
            return quantize_dynamic(served, {nn.Linear}, dtype=torch.qint8)
        own = len(layers) if tuned_layers is None else min(tuned_layers, len(layers))
        for i in range(len(layers) - own, len(layers)):
            layers[i] = quantize_dynamic(layers[i], {nn.Linear}, dtype=torch.qint8)
    return served


@dataclass(frozen=True)
class SentenceEncoder:
    """The sentence encoder `sentence-knn` measures with (by default the intent model's
    backbone, which the answer index embeds with): its name and how it embeds texts (unit
    rows, float32)."""

    name: str
    embed: Callable[[Sequence[str]], np.ndarray]


def backbone_sentences(model: str) -> SentenceEncoder:
    """The sentence encoder of a backbone (`bundled`, a Hugging Face name or a path), as the
    answer index embeds with it (bot/retrieval/embedder.py), loaded on first use."""
    from bot.retrieval.embedder import SentenceEmbedder

    embedder = SentenceEmbedder(model, batch_size=64)
    return SentenceEncoder(model, lambda texts: np.asarray(embedder(texts), dtype=np.float32))


@dataclass(frozen=True, slots=True)
class FittedDetector:
    """A detector fitted for a trained model, or why there is none.

    Attributes:
        detector: the fitted detector, or None.
        note: one line for the training report (what was fitted, or why nothing was).
        oos_label: the out-of-scope label of the data, if it had one.
    """

    detector: OosDetector | None
    note: str
    oos_label: str | None = None
    served: Any = field(default=None, repr=False)
    sentences: SentenceEncoder | None = field(default=None, repr=False)

    def test_figures(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        examples: Sequence[tuple[str, str]],
        max_length: int,
    ) -> dict[str, Any] | None:
        """What the detector does to in-scope test messages: declined share and accuracy.

        Out-of-scope-labelled examples count as out-of-scope traffic (recall on them).
        """
        if self.detector is None or self.served is None or not examples:
            return None
        texts = [t for t, _ in examples]
        x, logits = pooled_outputs(self.served, tokenizer, texts, max_length)
        sentences = (
            self.sentences.embed(texts)
            if self.detector.needs_sentences and self.sentences is not None
            else None
        )
        scores, flags = self.detector.decide(x, logits, sentences)
        columns = list(self.detector.columns)
        predicted = np.array(columns)[logits[:, columns].argmax(axis=1)]
        index = {label: i for i, label in enumerate(labels)}
        truth = np.array([index.get(label, -1) for _, label in examples])
        real = np.array([label == self.oos_label for _, label in examples], dtype=bool)
        in_scope = ~real
        metrics = oos_metrics(
            scores[in_scope], scores[real], self.detector.threshold, (predicted == truth)[in_scope]
        )
        out = {
            "n_in_scope": metrics.n_in_scope,
            "in_scope_declined": float(flags[in_scope].mean()) if in_scope.any() else None,
            "accuracy": metrics.accuracy,
            "accuracy_with_declines": float(((predicted == truth) & ~flags)[in_scope].mean())
            if in_scope.any()
            else None,
        }
        if real.any():
            out |= {"n_oos": int(real.sum()), "oos_recall": float(flags[real].mean())}
        return out


def fit_for_model(
    model: MeanPoolingClassifier,
    tokenizer: Any,
    labels: Sequence[str],
    train: Sequence[tuple[str, str]],
    validation: Sequence[tuple[str, str]],
    temperature: float,
    max_length: int,
    options: OosOptions,
    tuned_layers: int | None,
    oos_label: str | None = None,
    sentences: SentenceEncoder | None = None,
) -> FittedDetector:
    """Fit `options.method` for a trained intent model on its own train/validation split.

    A method with `sentence-knn` is fitted with `sentences` (the same texts embedded by the
    sentence encoder) and carries a fallback fitted without it (`OosDetector.fallback`);
    with no sentence encoder it is fitted without `sentence-knn`.

    Args:
        model / tokenizer / labels: the trained model (head columns in `labels` order).
        train / validation: (text, label) pairs it was trained and calibrated on.
        temperature: its calibration temperature.
        max_length: tokens per text, as the model was trained.
        options: method and operating point.
        tuned_layers: the training's `tuned_layers` (see `served_copy`).
        oos_label: the configured out-of-scope label name (default: the conventions).
        sentences: the sentence encoder (`sentence-knn`).

    Returns:
        The detector, or None with the reason when the data cannot support one (fewer than
        two intents with validation examples).
    """
    column = oos_label_index(labels, oos_label)
    name = labels[column] if column is not None else None
    if oos_label and column is None:
        raise ConfigurationError(
            f"--oos-label {oos_label!r} is not a label of the training data; labels: "
            f"{', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}"
        )
    index = {label: i for i, label in enumerate(labels)}
    served = served_copy(model, tuned_layers)
    train_texts, val_texts = [t for t, _ in train], [t for t, _ in validation]
    train_x, _ = pooled_outputs(served, tokenizer, train_texts, max_length)
    val_x, val_logits = pooled_outputs(served, tokenizer, val_texts, max_length)
    train_y = np.array([index[label] for _, label in train], dtype=int)
    val_y = np.array([index[label] for _, label in validation], dtype=int)
    embedded: tuple[np.ndarray, np.ndarray] | None = None
    if SENTENCE_KNN in options.components and sentences is not None:
        try:
            embedded = sentences.embed(train_texts), sentences.embed(val_texts)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning(
                "out of scope: the sentence encoder %s cannot embed (%s); fitting %s",
                sentences.name,
                exc,
                options.without_sentences().method,
            )
    if embedded is None:
        options = options.without_sentences()

    def fit(with_options: OosOptions, pair: tuple[np.ndarray, np.ndarray] | None) -> OosDetector:
        train_s, val_s = pair if pair is not None else (None, None)
        return fit_detector(
            train_x, train_y, val_x, val_logits, val_y, temperature, with_options, column,
            train_s, val_s,
        )  # fmt: skip

    try:
        detector = fit(options, embedded)
        if sentences is not None and embedded is not None:
            detector = dataclasses.replace(
                detector,
                fallback=fit(options.without_sentences(), None),
                sentence_probe=sentences.embed(list(SENTENCE_PROBES)),
                sentence_model=sentences.name,
            )
    except ConfigurationError as exc:
        return FittedDetector(None, f"out of scope: no detector ({exc})", name)
    return FittedDetector(detector, detector_note(detector, name), name, served, sentences)


def detector_note(detector: OosDetector, oos_label: str | None = None) -> str:
    """The training report's line about a detector."""
    line = (
        f"out of scope: {detector.method}, keeping {detector.keep_recall:.0%} of right in-scope "
        f"answers (threshold {detector.threshold:.2f})"
    )
    estimate = detector.estimate
    if estimate is not None:
        line += (
            f"; leaving intents out ({len(estimate.thresholds)} draws): AUROC "
            f"{estimate.auroc:.3f}, pseudo out-of-scope recall {estimate.oos_recall:.1%}, "
            f"in-scope kept {estimate.in_scope_recall:.1%}, accuracy cost "
            f"{100 * estimate.accuracy_drop:.1f} points"
        )
    if detector.fallback is not None:
        line += (
            f"; sentence encoder {detector.sentence_model}, served as {detector.fallback.method} "
            "where the answer index embeds with another"
        )
    if oos_label is not None:
        line += f"; label {oos_label!r} trained as out of scope"
        if estimate is not None and estimate.real_oos:
            line += f" ({estimate.real_oos} validation examples set the threshold too)"
    return line


def evaluate_detector(
    detector: OosDetector,
    in_scope: tuple[np.ndarray, np.ndarray, np.ndarray],
    oos: tuple[np.ndarray, np.ndarray],
    sentences: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """`supportbot evaluate --oos-data`: how a model's detector does on labelled in-scope
    messages and unlabelled out-of-scope ones, as the runtime decides (`OosDetector.decide`).

    Args:
        detector: the model's detector.
        in_scope: embeddings, logits and the right label's column (-1: a label the model
            does not know, which counts as wrong) of the in-scope messages.
        oos: embeddings and logits of the out-of-scope messages.
        sentences: the sentence encoder's embeddings of the in-scope and the out-of-scope
            messages (a detector with `sentence-knn`).

    Returns:
        oos_recall / oos_precision (of the declined messages, the share out of scope, for
        this mix), in-scope accuracy without and with declines (a declined in-scope message
        counts as a miss), the share of in-scope messages declined, AUROC and the share of
        out-of-scope messages accepted at 95 % in-scope recall (both threshold-free).
    """
    x, logits, truth = in_scope
    in_sentences, oos_sentences = sentences if sentences is not None else (None, None)
    in_scores, in_flags = detector.decide(x, logits, in_sentences)
    oos_scores, oos_flags = detector.decide(*oos, oos_sentences)
    columns = list(detector.columns)
    predicted = np.array(columns)[logits[:, columns].argmax(axis=1)] if len(logits) else truth
    correct = predicted == truth
    declined = int(oos_flags.sum()) + int(in_flags.sum())
    n_in = max(1, len(truth))
    return {
        "method": detector.method,
        "threshold": detector.threshold,
        "keep_recall": detector.keep_recall,
        "n_in_scope": len(truth),
        "n_oos": len(oos_flags),
        "oos_recall": float(oos_flags.mean()) if len(oos_flags) else math.nan,
        "oos_precision": int(oos_flags.sum()) / declined if declined else math.nan,
        "in_scope_declined": float(in_flags.mean()) if len(in_flags) else math.nan,
        "accuracy": float(correct.sum()) / n_in,
        "accuracy_with_declines": float((correct & ~in_flags).sum()) / n_in,
        "auroc": auroc(in_scores, oos_scores),
        "fpr_at_95": fpr_at_recall(in_scores, oos_scores, 0.95),
    }


def render_oos(figures: dict[str, Any]) -> str:
    """The out-of-scope part of `supportbot evaluate`'s report."""
    return (
        f"\nout of scope ({figures['method']}, threshold {figures['threshold']:.2f}, chosen to "
        f"keep {figures['keep_recall']:.0%} of right in-scope answers)\n"
        f"out-of-scope messages   {figures['n_oos']}\n"
        f"  declined (recall)     {figures['oos_recall']:.1%}\n"
        f"  precision of declines {figures['oos_precision']:.1%}\n"
        f"in-scope messages       {figures['n_in_scope']}\n"
        f"  declined              {figures['in_scope_declined']:.1%}\n"
        f"  accuracy              {figures['accuracy']:.1%} answering all, "
        f"{figures['accuracy_with_declines']:.1%} with declines\n"
        f"AUROC                   {figures['auroc']:.3f}\n"
        f"FPR at 95% in-scope     {figures['fpr_at_95']:.1%} of out-of-scope messages accepted\n"
    )

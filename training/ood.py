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
- a pair joined by `+` (e.g. `mahalanobis+msp`): the mean of the two scores, each
  z-normalised by its mean and spread on in-scope validation messages.

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

On Banking77 (benchmarks/oos_benchmark.py) `knn+energy` separates best on every
out-of-scope set (held-out bank intents, a shop's queries, airline tweets). The nearest
training example and the head's energy are loosely related on in-scope messages (Spearman
about 0.5) and agree on out-of-scope ones (0.7-0.9): their mean cancels more in-scope noise
than it loses out-of-scope signal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.core.errors import ConfigurationError

if TYPE_CHECKING:
    from bot.nlu.classifier import MeanPoolingClassifier

COMPONENTS = ("msp", "energy", "mahalanobis", "knn")
THRESHOLD_SOURCES = ("validation", "draws")
# Label names that mean "none of the intents" in the conventions supportbot reads.
OOS_LABEL_CONVENTIONS = ("out_of_scope", "nlu_fallback")
DETECTOR_FILE = "oos_detector.json"
ARRAYS_FILE = "oos_detector.npz"
_CHUNK = 2048  # rows per block when comparing with the neighbour bank (bounded memory)


# --- pure scores -------------------------------------------------------------------------


def _columns(logits: np.ndarray, columns: Sequence[int] | None) -> np.ndarray:
    return logits if columns is None else logits[:, list(columns)]


def logsumexp(values: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(values))), without overflow."""
    top = values.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(
    logits: np.ndarray,
    temperature: float,
    columns: Sequence[int] | None = None,
    softmax_columns: Sequence[int] | None = None,
) -> np.ndarray:
    """Minus the calibrated max-softmax: the bot's confidence turned into an OOS score.

    Args:
        logits: raw head logits, shape (n, labels).
        temperature: the calibration temperature (`classifier.json`).
        columns: the in-scope labels whose probability counts (default: all).
        softmax_columns: the labels the softmax runs over (default: `columns`). A model with
            an out-of-scope label keeps it here, so the mass it takes lowers the confidence.
    """
    scaled = logits / temperature
    over = columns if softmax_columns is None else softmax_columns
    log_norm = logsumexp(_columns(scaled, over))
    return -np.exp(_columns(scaled, columns).max(axis=1) - log_norm)


def energy_score(
    logits: np.ndarray, temperature: float, columns: Sequence[int] | None = None
) -> np.ndarray:
    """The free energy -T * logsumexp(logits / T) over the in-scope labels."""
    return -temperature * logsumexp(_columns(logits, columns) / temperature)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


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


def mahalanobis_score(
    embeddings: np.ndarray, means: np.ndarray, whitening: np.ndarray
) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean (shared covariance)."""
    z = embeddings.astype(np.float32) @ whitening
    m = means @ whitening
    distances = (z * z).sum(1)[:, None] - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
    return np.maximum(distances.min(axis=1), 0.0)


def knn_score(embeddings: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance to the k-th nearest row of `bank` (unit rows, see `unit_rows`)."""
    if len(bank) == 0:
        return np.ones(len(embeddings), dtype=np.float32)
    k = min(k, len(bank))
    queries = unit_rows(embeddings)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ bank.T
        out[start : start + _CHUNK] = 1.0 - np.partition(sims, -k, axis=1)[:, -k]
    return out


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
        method: a name in `COMPONENTS`, or two joined by `+` (z-normalised mean).
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

    method: str = "knn+energy"
    keep_recall: float = 0.98
    k: int = 1
    threshold_from: str = "validation"
    holdout_share: float = 0.25
    draws: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not 1 <= len(self.components) <= 2:
            problems.append(
                f"method must be one of {', '.join(COMPONENTS)} or two of them joined by '+', "
                f"got {self.method!r}"
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


@dataclass(frozen=True, slots=True)
class LoioEstimate:
    """What fitting found on validation data: thresholds, and pseudo out-of-scope figures.

    Attributes:
        thresholds: the threshold of each leave-intents-out draw.
        validation_threshold: the operating point on all validation messages, as the fitted
            detector scores them (see `OosOptions.threshold_from`).
        auroc / fpr_at_95 / oos_recall: on the held-out intents' validation messages (and the
            real out-of-scope ones, if any), averaged over draws.
        in_scope_recall: share of the kept intents' validation messages passed.
        accuracy_drop: share of them answered right without the detector and declined by it.
        real_oos: how many real out-of-scope validation examples took part.
    """

    thresholds: tuple[float, ...]
    auroc: float
    fpr_at_95: float
    oos_recall: float
    in_scope_recall: float
    accuracy_drop: float
    real_oos: int = 0
    validation_threshold: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "thresholds": list(self.thresholds)
        }


def _empty(dim: int, rows: int = 0) -> np.ndarray:
    return np.zeros((rows, dim), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class OosDetector:
    """A fitted out-of-scope detector: the arrays one method needs, its normaliser, threshold.

    `score(embeddings, logits)` works on the pooled embeddings and raw logits of one forward;
    higher is more out of scope, above `threshold` is out of scope.

    Attributes:
        method: see `OosOptions.method`.
        temperature: the classifier's calibration temperature.
        columns: the in-scope columns of the logits (all but an out-of-scope label).
        softmax_columns: the columns the softmax runs over (the in-scope ones plus an
            out-of-scope label, whose mass then lowers the confidence).
        means / whitening: class means and the whitening matrix (`mahalanobis` only).
        bank: unit-length training embeddings (`knn` only).
        k: see `OosOptions.k`.
        center / scale: per component, mean and spread on in-scope validation messages.
        threshold: in normalised units; see `choose_threshold`.
        keep_recall: the operating point the threshold was chosen for.
        estimate: what leave-intents-out found (None for a detector fitted without it).
    """

    method: str
    temperature: float
    columns: tuple[int, ...]
    softmax_columns: tuple[int, ...]
    means: np.ndarray
    whitening: np.ndarray
    bank: np.ndarray
    k: int
    center: np.ndarray
    scale: np.ndarray
    threshold: float = math.inf
    keep_recall: float = 0.98
    estimate: LoioEstimate | None = field(default=None, compare=False)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.method.split("+"))

    def raw_scores(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Each component's score, un-normalised, shape (n, components)."""
        out = []
        for component in self.components:
            if component == "msp":
                out.append(msp_score(logits, self.temperature, self.columns, self.softmax_columns))
            elif component == "energy":
                out.append(energy_score(logits, self.temperature, self.columns))
            elif component == "mahalanobis":
                out.append(mahalanobis_score(embeddings, self.means, self.whitening))
            else:
                out.append(knn_score(embeddings, self.bank, self.k))
        return np.stack(out, axis=1).astype(np.float64)

    def score(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Out-of-scope score per message (higher: more out of scope)."""
        return ((self.raw_scores(embeddings, logits) - self.center) / self.scale).mean(axis=1)

    def is_out_of_scope(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """True where the score is above the threshold."""
        return self.score(embeddings, logits) > self.threshold

    @classmethod
    def fit(
        cls,
        train_embeddings: np.ndarray,
        train_labels: np.ndarray,
        validation_embeddings: np.ndarray,
        validation_logits: np.ndarray,
        validation_labels: np.ndarray,
        temperature: float,
        options: OosOptions = OosOptions(),
        oos_label: int | None = None,
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

        Raises:
            ConfigurationError: fewer than two in-scope labels with validation examples
                (leave-intents-out needs one to hold out and one to keep).
        """
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
        )
        detector = _fit_parts(
            options, train_embeddings, train_labels, classes, temperature, n_labels, oos_label
        )
        in_scope = np.isin(validation_labels, classes)
        x, logits = validation_embeddings[in_scope], validation_logits[in_scope]
        detector = detector.normalised(x, logits)
        correct = (
            np.array(classes)[logits[:, classes].argmax(axis=1)] == validation_labels[in_scope]
        )
        real = validation_labels == oos_label
        validation_threshold = choose_threshold(
            detector.score(x, logits),
            correct,
            options.keep_recall,
            detector.score(validation_embeddings[real], validation_logits[real])
            if real.any()
            else None,
        )
        estimate = dataclasses.replace(estimate, validation_threshold=validation_threshold)
        return cls(
            **{name: getattr(detector, name) for name in _FIELDS},
            threshold=validation_threshold
            if options.threshold_from == "validation"
            else float(np.mean(estimate.thresholds)),
            keep_recall=options.keep_recall,
            estimate=estimate,
        )

    def normalised(self, embeddings: np.ndarray, logits: np.ndarray) -> OosDetector:
        """A copy whose normaliser is the mean and spread of these in-scope messages."""
        raw = self.raw_scores(embeddings, logits)
        center = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        scale = raw.std(axis=0) if len(raw) > 1 else np.ones(raw.shape[1])
        return OosDetector(
            **{name: getattr(self, name) for name in _FIELDS if name not in ("center", "scale")},
            center=center,
            scale=np.where(scale > 1e-12, scale, 1.0),
            keep_recall=self.keep_recall,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON part (everything but the arrays)."""
        return {
            "method": self.method,
            "temperature": self.temperature,
            "columns": list(self.columns),
            "softmax_columns": list(self.softmax_columns),
            "k": self.k,
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "threshold": self.threshold,
            "keep_recall": self.keep_recall,
            "estimate": None if self.estimate is None else self.estimate.to_dict(),
        }

    def save(self, directory: Path) -> list[Path]:
        """Write `oos_detector.json` and `oos_detector.npz` into a model directory.

        The neighbour bank is stored as float16 (half the bytes; cosine similarities move
        by ~1e-3, far below the gaps the threshold works on). Returns the files written.
        """
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        if "mahalanobis" in self.components:
            arrays["means"], arrays["whitening"] = self.means, self.whitening
        if "knn" in self.components:
            arrays["bank"] = self.bank.astype(np.float16)
        json_path, arrays_path = directory / DETECTOR_FILE, directory / ARRAYS_FILE
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        with arrays_path.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        return [json_path, arrays_path]

    @classmethod
    def load(cls, directory: Path) -> OosDetector:
        """Read a detector saved by `save`."""
        data = json.loads((directory / DETECTOR_FILE).read_text())
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
            stored = {name: arrays[name] for name in arrays.files}
        dim = next((a.shape[1] for a in stored.values()), 0)
        estimate = data.get("estimate")
        return cls(
            method=str(data["method"]),
            temperature=float(data["temperature"]),
            columns=tuple(int(c) for c in data["columns"]),
            softmax_columns=tuple(int(c) for c in data["softmax_columns"]),
            means=stored.get("means", _empty(dim)).astype(np.float32),
            whitening=stored.get("whitening", _empty(dim)).astype(np.float32),
            bank=stored.get("bank", _empty(dim)).astype(np.float32),
            k=int(data["k"]),
            center=np.asarray(data["center"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            threshold=float(data["threshold"]),
            keep_recall=float(data["keep_recall"]),
            estimate=None
            if estimate is None
            else LoioEstimate(**estimate | {"thresholds": tuple(estimate["thresholds"])}),
        )


_FIELDS = (
    "method",
    "temperature",
    "columns",
    "softmax_columns",
    "means",
    "whitening",
    "bank",
    "k",
    "center",
    "scale",
)


def _fit_parts(
    options: OosOptions,
    embeddings: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    temperature: float,
    n_labels: int,
    oos_label: int | None,
) -> OosDetector:
    """A detector that knows only `classes` (not yet normalised or thresholded)."""
    dim = embeddings.shape[1]
    components = options.components
    known = np.isin(labels, list(classes))
    x, y = embeddings[known].astype(np.float32), labels[known]
    means, whitening, bank = _empty(dim), _empty(dim), _empty(dim)
    if "mahalanobis" in components:
        present = [c for c in classes if (y == c).any()]
        means = class_means(x, y, present)
        row = {c: i for i, c in enumerate(present)}
        whitening = tied_whitening(x, np.array([row[c] for c in y], dtype=int), means)
    if "knn" in components:
        bank = unit_rows(x)
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
) -> LoioEstimate:
    """Thresholds and pseudo out-of-scope figures from seeded leave-intents-out draws.

    Each draw holds out `options.holdout_share` of the in-scope labels that have validation
    examples and fits the detector on the rest, as if the held-out intents did not exist:
    distance methods lose their class means and neighbour-bank entries (and the covariance
    is re-estimated), logit methods lose their logits (approximate: the encoder and head
    still learned them; nothing is retrained). The kept intents' validation messages are the
    in-scope side (the normaliser is fitted on them), the held-out intents' validation
    messages the out-of-scope side, joined by real out-of-scope validation examples when
    `oos_label` has any. The draw's threshold is `choose_threshold` on them.

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
            options, train_embeddings, train_labels, kept, temperature, n_labels, oos_label
        )
        in_rows = np.isin(validation_labels, kept)
        out_rows = np.isin(validation_labels, list(held))
        part = part.normalised(validation_embeddings[in_rows], validation_logits[in_rows])
        in_scores = part.score(validation_embeddings[in_rows], validation_logits[in_rows])
        # Right or wrong as the classifier would be without the held-out intents' logits.
        predicted = np.array(kept)[validation_logits[in_rows][:, kept].argmax(axis=1)]
        correct = predicted == validation_labels[in_rows]
        real_scores = (
            part.score(validation_embeddings[real], validation_logits[real])
            if real is not None and real.any()
            else None
        )
        out_scores = part.score(validation_embeddings[out_rows], validation_logits[out_rows])
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

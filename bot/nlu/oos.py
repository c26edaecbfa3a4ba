"""Out-of-scope detection at run time: scores from what one forward already gives.

The intent model is trained on the intents it knows; a message about anything else still gets
a softmax that sums to 1 over them, often confidently. An `OosDetector` says how unlike the
training data a message is, from what the runtime computes for every message anyway (the
intent model's mean-pooled output and the head's logits, and the answer index's query
embedding, which the shared forward computes from the same pass), so declining out-of-scope
messages costs no second forward. Higher scores mean more out of scope; above `threshold` the
message is out of scope. `training/ood.py` fits detectors (and explains the methods and the
threshold); this module scores with one and reads and writes its files next to the intent
model:

- `oos_detector.json`: method, temperature, columns, normaliser, threshold, the fitting
  figures, and the detector to fall back on without sentence embeddings (`fallback`);
- `oos_detector.npz`: the arrays the method needs (neighbour banks in float16, class means and
  whitening matrix, the sentence encoder's embeddings of `SENTENCE_PROBES`).

`sentence-knn` measures in the sentence encoder's space (the backbone as it was before
fine-tuning, which is what the answer index embeds with by default): fine-tuning pulls every
message towards some intent, the untuned encoder still places it by its topic. A detector
using it carries a fallback without it, served when the runtime has no sentence embedding of
the message from the same forward, or one from another encoder (`for_sentence_encoder`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.core.datafiles import abbreviate
from bot.core.errors import ModelNotFoundError

COMPONENTS = ("msp", "energy", "mahalanobis", "knn", "sentence-knn")
SENTENCE_KNN = "sentence-knn"
# Embedded by the sentence encoder when a detector is fitted and again when it is served: the
# same encoder gives the same vectors, any other encoder does not (see `for_sentence_encoder`).
SENTENCE_PROBES = (
    "hi",
    "Where is my order? It was due last Tuesday and the tracking page still says pending.",
    "I want a REFUND now!!",
    "what's the weather like in Paris tomorrow",
)
# Largest difference per coordinate between the stored and the serving encoder's probe
# embeddings (unit vectors) still taken as the same encoder: float32 noise and thread counts
# move them by ~1e-6; another model or an int8 copy by 1e-2 and more.
SAME_ENCODER_TOLERANCE = 1e-3
DETECTOR_FILE = "oos_detector.json"
ARRAYS_FILE = "oos_detector.npz"
_CHUNK = 2048  # rows per block when comparing with the neighbour bank (bounded memory)


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


@dataclass(frozen=True, slots=True)
class LoioEstimate:
    """What fitting found on validation data: thresholds, and pseudo out-of-scope figures.

    Attributes:
        thresholds: the threshold of each leave-intents-out draw.
        validation_threshold: the operating point on all validation messages, as the fitted
            detector scores them (see `training.ood.OosOptions.threshold_from`).
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


def empty_rows(dim: int, rows: int = 0) -> np.ndarray:
    return np.zeros((rows, dim), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class OosDetector:
    """A fitted out-of-scope detector: the arrays one method needs, its normaliser, threshold.

    `score(embeddings, logits)` works on the pooled embeddings and raw logits of one forward;
    higher is more out of scope, above `threshold` is out of scope.

    Attributes:
        method: a name in `COMPONENTS` or two joined by `+` (see `training.ood.OosOptions`).
        temperature: the classifier's calibration temperature.
        columns: the in-scope columns of the logits (all but an out-of-scope label).
        softmax_columns: the columns the softmax runs over (the in-scope ones plus an
            out-of-scope label, whose mass then lowers the confidence).
        means / whitening: class means and the whitening matrix (`mahalanobis` only).
        bank: unit-length training embeddings (`knn` only).
        sentence_bank: the training examples' unit-length sentence embeddings
            (`sentence-knn` only).
        sentence_probe: the sentence encoder's embeddings of `SENTENCE_PROBES` when it was
            fitted (`sentence-knn` only).
        k: which nearest training example `knn` measures the distance to (1: the nearest).
        center / scale: per component, mean and spread on in-scope validation messages.
        threshold: in normalised units; see `training.ood.choose_threshold`.
        keep_recall: the operating point the threshold was chosen for.
        estimate: what leave-intents-out found (None for a detector fitted without it).
        sentence_model: the sentence encoder `sentence-knn` was fitted with (for messages).
        fallback: the detector to serve without sentence embeddings (`sentence-knn` only).
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
    sentence_bank: np.ndarray = field(default_factory=lambda: empty_rows(0), compare=False)
    sentence_probe: np.ndarray = field(default_factory=lambda: empty_rows(0), compare=False)
    sentence_model: str = ""
    fallback: OosDetector | None = field(default=None, compare=False)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.method.split("+"))

    @property
    def needs_sentences(self) -> bool:
        """Whether scoring needs the messages' sentence embeddings (`sentence-knn`)."""
        return SENTENCE_KNN in self.components

    def for_sentence_encoder(self, probe: np.ndarray | None) -> tuple[OosDetector, str]:
        """The detector to serve, and why, given the serving sentence encoder's embeddings of
        `SENTENCE_PROBES` (None: the runtime has no sentence embedding from the same forward).

        This detector when it needs no sentences or the encoder is the one it was fitted
        with; else its fallback (fitted on the same data without `sentence-knn`).
        """
        if not self.needs_sentences:
            return self, self.method
        same = (
            probe is not None
            and probe.shape == self.sentence_probe.shape
            and float(np.abs(probe - self.sentence_probe).max()) <= SAME_ENCODER_TOLERANCE
        )
        if same:
            return self, self.method
        if self.fallback is None:
            raise ValueError(f"{self.method} needs sentence embeddings and has no fallback")
        why = (
            "no sentence embedding comes from the same forward"
            if probe is None
            else f"the answer index's encoder is not {self.sentence_model or 'the one fitted'}"
        )
        return self.fallback, f"{self.fallback.method} ({why})"

    def raw_scores(
        self, embeddings: np.ndarray, logits: np.ndarray, sentences: np.ndarray | None = None
    ) -> np.ndarray:
        """Each component's score, un-normalised, shape (n, components).

        Raises:
            ValueError: the method uses `sentence-knn` and `sentences` is None.
        """
        out = []
        for component in self.components:
            if component == "msp":
                out.append(msp_score(logits, self.temperature, self.columns, self.softmax_columns))
            elif component == "energy":
                out.append(energy_score(logits, self.temperature, self.columns))
            elif component == "mahalanobis":
                out.append(mahalanobis_score(embeddings, self.means, self.whitening))
            elif component == SENTENCE_KNN:
                if sentences is None:
                    raise ValueError(
                        f"the out-of-scope method {self.method} needs the messages' sentence "
                        "embeddings; serve its fallback (`for_sentence_encoder`) without them"
                    )
                out.append(knn_score(sentences, self.sentence_bank, self.k))
            else:
                out.append(knn_score(embeddings, self.bank, self.k))
        return np.stack(out, axis=1).astype(np.float64)

    def score(
        self, embeddings: np.ndarray, logits: np.ndarray, sentences: np.ndarray | None = None
    ) -> np.ndarray:
        """Out-of-scope score per message (higher: more out of scope)."""
        raw = self.raw_scores(embeddings, logits, sentences)
        return ((raw - self.center) / self.scale).mean(axis=1)

    @property
    def oos_column(self) -> int | None:
        """The logits column of an out-of-scope label the model was trained with, if any."""
        extra = sorted(set(self.softmax_columns) - set(self.columns))
        return extra[0] if extra else None

    def is_out_of_scope(
        self, embeddings: np.ndarray, logits: np.ndarray, sentences: np.ndarray | None = None
    ) -> np.ndarray:
        """True where the score is above the threshold."""
        return self.decide(embeddings, logits, sentences)[1]

    def decide(
        self, embeddings: np.ndarray, logits: np.ndarray, sentences: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores, and whether each message is out of scope: its score is above the threshold,
        or the model's best label is the out-of-scope label it was trained with."""
        scores = self.score(embeddings, logits, sentences)
        flags = scores > self.threshold
        column = self.oos_column
        if column is not None and len(logits):
            flags |= np.asarray(logits).argmax(axis=1) == column
        return scores, flags

    def normalised(
        self, embeddings: np.ndarray, logits: np.ndarray, sentences: np.ndarray | None = None
    ) -> OosDetector:
        """A copy whose normaliser is the mean and spread of these in-scope messages."""
        raw = self.raw_scores(embeddings, logits, sentences)
        center = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        scale = raw.std(axis=0) if len(raw) > 1 else np.ones(raw.shape[1])
        return OosDetector(
            **{name: getattr(self, name) for name in FIELDS if name not in ("center", "scale")},
            center=center,
            scale=np.where(scale > 1e-12, scale, 1.0),
            keep_recall=self.keep_recall,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON part (everything but the arrays; a fallback shares them)."""
        out: dict[str, Any] = {
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
        if self.needs_sentences:
            out["sentence_model"] = self.sentence_model
        if self.fallback is not None:
            out["fallback"] = self.fallback.to_dict()
        return out

    def save(self, directory: Path) -> list[Path]:
        """Write `oos_detector.json` and `oos_detector.npz` into a model directory.

        The neighbour bank is stored as float16 (half the bytes; cosine similarities move
        by ~1e-3, far below the gaps the threshold works on). Returns the files written.
        """
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for part in (self, self.fallback):
            if part is None:
                continue
            if "mahalanobis" in part.components:
                arrays["means"], arrays["whitening"] = part.means, part.whitening
            if "knn" in part.components:
                arrays["bank"] = part.bank.astype(np.float16)
        if self.needs_sentences:
            arrays["sentence_bank"] = self.sentence_bank.astype(np.float16)
            arrays["sentence_probe"] = self.sentence_probe.astype(np.float32)
        json_path, arrays_path = directory / DETECTOR_FILE, directory / ARRAYS_FILE
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        with arrays_path.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        return [json_path, arrays_path]

    @classmethod
    def load_if_present(cls, directory: Path) -> OosDetector | None:
        """The detector saved in a model directory; None for a model trained without one
        (an older supportbot, or a sentiment model).

        Raises:
            ModelNotFoundError: the detector files are there but cannot be read.
        """
        if not (directory / DETECTOR_FILE).is_file():
            return None
        try:
            return cls.load(directory)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelNotFoundError(
                f"{directory / DETECTOR_FILE}: the out-of-scope detector cannot be read "
                f"({abbreviate(str(exc))}); train the model again, or delete {DETECTOR_FILE} "
                f"and {ARRAYS_FILE} to serve it without out-of-scope detection"
            ) from exc

    @classmethod
    def load(cls, directory: Path) -> OosDetector:
        """Read a detector saved by `save`."""
        data = json.loads((directory / DETECTOR_FILE).read_text())
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
            stored = {name: arrays[name] for name in arrays.files}
        return cls._from_dict(data, stored)

    @classmethod
    def _from_dict(cls, data: dict[str, Any], stored: dict[str, np.ndarray]) -> OosDetector:
        dim = next((a.shape[1] for k, a in stored.items() if not k.startswith("sentence")), 0)
        estimate = data.get("estimate")
        components = str(data["method"]).split("+")
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown method {data['method']!r}")
        needed = {
            "knn": "bank",
            "mahalanobis": "means",
            SENTENCE_KNN: "sentence_bank",
        }
        missing = [needed[c] for c in components if c in needed and needed[c] not in stored]
        if SENTENCE_KNN in components and "fallback" not in data:
            missing.append("a fallback")
        if missing:
            raise ValueError(f"{ARRAYS_FILE} lacks {', '.join(missing)}")
        sentences = SENTENCE_KNN in components
        fallback = data.get("fallback")
        return cls(
            method=str(data["method"]),
            temperature=float(data["temperature"]),
            columns=tuple(int(c) for c in data["columns"]),
            softmax_columns=tuple(int(c) for c in data["softmax_columns"]),
            means=stored.get("means", empty_rows(dim)).astype(np.float32),
            whitening=stored.get("whitening", empty_rows(dim)).astype(np.float32),
            bank=stored.get("bank", empty_rows(dim)).astype(np.float32),
            k=int(data["k"]),
            center=np.asarray(data["center"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            threshold=float(data["threshold"]),
            keep_recall=float(data["keep_recall"]),
            estimate=None
            if estimate is None
            else LoioEstimate(**estimate | {"thresholds": tuple(estimate["thresholds"])}),
            sentence_bank=stored["sentence_bank"].astype(np.float32)
            if sentences
            else empty_rows(0),
            sentence_probe=stored["sentence_probe"].astype(np.float32)
            if sentences
            else empty_rows(0),
            sentence_model=str(data.get("sentence_model", "")),
            fallback=None if fallback is None else cls._from_dict(fallback, stored),
        )


FIELDS = (
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
    "sentence_bank",
    "sentence_probe",
    "sentence_model",
)

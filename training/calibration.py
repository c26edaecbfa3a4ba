"""Confidence that means something: temperature scaling and an abstain threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class Calibration:
    """What calibration on the validation set found.

    Attributes:
        temperature: divide logits by this before the softmax.
        threshold: predictions with a calibrated confidence below it should abstain.
        ece_before / ece_after: expected calibration error at T=1 and at `temperature`.
        coverage: share of validation predictions at or above `threshold`.
        precision_at_threshold: accuracy of those predictions.
    """

    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    coverage: float
    precision_at_threshold: float


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 200) -> float:
    """The temperature that minimises validation negative log-likelihood (Guo et al. 2017)."""
    if len(targets) == 0:
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)
    logits = logits.detach().float()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    # Guard against degenerate fits on tiny or perfectly separated validation sets.
    return float(min(max(temperature, 0.25), 20.0))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins."""
    if len(targets) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_precision: float
) -> tuple[float, float, float]:
    """The lowest confidence at which predictions above it reach `target_precision`.

    Returns:
        (threshold, coverage, precision) on the given predictions. When no cut reaches the
        target, the threshold is the highest confidence seen (abstain on nearly everything),
        which tells the operator the model needs more data.
    """
    if len(confidence) == 0:
        return 0.0, 0.0, 0.0
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # The bot answers everything at or above the threshold, so a cut may only fall after the
    # last of a run of equal confidences (softmax often saturates at exactly 1.0).
    last_of_tie = np.append(sorted_conf[:-1] > sorted_conf[1:], True)
    ok = np.nonzero((running >= target_precision) & last_of_tie)[0]
    if len(ok) == 0:
        first = int(np.nonzero(last_of_tie)[0][0])
        return float(sorted_conf[first]), (first + 1) / len(order), float(running[first])
    k = int(ok[-1])
    if k == len(order) - 1:
        # Every validation prediction is precise enough: keep a small floor so that
        # text unlike anything seen (near-uniform scores) still abstains.
        return float(min(sorted_conf[k], 0.2)), 1.0, float(running[k])
    return float(sorted_conf[k]), (k + 1) / len(order), float(running[k])


CORRECTION_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)


def weighting_correction(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: Sequence[float],
    steps: Sequence[float] = CORRECTION_STEPS,
) -> tuple[float, torch.Tensor]:
    """How much of the loss's class weighting to take back from the decisions.

    A loss weighted by inverse label frequency trains logits that favour the rare labels
    by about log(weight): the right amount for balanced recall, too much for macro-F1 when
    the rare labels are also the hardest (each over-call costs the frequent label's
    precision). Adding `-alpha * log(weight)` to the logits takes back a share `alpha` of
    it (1: the plain Bayes decision). `alpha` is picked from `steps` by macro-F1 on the
    validation set, ties going to the smaller correction, so a model the weighting suits is
    left alone. Labels with weight 0 (no training examples) are not moved.

    Returns:
        (alpha, the per-label shift to add to the logits, or the head's bias).
    """
    from sklearn.metrics import f1_score

    weights = torch.tensor(list(class_weights), dtype=torch.float)
    log_w = torch.where(weights > 0, weights.clamp_min(1e-12).log(), torch.zeros_like(weights))
    if len(targets) == 0 or not bool(log_w.any()):
        return 0.0, torch.zeros_like(weights)
    logits = logits.detach().float()
    y = targets.numpy()

    def score(alpha: float) -> float:
        predicted = (logits - alpha * log_w).argmax(-1).numpy()
        return float(f1_score(y, predicted, average="macro", zero_division=0))

    scores = {alpha: score(alpha) for alpha in steps}
    best = max(steps, key=lambda alpha: (scores[alpha], -alpha))
    return float(best), -best * log_w


def calibrate(logits: torch.Tensor, targets: torch.Tensor, target_precision: float) -> Calibration:
    """Fit the temperature, then pick the abstain threshold on calibrated confidences."""
    temperature = fit_temperature(logits, targets)
    y = targets.numpy()
    before = torch.softmax(logits, dim=-1).numpy()
    after = torch.softmax(logits / temperature, dim=-1).numpy()
    threshold, coverage, precision = choose_threshold(
        after.max(axis=1), after.argmax(axis=1) == y, target_precision
    )
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        ece_before=expected_calibration_error(before, y),
        ece_after=expected_calibration_error(after, y),
        coverage=coverage,
        precision_at_threshold=precision,
    )

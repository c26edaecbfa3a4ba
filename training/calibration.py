"""Confidence that means something: temperature scaling and an abstain threshold."""

from __future__ import annotations

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

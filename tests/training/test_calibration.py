"""Temperature scaling and the abstain threshold on synthetic logits with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.calibration import (
    calibrate,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    weighting_correction,
)


def overconfident_logits(
    true_temperature: float, n: int = 2000, classes: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `z` whose labels were drawn from softmax(z / T): the model is over-confident by T."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 4.0
    probs = torch.softmax(logits / true_temperature, dim=-1)
    targets = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, targets = overconfident_logits(true_temperature)

    fitted = fit_temperature(logits, targets)

    assert fitted == pytest.approx(true_temperature, abs=0.15 * true_temperature)


def test_fit_temperature_without_data_is_the_identity() -> None:
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_fit_temperature_is_bounded_on_perfectly_separated_data() -> None:
    # Every prediction right: the likelihood keeps improving as T -> 0; the guard stops it.
    logits = torch.eye(4).repeat(5, 1) * 3.0
    targets = torch.arange(4).repeat(5)

    assert fit_temperature(logits, targets) == pytest.approx(0.25)


def test_calibration_lowers_the_expected_calibration_error() -> None:
    logits, targets = overconfident_logits(2.0, seed=1)
    y = targets.numpy()

    temperature = fit_temperature(logits, targets)
    before = expected_calibration_error(torch.softmax(logits, -1).numpy(), y)
    after = expected_calibration_error(torch.softmax(logits / temperature, -1).numpy(), y)

    assert before > 0.1
    assert after < before / 3


def test_expected_calibration_error_of_a_hand_example() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = np.array([0, 1, 0, 1])
    # bins: {0.9, 0.9} accuracy 0.5 -> gap 0.4, weight 0.5; {0.6, 0.6} accuracy 1 -> gap 0.4.
    assert expected_calibration_error(probs, targets) == pytest.approx(0.4)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0


def test_choose_threshold_takes_the_lowest_confidence_meeting_the_target() -> None:
    confidence = np.array([0.6, 0.95, 0.7, 0.9, 0.8, 0.5])
    correct = np.array([False, True, True, True, True, False])
    # Sorted: 0.95 ok, 0.9 ok, 0.8 ok, 0.7 ok -> 4/4; 0.6 wrong -> 4/5 = 0.8; 0.5 -> 4/6.

    assert choose_threshold(confidence, correct, 0.9) == pytest.approx((0.7, 4 / 6, 1.0))
    assert choose_threshold(confidence, correct, 0.8) == pytest.approx((0.6, 5 / 6, 0.8))


def test_choose_threshold_looks_past_an_early_mistake() -> None:
    confidence = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, False, True, True, True, False])
    # Running precision: 1, .5, .67, .75, .8, .67 -> the cut at 0.6 is the lowest with >= 0.8.

    assert choose_threshold(confidence, correct, 0.8) == pytest.approx((0.6, 5 / 6, 0.8))


def test_choose_threshold_keeps_a_floor_when_everything_is_right() -> None:
    confidence = np.array([0.9, 0.55, 0.7])
    correct = np.array([True, True, True])

    assert choose_threshold(confidence, correct, 0.95) == pytest.approx((0.2, 1.0, 1.0))
    # Below the floor the lowest confidence itself is the threshold, so everything is answered.
    low = np.array([0.9, 0.1])
    assert choose_threshold(low, np.array([True, True]), 0.95) == pytest.approx((0.1, 1.0, 1.0))


def test_choose_threshold_when_no_cut_reaches_the_target() -> None:
    confidence = np.array([0.9, 0.8, 0.7])
    correct = np.array([False, True, True])

    threshold, coverage, precision = choose_threshold(confidence, correct, 0.9)

    assert threshold == pytest.approx(0.9)  # abstain on all but the most confident
    assert coverage == pytest.approx(1 / 3)
    assert precision == 0.0


def test_choose_threshold_with_tied_confidences_reports_what_the_bot_will_answer() -> None:
    # Saturated softmax scores tie at 1.0. The bot answers every prediction with
    # confidence >= threshold, so the reported coverage/precision must count all ties.
    confidence = np.array([1.0, 1.0, 1.0, 0.6])
    correct = np.array([True, True, False, True])

    threshold, coverage, precision = choose_threshold(confidence, correct, 0.9)

    answered = confidence >= threshold
    assert coverage == pytest.approx(answered.mean())
    assert precision == pytest.approx(correct[answered].mean())


def test_choose_threshold_without_predictions() -> None:
    assert choose_threshold(np.zeros(0), np.zeros(0, dtype=bool), 0.9) == (0.0, 0.0, 0.0)


def test_calibrate_reports_a_consistent_threshold() -> None:
    logits, targets = overconfident_logits(2.0, n=1000, seed=2)

    result = calibrate(logits, targets, target_precision=0.9)

    probs = torch.softmax(logits / result.temperature, -1).numpy()
    confidence = probs.max(axis=1)
    answered = confidence >= result.threshold
    correct = probs.argmax(axis=1) == targets.numpy()
    assert result.temperature == pytest.approx(2.0, abs=0.3)
    assert result.ece_after < result.ece_before
    assert result.coverage == pytest.approx(answered.mean())
    assert result.precision_at_threshold == pytest.approx(correct[answered].mean())
    assert result.precision_at_threshold >= 0.9
    assert 0 < result.coverage < 1


PRIOR = torch.tensor([4 / 6, 1 / 6, 1 / 6])
WEIGHTS = [0.5, 2.0, 2.0]  # inverse label frequency, as `class_weighting` gives it


def _scored(seed: int, n: int = 1200) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayes-optimal logits (evidence + log prior) over a frequent label 0 and rare 1, 2."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0] * (n * 4 // 6) + [1] * (n // 6) + [2] * (n // 6))
    evidence = F.one_hot(targets, 3).float() + torch.randn(len(targets), 3, generator=generator)
    return evidence + PRIOR.log(), targets


def _macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(targets.numpy(), logits.argmax(-1).numpy(), average="macro"))


def test_weighting_correction_takes_back_an_over_correction() -> None:
    logits, targets = _scored(0)
    # A weighted loss learns about logits + log(weight); twice that over-calls the rare labels.
    skewed = logits + 2 * torch.tensor(WEIGHTS).log()
    alpha, shift = weighting_correction(skewed, targets, WEIGHTS)
    assert alpha > 0
    assert torch.allclose(shift, -alpha * torch.tensor(WEIGHTS).log())
    assert _macro_f1(skewed + shift, targets) > _macro_f1(skewed, targets) + 0.02


def test_weighting_correction_leaves_a_model_it_suits_alone() -> None:
    logits, targets = _scored(1)
    # A model that already under-calls the rare labels: taking weighting back only hurts.
    alpha, shift = weighting_correction(logits + PRIOR.log(), targets, WEIGHTS)
    assert alpha == 0.0 and torch.equal(shift, torch.zeros(3))


def test_weighting_correction_without_data_or_with_an_unseen_label() -> None:
    logits, targets = _scored(2)
    skewed = logits + 2 * torch.tensor(WEIGHTS).log()
    assert weighting_correction(skewed[:0], targets[:0], WEIGHTS)[0] == 0.0
    assert weighting_correction(skewed, targets, [1.0, 1.0, 1.0])[0] == 0.0  # nothing weighted
    # A label with weight 0 had no training examples: it is never moved.
    alpha, shift = weighting_correction(skewed, targets, [0.5, 2.0, 0.0])
    assert alpha > 0 and float(shift[2]) == 0.0

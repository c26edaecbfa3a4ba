"""TrainingArguments: validation that names the field, epoch resolution, saving and loading."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from bot.core.errors import ConfigurationError
from training.arguments import TrainingArguments


def test_defaults_are_valid() -> None:
    args = TrainingArguments()

    assert args.model == "bundled"
    assert args.epochs is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("gradient_accumulation_steps", 0),
        ("learning_rate", 0.0),
        ("learning_rate", 1.0),
        ("learning_rate", float("nan")),
        ("head_learning_rate_multiplier", 0.0),
        ("weight_decay", -0.1),
        ("warmup_ratio", 1.0),
        ("warmup_ratio", -0.1),
        ("max_length", 7),
        ("max_length", 8193),
        ("label_smoothing", 1.0),
        ("class_weighting", "inverse"),
        ("early_stopping_patience", 0),
        ("validation_fraction", 0.5),
        ("test_fraction", -0.1),
        ("min_examples_per_label", -1),
        ("target_steps", 0),
        ("max_epochs", 0),
        ("lora_r", 0),
        ("lora_dropout", 1.0),
        ("mixed_precision", "fp8"),
        ("abstain_precision", 0.0),
        ("abstain_precision", 1.01),
    ],
)
def test_an_invalid_value_is_refused_naming_the_field(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        TrainingArguments(**{name: value})

    message = str(excinfo.value)
    assert message.startswith("invalid training arguments: ")
    assert name in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 1),
        ("learning_rate", 0.999),
        ("warmup_ratio", 0.0),
        ("max_length", 8),
        ("max_length", 8192),
        ("label_smoothing", 0.0),
        ("class_weighting", "balanced"),
        ("class_weighting", "none"),
        ("validation_fraction", 0.0),
        ("test_fraction", 0.49),
        ("min_examples_per_label", 0),
        ("mixed_precision", "bf16"),
        ("abstain_precision", 1.0),
    ],
)
def test_boundary_values_are_accepted(name: str, value: Any) -> None:
    assert getattr(TrainingArguments(**{name: value}), name) == value


def test_invalid_values_are_reported_together() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        TrainingArguments(batch_size=0, learning_rate=5.0, class_weighting="yes", max_length=4)

    message = str(excinfo.value)
    for name in ("batch_size", "learning_rate", "class_weighting", "max_length"):
        assert name in message
    assert "got 0" in message and "got 5.0" in message and "got 'yes'" in message
    assert "balanced" in message  # lists the allowed choices


def test_resolved_epochs_uses_explicit_epochs() -> None:
    assert TrainingArguments(epochs=3).resolved_epochs(100_000) == 3
    assert TrainingArguments(epochs=50).resolved_epochs(10) == 50


def test_resolved_epochs_aims_at_target_steps() -> None:
    args = TrainingArguments(batch_size=32, target_steps=500)

    # 3200 examples = 100 steps per epoch -> 5 epochs for 500 steps.
    assert args.resolved_epochs(3200) == 5
    # 3201 examples = 101 steps per epoch -> 4.95 -> 5 epochs.
    assert args.resolved_epochs(3201) == 5


def test_resolved_epochs_counts_accumulated_steps() -> None:
    args = TrainingArguments(batch_size=16, gradient_accumulation_steps=4, target_steps=100)

    # 6400 examples / (16 * 4) = 100 optimizer steps per epoch -> 1, raised to the minimum 2.
    assert args.resolved_epochs(6400) == 2
    # 1280 examples = 20 optimizer steps per epoch -> 5 epochs.
    assert args.resolved_epochs(1280) == 5


def test_resolved_epochs_for_small_sets_stops_at_max_epochs() -> None:
    assert TrainingArguments().resolved_epochs(40) == 30
    assert TrainingArguments(max_epochs=8).resolved_epochs(40) == 8
    assert TrainingArguments().resolved_epochs(0) == 30


def test_resolved_epochs_for_large_sets_runs_at_least_two() -> None:
    assert TrainingArguments().resolved_epochs(1_000_000) == 2


@pytest.mark.parametrize("train_size", [40, 1_000_000])
def test_resolved_epochs_never_exceeds_max_epochs(train_size: int) -> None:
    # max_epochs=1 is accepted by validation, so it must bound the automatic choice too.
    assert TrainingArguments(max_epochs=1).resolved_epochs(train_size) == 1


def test_to_dict_from_dict_round_trip_through_json() -> None:
    args = TrainingArguments(
        model="/models/my-backbone",
        epochs=None,
        batch_size=8,
        learning_rate=3e-5,
        class_weighting="balanced",
        tuned_layers=None,
        lora=True,
        lora_r=4,
        mixed_precision="no",
        abstain_precision=0.95,
    )

    saved = json.loads(json.dumps(args.to_dict()))
    loaded = TrainingArguments.from_dict(saved)

    assert loaded == args
    assert set(saved) == {f.name for f in dataclasses.fields(TrainingArguments)}


def test_from_dict_with_an_unknown_key() -> None:
    data = {**TrainingArguments().to_dict(), "learnin_rate": 0.1, "epoch": 3}

    with pytest.raises(ConfigurationError) as excinfo:
        TrainingArguments.from_dict(data)

    message = str(excinfo.value)
    assert "epoch, learnin_rate" in message
    assert "learning_rate" in message  # the known names, so the typo is easy to spot


def test_from_dict_validates_values() -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        TrainingArguments.from_dict({"batch_size": -1})


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert TrainingArguments.from_dict({"seed": 1}) == TrainingArguments(seed=1)


def test_tuned_layers_flag_and_its_rules() -> None:
    import argparse

    from training.cli import layers_to_tune, tuned_layers

    assert tuned_layers("2") == 2 and tuned_layers("ALL") == "all"
    for bad in ("0", "-1", "some"):
        with pytest.raises(argparse.ArgumentTypeError, match="number of layers >= 1 or `all`"):
            tuned_layers(bad)
    assert layers_to_tune(None, lora=False) == TrainingArguments().tuned_layers == 3
    assert layers_to_tune(None, lora=True) is None  # LoRA adapts every layer
    assert layers_to_tune("all", lora=False) is None
    assert layers_to_tune(1, lora=False) == 1
    with pytest.raises(ConfigurationError, match="--tuned-layers all"):
        TrainingArguments(lora=True, tuned_layers=2)
    with pytest.raises(ConfigurationError, match="tuned_layers must be >= 1"):
        TrainingArguments(tuned_layers=0)

"""Training hyperparameters: one validated dataclass, saved next to every model it produced."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from bot.core.errors import ConfigurationError
from bot.nlu.artifacts import DEFAULT_BACKBONE
from bot.nlu.oos import COMPONENTS as OOS_COMPONENTS

CLASS_WEIGHTING = ("auto", "balanced", "none")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainingArguments:
    """Everything that decides how a classifier is fine-tuned.

    The defaults are the recipe measured on Banking77 (../shared/MEASUREMENTS.md, with the top
    three layers tuned, benchmarks/training_benchmark.py): mean
    pooling + linear head, body lr 1e-4 with the head at 20x, label smoothing 0.1 and
    length-bucketed batches.

    Args:
        model: backbone; `bundled` is the offline all-MiniLM-L6-v2, else any Hugging Face
            name or local path.
        epochs: passes over the training data; None picks enough epochs for `target_steps`
            optimizer steps (small data sets need more passes), between 2 and `max_epochs`.
        batch_size: examples per forward pass.
        gradient_accumulation_steps: forward passes per optimizer step.
        learning_rate: AdamW learning rate of the encoder.
        head_learning_rate_multiplier: the freshly initialised head learns this much faster.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm).
        warmup_ratio: share of optimizer steps with linear warm-up, then linear decay to 0.
        max_length: tokens per text; longer texts are truncated.
        label_smoothing: cross-entropy label smoothing.
        class_weighting: `balanced` weights the loss by inverse label frequency, `auto` does
            so when the largest label is more than 3x the smallest, `none` never.
        early_stopping_patience: epochs without a better validation macro-F1 before stopping.
        validation_fraction / test_fraction: per-label shares held out (test only when no
            separate test set is given).
        min_examples_per_label: validation rejects labels with fewer distinct examples.
        seed: makes splits, initialisation and batch order reproducible.
        length_bucketing: batch texts of similar length (about 45 % less padding work).
        tuned_layers: fine-tune only this many top transformer layers (and the head); the
            embeddings and the layers below stay the backbone's. The runtime then computes
            those shared layers once per message for intent, sentiment and the answer index
            (see bot/nlu/shared_encoder.py). None fine-tunes every layer.
        lora: train LoRA adapters (peft) instead of the whole encoder; for large backbones.
        mixed_precision: `auto` uses bf16/fp16 autocast on a GPU and full precision on CPU.
        abstain_precision: the stored abstain threshold is the lowest calibrated confidence
            at which validation predictions above it are at least this precise.
        oos_method: how an intent model tells out-of-scope messages (about none of its
            intents) apart: `knn+energy+sentence-knn` (the default, see training/ood.py and
            the README's out-of-scope table), another name in `bot.nlu.oos.COMPONENTS` or two
            or three joined by `+`, or `none` for no detector (the model then only abstains
            below its confidence threshold).
        oos_keep_recall: the detector's operating point: the share of correctly answered
            in-scope validation messages it keeps (0.98 costs at most about 2 points of
            in-scope accuracy; lower declines more out-of-scope messages and more in-scope).
        oos_label: the label that marks out-of-scope training examples (default: the first
            of `out_of_scope` and `nlu_fallback` the data has). Its examples are trained on
            as a label, kept out of the detector's neighbours and used for its threshold.
    """

    model: str = DEFAULT_BACKBONE
    epochs: int | None = None
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    head_learning_rate_multiplier: float = 20.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 64
    label_smoothing: float = 0.1
    class_weighting: str = "auto"
    early_stopping_patience: int = 2
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_examples_per_label: int = 5
    seed: int = 42
    length_bucketing: bool = True
    target_steps: int = 800
    max_epochs: int = 30
    tuned_layers: int | None = 3
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    mixed_precision: str = "auto"
    abstain_precision: float = 0.9
    oos_method: str = "knn+energy+sentence-knn"
    oos_keep_recall: float = 0.98
    oos_label: str | None = None

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        need(
            0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}"
        )
        need(self.head_learning_rate_multiplier > 0, "head_learning_rate_multiplier must be > 0")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(
            8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}"
        )
        need(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        need(
            self.class_weighting in CLASS_WEIGHTING,
            f"class_weighting must be one of {', '.join(CLASS_WEIGHTING)}, "
            f"got {self.class_weighting!r}",
        )
        need(self.early_stopping_patience >= 1, "early_stopping_patience must be >= 1")
        need(
            0 <= self.validation_fraction < 0.5 and 0 <= self.test_fraction < 0.5,
            "validation_fraction and test_fraction must each be in [0, 0.5)",
        )
        need(self.min_examples_per_label >= 0, "min_examples_per_label must be >= 0")
        need(self.target_steps >= 1 and self.max_epochs >= 1, "target_steps, max_epochs >= 1")
        need(
            self.tuned_layers is None or self.tuned_layers >= 1,
            f"tuned_layers must be >= 1 (or all), got {self.tuned_layers}",
        )
        need(
            not (self.lora and self.tuned_layers is not None),
            "lora adapts every layer: use it with tuned_layers all (`--tuned-layers all`)",
        )
        need(self.lora_r >= 1 and 0 <= self.lora_dropout < 1, "lora_r >= 1, lora_dropout in [0,1)")
        need(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}",
        )
        need(0 < self.abstain_precision <= 1, "abstain_precision must be in (0, 1]")
        parts = self.oos_method.split("+")
        need(
            self.oos_method == "none"
            or (
                1 <= len(parts) <= 3
                and len(set(parts)) == len(parts)
                and all(part in OOS_COMPONENTS for part in parts)
            ),
            f"oos_method must be none, one of {', '.join(OOS_COMPONENTS)} or two or three of "
            f"them joined by '+', got {self.oos_method!r}",
        )
        need(
            0.5 <= self.oos_keep_recall < 1,
            f"oos_keep_recall must be in [0.5, 1), got {self.oos_keep_recall}",
        )
        need(
            self.oos_label is None or bool(self.oos_label.strip()),
            "oos_label must be a label name (or unset)",
        )
        if problems:
            raise ConfigurationError("invalid training arguments: " + "; ".join(problems))

    def resolved_epochs(self, train_size: int) -> int:
        """The number of epochs to run for a training set of `train_size` examples."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = max(
            1, math.ceil(train_size / (self.batch_size * self.gradient_accumulation_steps))
        )
        return min(self.max_epochs, max(2, math.ceil(self.target_steps / steps_per_epoch)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingArguments:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown training argument(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)

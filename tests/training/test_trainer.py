from __future__ import annotations

import random

import pytest
import torch

from training.arguments import TrainingArguments
from training.data import Example
from training.trainer import class_weights_for, collate, fine_tune, make_batches


def test_batches_cover_every_index_once_and_bucketing_cuts_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    for bucketed in (False, True):
        batches = make_batches(lengths, 32, random.Random(1), bucketed)
        assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = {
        bucketed: sum(
            max(lengths[i] for i in b) * len(b)
            for b in make_batches(lengths, 32, random.Random(1), bucketed)
        )
        for bucketed in (False, True)
    }
    assert padded[True] < 0.7 * padded[False]


def test_collate_pads_and_masks() -> None:
    ids, mask = collate([[5, 6, 7], [8]], [0, 1], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_class_weights_only_for_skewed_labels() -> None:
    labels = ["a", "b"]
    assert class_weights_for(labels, [0] * 10 + [1] * 8, "auto") is None
    weights = class_weights_for(labels, [0] * 40 + [1] * 4, "auto")
    assert weights is not None and weights[1] > 5 * weights[0]
    assert class_weights_for(labels, [0] * 40 + [1] * 4, "none") is None
    assert class_weights_for(labels, [0] * 10 + [1] * 8, "balanced") is not None


@pytest.mark.slow
def test_fine_tune_is_reproducible_with_a_seed() -> None:
    texts = {
        "yes": ["yes", "yep sure", "absolutely", "of course", "yes please"],
        "no": ["no", "nope", "no thanks", "absolutely not", "never"],
    }
    train = [Example(t, label, "mem", i) for label, ts in texts.items() for i, t in enumerate(ts)]
    args = TrainingArguments(epochs=1, batch_size=4, seed=3)
    a = fine_tune(train, [], ["no", "yes"], args, progress=False)
    b = fine_tune(train, [], ["no", "yes"], args, progress=False)
    assert torch.equal(a.model.head.weight, b.model.head.weight)
    assert a.best_epoch == 1 and len(a.history) == 1


@pytest.mark.slow
def test_lora_training_produces_a_plain_encoder() -> None:
    train = [
        Example(t, t.split()[0], "mem", i)
        for i, t in enumerate(["hello there", "hello you", "bye now", "bye then"])
    ]
    result = fine_tune(
        train, [], ["bye", "hello"], TrainingArguments(epochs=1, lora=True), progress=False
    )
    # merged back: no peft wrapper left, so the directory saves as a normal HF model
    assert type(result.model.encoder).__name__ == "BertModel"

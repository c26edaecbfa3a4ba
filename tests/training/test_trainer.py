from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.conftest import RUNTIME_ROWS
from training.arguments import TrainingArguments
from training.data import Example
from training.trainer import (
    align_new_rows,
    build_model,
    class_weights_for,
    collate,
    early_stop_note,
    encode,
    fine_tune,
    init_new_rows,
    make_batches,
    predict_logits,
)


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
        train,
        [],
        ["bye", "hello"],
        TrainingArguments(epochs=1, lora=True, tuned_layers=None),
        progress=False,
    )
    # merged back: no peft wrapper left, so the directory saves as a normal HF model
    assert type(result.model.encoder).__name__ == "BertModel"


def test_new_head_rows_start_from_their_examples(runtime_models: Path) -> None:
    from bot.nlu.classifier import read_meta
    from training.registry import FileModelRegistry

    live = FileModelRegistry(runtime_models).live_path("intent")
    known = read_meta(live).labels
    labels = sorted([*known, "cancel_order"])
    cancel = [
        "please cancel my order",
        "i want to cancel the order i just placed",
        "cancel order BC-104522 please",
        "how do i cancel my purchase",
        "cancel my order before it ships",
    ]
    old = [Example(t, label, "mem", i) for i, (t, label, _) in enumerate(RUNTIME_ROWS)]
    train = [*old, *(Example(t, "cancel_order", "mem", i) for i, t in enumerate(cancel))]
    args = TrainingArguments(seed=5)
    model, tokenizer = build_model(labels, args, live)
    row = labels.index("cancel_order")
    before = model.head.weight.detach().clone()

    assert init_new_rows(model, tokenizer, known, labels, train, args.max_length, 5) == [
        "cancel_order"
    ]

    others = [i for i in range(len(labels)) if i != row]
    assert torch.equal(model.head.weight[others], before[others])  # old rows untouched
    pad = tokenizer.pad_token_id
    new_logits = predict_logits(model, encode(tokenizer, cancel, args.max_length), pad)
    old_logits = predict_logits(model, encode(tokenizer, [e.text for e in old], 64), pad)
    # From the start the new label wins on its own examples and stays out of the old ones'.
    assert (new_logits.argmax(-1) == row).float().mean() >= 0.8
    assert (old_logits.argmax(-1) == row).float().mean() <= 0.1
    # Without a live model to compare with there is nothing to initialise from.
    assert init_new_rows(model, tokenizer, [], labels, train, args.max_length, 5) == []


def test_new_rows_are_aligned_to_the_old_rows_norm() -> None:
    from transformers import BertConfig, BertModel

    from bot.nlu.classifier import MeanPoolingClassifier

    # A tiny real encoder: only the head's geometry matters here.
    tiny = BertConfig(
        vocab_size=16,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
    )
    model = MeanPoolingClassifier(BertModel(tiny), 4)
    rows = torch.tensor(
        [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 3.0], [0.0, 0.5, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]]
    )
    with torch.no_grad():
        model.head.weight.copy_(rows)
    bias = model.head.bias.detach().clone()
    labels = ["old_a", "old_b", "new_a", "new_b"]

    norms = align_new_rows(model, labels, ["new_a", "new_b"])

    weight = model.head.weight.detach()
    assert torch.equal(weight[:2], rows[:2])  # old rows untouched
    # Each new row now has the old rows' average norm (4.0), in its own direction.
    assert torch.allclose(weight[2:].norm(dim=1), torch.tensor([4.0, 4.0]))
    assert torch.allclose(weight[2], torch.tensor([0.0, 4.0, 0.0, 0.0]))
    assert torch.allclose(weight[3], torch.tensor([2.4, 0.0, 3.2, 0.0]))
    assert torch.equal(model.head.bias.detach(), bias)
    assert norms == {"new_a": [0.5, 4.0], "new_b": [0.5, 4.0]}
    # Nothing new, or nothing old to align with: the head is left as it is.
    assert align_new_rows(model, labels, []) == {}
    assert align_new_rows(model, labels, labels) == {}
    assert torch.equal(model.head.weight.detach(), weight)


@pytest.mark.slow
def test_early_stopping_says_so_instead_of_ending_part_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Issue 18: the bar promised 20 epochs and ended at epoch 3 without a word. A learning
    # rate too small to change any prediction makes validation F1 flat from epoch 1 on.
    texts = {
        "yes": ["yes", "yep sure", "absolutely", "of course", "yes please", "sure thing"],
        "no": ["no", "nope", "no thanks", "absolutely not", "never", "not at all"],
    }
    examples = [
        Example(t, label, "mem", i) for label, ts in texts.items() for i, t in enumerate(ts)
    ]
    train, validation = examples[::2], examples[1::2]
    args = TrainingArguments(
        epochs=6,
        batch_size=4,
        seed=3,
        learning_rate=1e-12,
        head_learning_rate_multiplier=1.0,
        early_stopping_patience=1,
    )
    result = fine_tune(train, validation, ["no", "yes"], args, progress=True)
    err = capsys.readouterr().err
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1
    assert "at most 6 epochs" in err and "6 epochs)" not in err.replace("at most 6 epochs", "")
    assert (
        "stopped early at epoch 2 of at most 6 (no validation gain for 1 epoch); keeping "
        "epoch 1, the best on validation" in err
    )


def test_early_stop_note_counts_patience_in_epochs() -> None:
    from training.trainer import EpochLog, FineTuneResult

    result = FineTuneResult(model=None, tokenizer=None, labels=("a", "b"))  # type: ignore[arg-type]
    result.history = [EpochLog(e, 0.1, 0.5, 0.5, 1.0) for e in (1, 2, 3)]
    result.best_epoch = 1
    assert early_stop_note(result, 20, 2) == (
        "stopped early at epoch 3 of at most 20 (no validation gain for 2 epochs); keeping "
        "epoch 1, the best on validation"
    )

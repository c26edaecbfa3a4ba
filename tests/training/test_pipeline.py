from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.nlu.classifier import TransformerClassifier
from training.arguments import TrainingArguments
from training.data import DataValidationError
from training.pipeline import TrainingRun, fingerprint, train_task
from training.registry import FileModelRegistry

pytestmark = pytest.mark.slow


def test_run_writes_a_complete_registered_version(trained_intent: TrainingRun) -> None:
    path = trained_intent.version.path
    assert path.name == "v1" and trained_intent.version.live
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "classifier.json",
        "classifier_head.safetensors",
        "label_map.json",
        "training_args.json",
        "data.json",
        "metrics.json",
        "report.txt",
        "confusion_matrix.png",
    ):
        assert (path / name).is_file(), name
    assert (path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {
        "greeting",
        "order_status",
        "password_reset",
        "refund_status",
    }
    for key in ("accuracy", "macro_f1", "ece", "confusion_matrix"):
        assert key in metrics["test"]
    assert metrics["calibration"]["temperature"] > 0
    args = json.loads((path / "training_args.json").read_text())
    assert args["epochs"] == 4 and args["seed"] == 7
    data = json.loads((path / "data.json").read_text())
    assert data["sizes"]["train"] + data["sizes"]["validation"] + data["sizes"]["test"] == 40
    assert len(data["fingerprint"]) == 64
    assert "intent model" in trained_intent.report


def test_encoder_directory_loads_with_from_pretrained(trained_intent: TrainingRun) -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = trained_intent.version.path
    config = AutoConfig.from_pretrained(path)
    assert sorted(config.label2id) == [
        "greeting",
        "order_status",
        "password_reset",
        "refund_status",
    ]
    AutoModel.from_pretrained(path)
    assert AutoTokenizer.from_pretrained(path)("hello")["input_ids"]


def test_fine_tuned_model_learned_the_intents(trained_intent: TrainingRun) -> None:
    classifier = TransformerClassifier(trained_intent.version.path)
    predictions = classifier.predict(
        ["hello!", "where is my order", "i forgot my password", "where is my refund"]
    )
    assert [p.label for p in predictions] == [
        "greeting",
        "order_status",
        "password_reset",
        "refund_status",
    ]
    assert all(0 < p.confidence <= 1 for p in predictions)


def test_second_run_is_a_new_version_that_is_not_live(
    trained_intent: TrainingRun, tmp_path: Path, tiny_csv: Path
) -> None:
    out = tmp_path / "models"
    args = TrainingArguments(epochs=1, batch_size=16)
    first = train_task("intent", [tiny_csv], out, args, progress=False)
    second = train_task("intent", [tiny_csv], out, args, progress=False)
    assert (first.version.version, second.version.version) == ("v1", "v2")
    registry = FileModelRegistry(out)
    assert registry.live("intent") == "v1"
    # Same data, same seed: same fingerprint and the same held-out split.
    a = json.loads((first.version.path / "data.json").read_text())
    b = json.loads((second.version.path / "data.json").read_text())
    assert a["fingerprint"] == b["fingerprint"] and a["sizes"] == b["sizes"]


def test_bad_data_trains_nothing_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,intent\nwhere is my order,order_status\n,order_status\n")
    with pytest.raises(DataValidationError) as info:
        train_task(
            "intent", [bad], tmp_path / "models", TrainingArguments(epochs=1), progress=False
        )
    assert "bad.csv line 3" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_separate_test_set_is_used_and_overlap_dropped(tmp_path: Path, tiny_csv: Path) -> None:
    test = tmp_path / "test.csv"
    test.write_text("text,intent\nwhere is my order,order_status\nhey,greeting\n")
    run = train_task(
        "intent",
        [tiny_csv],
        tmp_path / "models",
        TrainingArguments(epochs=1, batch_size=16),
        test=[test],
        progress=False,
    )
    assert run.metrics["test"]["n"] == 2
    assert run.load_report.removed_overlapping_test == 2


def test_fingerprint_ignores_order() -> None:
    from training.data import Example

    a = [Example("x", "l1", "f", 1), Example("y", "l2", "f", 2)]
    assert fingerprint(a) == fingerprint(list(reversed(a)))
    assert fingerprint(a) != fingerprint(a[:1])


def test_joint_training_registers_both_tasks_on_one_encoder(joint_models: Path) -> None:
    """`train intent+sentiment`: two ordinary versions, live, with identical encoders (what
    lets the bot run them in one pass), each its own head and calibration, tested on the
    same held-out texts, both having learned their task."""
    import torch
    from safetensors.torch import load_file

    from bot.nlu.artifacts import read_live_versions

    assert read_live_versions(joint_models) == {"intent": "v1", "sentiment": "v1"}
    intent, sentiment = joint_models / "intent" / "v1", joint_models / "sentiment" / "v1"
    a, b = load_file(intent / "model.safetensors"), load_file(sentiment / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert TransformerClassifier(intent).labels != TransformerClassifier(sentiment).labels
    assert json.loads((sentiment / "data.json").read_text())["trained_with"] == "intent/v1"

    def test_texts(version: Path) -> set[str]:
        lines = (version / "test_set.jsonl").read_text().splitlines()
        return {json.loads(line)["text"] for line in lines}

    assert test_texts(intent) == test_texts(sentiment) and test_texts(intent)
    for version in (intent, sentiment):
        metrics = json.loads((version / "metrics.json").read_text())
        assert metrics["accuracy"] >= 0.8, version
        assert metrics["training"]["epochs_run"] >= 1
    assert json.loads((intent / "metrics.json").read_text())["out_of_scope"] is not None
    assert json.loads((sentiment / "metrics.json").read_text())["out_of_scope"] is None

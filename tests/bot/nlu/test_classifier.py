from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.errors import ModelNotFoundError
from bot.nlu.classifier import (
    ClassifierMeta,
    TransformerClassifier,
    is_model_dir,
    read_meta,
    resolve_backbone,
)
from training.pipeline import TrainingRun


def test_bundled_backbone_resolves_to_a_local_directory() -> None:
    path = Path(resolve_backbone("bundled"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_backbone("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"


def test_meta_round_trip() -> None:
    meta = ClassifierMeta("intent", ("a", "b"), 64, 0.7, 0.4, backbone="bundled")
    assert ClassifierMeta.from_dict(meta.to_dict()) == meta


def test_not_a_model_directory_is_explained(tmp_path: Path) -> None:
    assert not is_model_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="classifier.json is missing"):
        read_meta(tmp_path)


@pytest.mark.slow
def test_predictions_are_calibrated_and_can_abstain(trained_intent: TrainingRun) -> None:
    classifier = TransformerClassifier(trained_intent.version.path)
    probs = classifier.predict_proba(["hello", "where is my refund"])
    assert probs.shape == (2, 4)
    assert abs(float(probs.sum(dim=1)[0]) - 1.0) < 1e-5
    prediction = classifier.predict(["hello"], top_k=2)[0]
    assert len(prediction.top) == 2 and prediction.top[0][0] == prediction.label
    assert prediction.abstained == (prediction.confidence < classifier.meta.abstain_threshold)
    assert classifier.logits([]).shape == (0, 4)

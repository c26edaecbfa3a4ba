"""The first start (`make run` on a fresh machine): `serve` trains what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bot.app.serve import prepare
from bot.nlu.artifacts import read_live_versions
from bot.settings import load_settings

pytestmark = pytest.mark.slow


def test_the_first_start_trains_intent_and_sentiment_together(
    tmp_path: Path, tiny_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both missing: one joint run (one encoder, so the bot serves both in one pass), both
    live, reports printed; the answer index is left alone when its building is off."""
    models = tmp_path / "models"
    settings = load_settings(
        None,
        store={"url": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'supportbot.db'}"},
        models={"dir": models, "train_if_missing": True, "train_data": [tiny_csv]},
        retrieval={"index_dir": models / "answers", "build_if_missing": False},
    )

    prepare(settings)

    out = capsys.readouterr().out
    assert "no live intent or sentiment model" in out and "(first run only)" in out
    assert "intent model on the" in out and "sentiment model on the" in out
    assert read_live_versions(models) == {"intent": "v1", "sentiment": "v1"}
    a = load_file(models / "intent" / "v1" / "model.safetensors")
    b = load_file(models / "sentiment" / "v1" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    data = json.loads((models / "sentiment" / "v1" / "data.json").read_text())
    assert data["trained_with"] == "intent/v1"
    assert (tmp_path / "var").is_dir()  # the SQLite file's folder is made
    assert not (models / "answers").exists()

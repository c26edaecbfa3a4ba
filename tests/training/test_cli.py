"""The CLI as a user runs it: the installed `supportbot` console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.pipeline import TrainingRun

SUPPORTBOT = Path(sys.executable).with_name("supportbot")


def supportbot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(SUPPORTBOT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.mark.slow
def test_train_prints_report_and_the_new_directory_last(tmp_path: Path, tiny_csv: Path) -> None:
    out = tmp_path / "models"
    result = supportbot(
        "train",
        "intent",
        "--data",
        str(tiny_csv),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert Path(last) == out / "intent" / "v1"
    assert (Path(last) / "metrics.json").is_file()
    assert "macro F1" in result.stdout and "precision" in result.stdout
    args = json.loads((Path(last) / "training_args.json").read_text())
    assert args["epochs"] == 1

    listing = supportbot("models", "--out", str(out), "list", "--json")
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)["tasks"]
    assert tasks["intent"]["live"] == "v1"
    assert [v["version"] for v in tasks["intent"]["versions"]] == ["v1"]
    # The directory may also follow the action, where users tend to type it.
    after = supportbot("models", "list", "--json", "--out", str(out))
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(listing.stdout)


@pytest.mark.slow
def test_train_sentiment_from_the_same_file(tmp_path: Path, tiny_csv: Path) -> None:
    result = supportbot(
        "train",
        "sentiment",
        "--data",
        str(tiny_csv),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "m"),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((Path(result.stdout.splitlines()[-1]) / "classifier.json").read_text())
    assert meta["labels"] == ["negative", "neutral", "positive"]


def test_bad_data_exits_2_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "logs.csv"
    bad.write_text("text,intent\nwhere is my order,order_status\nrefund please,\n")
    result = supportbot("train", "intent", "--data", str(bad), "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert 'logs.csv line 3: field "intent": is missing or empty' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_unknown_column_flag_is_explained(tmp_path: Path, tiny_csv: Path) -> None:
    result = supportbot(
        "train",
        "intent",
        "--data",
        str(tiny_csv),
        "--label-column",
        "category",
        "--out",
        str(tmp_path / "m"),
    )
    assert result.returncode == 2
    assert 'no column "category"' in result.stderr and "--label-column" in result.stderr


def test_evaluate_json_and_text(trained_intent: TrainingRun, tiny_csv: Path) -> None:
    model = str(trained_intent.version.path)
    result = supportbot("evaluate", model, "--data", str(tiny_csv), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert {"accuracy", "macro_f1", "per_class"} <= set(metrics)
    assert metrics["n"] == 40 and metrics["accuracy"] > 0.8
    assert metrics["per_class"]["greeting"]["support"] == 10

    text = supportbot("evaluate", model, "--data", str(tiny_csv))
    assert text.returncode == 0 and "accuracy" in text.stdout and "refund_status" in text.stdout


def test_evaluate_by_task_name_and_custom_columns(
    trained_intent: TrainingRun, tmp_path: Path
) -> None:
    data = tmp_path / "custom.csv"
    data.write_text("utterance_text,gold\nhello there,greeting\nwhere is my refund,refund_status\n")
    models_dir = str(trained_intent.version.path.parents[1])
    result = supportbot(
        "evaluate",
        "intent",
        "--out",
        models_dir,
        "--data",
        str(data),
        "--text-column",
        "utterance_text",
        "--label-column",
        "gold",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 2


def test_models_promote_and_rollback(tmp_path: Path) -> None:
    out = tmp_path / "models"
    for version in ("v1", "v2"):
        (out / "intent" / version).mkdir(parents=True)
    assert supportbot("models", "--out", str(out), "promote", "intent", "v1").returncode == 0
    assert supportbot("models", "--out", str(out), "promote", "intent", "v2").returncode == 0
    rolled = supportbot("models", "--out", str(out), "rollback", "intent")
    assert rolled.returncode == 0 and "v1 is live again" in rolled.stdout
    listing = json.loads(supportbot("models", "--out", str(out), "list", "--json").stdout)
    assert listing["tasks"]["intent"]["live"] == "v1"
    missing = supportbot("models", "--out", str(out), "promote", "intent", "v9")
    assert missing.returncode == 2 and "no version 'v9'" in missing.stderr

"""The CLI as a user runs it: the installed `supportbot` console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_refused
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
        "--models",
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

    listing = supportbot("models", "--models", str(out), "list", "--json")
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)["tasks"]
    assert tasks["intent"]["live"] == "v1"
    assert [v["version"] for v in tasks["intent"]["versions"]] == ["v1"]
    assert json.loads(listing.stdout)["live_trained_together"] is False
    # The directory may also follow the action, where users tend to type it.
    after = supportbot("models", "list", "--json", "--models", str(out))
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
    out = tmp_path / "m"
    result = supportbot("train", "intent", "--data", str(bad), "--out", str(out))
    assert_refused(result, 'logs.csv line 3: field "intent": is missing or empty', wrote=out)


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


# -- limits and names from the command line ---------------------------------------------


def run_measured(*args: str, cwd: Path) -> tuple[int, str, int]:
    """Run `supportbot ARGS`; (exit status, stderr, peak resident memory in KiB) of that
    process alone (os.wait4: getrusage(RUSAGE_CHILDREN) would mix in earlier children)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    err = cwd / "stderr.txt"
    with err.open("w") as handle:
        proc = subprocess.Popen(
            [str(SUPPORTBOT), *args], stdout=subprocess.DEVNULL, stderr=handle, env=env, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return proc.returncode, err.read_text(), usage.ru_maxrss


@pytest.mark.slow
def test_a_50_mb_line_is_refused_without_reading_it_into_memory(tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "where is my order", "intent": "order_status"}\n')
    big = tmp_path / "big.jsonl"
    with big.open("w") as handle:  # one valid JSON object on one 50 MB line
        handle.write(
            '{"text": "' + "where is my order " * 2_800_000 + '", "intent": "order_status"}\n'
        )
    assert big.stat().st_size > 50_000_000

    # The same command failing on a one-line file is the baseline (torch and the CLI loaded).
    base_status, _, base_peak = run_measured(
        "train", "intent", "--data", "small.jsonl", cwd=tmp_path
    )
    status, stderr, peak = run_measured("train", "intent", "--data", "big.jsonl", cwd=tmp_path)

    assert base_status == status == 2
    assert "Traceback" not in stderr
    assert "big.jsonl line 1: is longer than 16 MB" in stderr and "--max-line-mb" in stderr
    grown_mb = (peak - base_peak) / 1024
    assert grown_mb < 60, f"reading a refused 50 MB line took {grown_mb:.0f} MB more"
    assert not (tmp_path / "models").exists()


def test_train_over_the_text_limit_prints_file_line_field_and_fix(
    tmp_path: Path, tiny_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.app.cli import main

    status = main(
        [
            "train",
            "intent",
            "--data",
            str(tiny_csv),
            "--max-text-chars",
            "40",
            "--out",
            str(tmp_path),
        ]
    )

    err = capsys.readouterr().err
    assert status == 2 and not (tmp_path / "intent").exists()
    assert f'{tiny_csv} line 8: field "text": is 49 characters long' in err
    assert "split or shorten it" in err
    with pytest.raises(SystemExit):
        main(["train", "intent", "--data", str(tiny_csv), "--max-text-chars", "-1"])


def test_models_show_stays_in_the_models_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.app.cli import main

    (tmp_path / "models" / "intent" / "v1").mkdir(parents=True)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "report.txt").write_text("SECRET")

    status = main(["models", "--models", str(tmp_path / "models"), "show", "../v1"])

    out, err = capsys.readouterr()
    assert status == 2 and "SECRET" not in out
    assert err.startswith("supportbot models: error: no model '../v1'")


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "show", "a" * 5000],
        ["models", "show", "intent/v" + "1" * 5000],
        ["models", "show", "intent/\x00"],
        ["models", "promote", "intent", "v" + "1" * 5000],
        ["models", "promote", "intent", "../../v1"],
        ["models", "promote", "intent", "/etc"],
        ["models", "rollback", "intent"],
        ["evaluate", "a" * 5000, "--data", "x.csv"],
        ["evaluate", "/etc/passwd", "--data", "x.csv"],
        ["evaluate", "no/such/dir", "--data", "x.csv"],
        ["evaluate", "intent/v1\x00", "--data", "x.csv"],
    ],
)
def test_malformed_models_and_versions_are_one_line_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    from bot.app.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "intent" / "v1").mkdir(parents=True)

    status = main(argv)

    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and len(err) < 500, err[:1000]
    assert "Traceback" not in err


@pytest.mark.parametrize("out", ["m" * 5000, "m" * 300, "models\x00", ""])
def test_a_models_directory_no_file_system_can_hold_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    from bot.app.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in (
        ["models", "--models", out, "list"],
        ["train", "intent", "--data", "x", "--models", out],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage
        assert "argument --models" in last and "cannot be a path" in last and len(last) < 300


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"classifier.json": "{not json"}, "classifier.json cannot be read"),
        ({"classifier.json": '{"task": "intent"}'}, "classifier.json cannot be read"),
        (
            {"classifier.json": json.dumps({"task": "intent", "labels": ["a"], "max_length": 8})},
            "missing",
        ),
    ],
)
def test_evaluate_a_broken_model_directory_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], says: str
) -> None:
    from bot.app.cli import main

    model = tmp_path / "v1"
    model.mkdir()
    for name, content in files.items():
        (model / name).write_text(content)

    status = main(["evaluate", str(model), "--data", str(tmp_path / "x.csv")])

    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "is not a supportbot model directory" in err and says in err


# -- issue 18: the operator commands read the same settings as `serve` --------------------


def _registry_with_live_v1(root: Path) -> None:
    (root / "intent" / "v1").mkdir(parents=True)
    promoted = supportbot("models", "--models", str(root), "promote", "intent", "v1")
    assert promoted.returncode == 0, promoted.stderr


def test_models_list_from_another_directory_reads_config_and_environment(
    tmp_path: Path,
) -> None:
    served = tmp_path / "srv" / "models"
    _registry_with_live_v1(served)
    config = tmp_path / "srv" / "supportbot.yml"
    config.write_text(f"models:\n  dir: {served}\n")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()

    by_config = supportbot("models", "list", "--config", str(config), cwd=elsewhere)
    assert by_config.returncode == 0, by_config.stderr
    assert f"models in {served} (models.dir in {config})" in by_config.stdout
    assert "* v1" in by_config.stdout

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SUPPORTBOT_MODELS__DIR": str(served)}
    by_env = subprocess.run(
        [str(SUPPORTBOT), "models", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=600,
    )
    assert by_env.returncode == 0, by_env.stderr
    listing = json.loads(by_env.stdout)
    assert listing["models_dir"] == str(served) and listing["tasks"]["intent"]["live"] == "v1"

    # --models beats both, as an explicit flag beats settings for `serve`.
    empty = tmp_path / "empty"
    empty.mkdir()
    flag = supportbot("models", "--config", str(config), "list", "--models", str(empty))
    assert flag.returncode == 0 and f"no models in {empty} (--models)" in flag.stdout


def test_models_list_where_there_is_no_models_directory_fails_and_says_where(
    tmp_path: Path,
) -> None:
    # Before: "No models" and exit 0 while the bot served another directory.
    result = supportbot("models", "list", cwd=tmp_path)
    assert_refused(result, f"models directory {tmp_path / 'models'} (the default", "--config")
    for action in (["show", "intent"], ["promote", "intent", "v1"], ["rollback", "intent"]):
        assert_refused(supportbot("models", *action, cwd=tmp_path), "does not exist")


def test_out_still_works_but_says_it_is_deprecated(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _registry_with_live_v1(models)
    old = supportbot("models", "list", "--out", str(models), cwd=tmp_path / "models")
    assert old.returncode == 0 and "* v1" in old.stdout
    assert "--out is deprecated; use --models" in old.stderr
    help_text = supportbot("models", "list", "--help").stdout
    assert "--models DIR" in help_text and "--out" not in help_text


def test_promote_with_config_changes_the_served_directory_only(tmp_path: Path) -> None:
    served = tmp_path / "served"
    for version in ("v1", "v2"):
        (served / "intent" / version).mkdir(parents=True)
    local = tmp_path / "work" / "models"
    _registry_with_live_v1(local)
    config = tmp_path / "supportbot.yml"
    config.write_text(f"models:\n  dir: {served}\n")

    result = supportbot(
        "models", "promote", "intent", "v2", "--config", str(config), cwd=tmp_path / "work"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((served / "registry.json").read_text())["tasks"]["intent"]["live"] == "v2"
    assert json.loads((local / "registry.json").read_text())["tasks"]["intent"]["live"] == "v1"


# -- --on-conflict --------------------------------------------------------------------------


def _conflicting_csv(path: Path, tiny_csv: Path) -> Path:
    rows = tiny_csv.read_text().splitlines()
    # One text twice as greeting and once as order_status: majority keeps greeting.
    extra = ["hello there,greeting,positive", "hello there,order_status,neutral"]
    path.write_text("\n".join([*rows, *extra]) + "\n")
    return path


def test_train_refuses_conflicting_labels_and_names_the_flag(
    tmp_path: Path, tiny_csv: Path
) -> None:
    data = _conflicting_csv(tmp_path / "noisy.csv", tiny_csv)
    out = tmp_path / "m"
    result = supportbot("train", "intent", "--data", str(data), "--models", str(out))
    assert_refused(result, "has conflicting labels", "--on-conflict majority", wrote=out)
    assert "nothing was trained" in result.stderr


def test_evaluate_with_conflicting_labels(trained_intent: TrainingRun, tmp_path: Path) -> None:
    data = tmp_path / "eval.csv"
    data.write_text(
        "text,intent\nhello there,greeting\nhello there,greeting\nhello there,order_status\n"
        "where is my refund,refund_status\nhi,greeting\nhi,order_status\n"
    )
    model = str(trained_intent.version.path)
    refused = supportbot("evaluate", model, "--data", str(data))
    assert_refused(refused, "nothing was evaluated", "--on-conflict")
    assert "nothing was trained" not in refused.stderr

    majority = supportbot("evaluate", model, "--data", str(data), "--on-conflict", "majority")
    assert majority.returncode == 0, majority.stderr
    # "hello there" is kept as greeting; "hi" is a tie and is dropped.
    assert "kept 1 text(s) with conflicting labels" in majority.stdout
    assert "dropped 1 text(s) with conflicting labels" in majority.stdout
    assert "examples            2" in majority.stdout

    dropped = supportbot("evaluate", model, "--data", str(data), "--on-conflict", "drop", "--json")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)["n"] == 1


def test_evaluate_confusion_png_title_names_version_n_and_accuracy(
    trained_intent: TrainingRun, tiny_csv: Path, tmp_path: Path
) -> None:
    png = tmp_path / "confusion.png"
    result = supportbot(
        "evaluate",
        "intent",
        "--models",
        str(trained_intent.version.path.parents[1]),
        "--data",
        str(tiny_csv),
        "--confusion-png",
        str(png),
    )
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_train_intent_and_sentiment_together_prints_both_directories(
    tmp_path: Path, tiny_csv: Path
) -> None:
    out = tmp_path / "models"
    result = supportbot(
        "train",
        "intent+sentiment",
        "--data",
        str(tiny_csv),
        "--epochs",
        "1",
        "--models",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [Path(line) for line in lines[-2:]] == [out / "intent" / "v1", out / "sentiment" / "v1"]
    assert "intent v1 and sentiment v1 share one encoder" in result.stdout
    assert "intent model on the" in result.stdout and "sentiment model on the" in result.stdout
    listing = json.loads(supportbot("models", "--models", str(out), "list", "--json").stdout)
    assert {task: info["live"] for task, info in listing["tasks"].items()} == {
        "intent": "v1",
        "sentiment": "v1",
    }
    assert listing["live_trained_together"] is True
    text = supportbot("models", "--models", str(out), "list").stdout
    assert "live intent v1 and sentiment v1 were trained together (one encoder)" in text


def test_train_together_refuses_one_label_column_for_two_tasks(
    tmp_path: Path, tiny_csv: Path
) -> None:
    out = tmp_path / "m"
    result = supportbot(
        "train",
        "intent+sentiment",
        "--data",
        str(tiny_csv),
        "--label-column",
        "intent",
        "--models",
        str(out),
    )
    assert_refused(result, "--label-column names one task's labels", wrote=out)

"""`supportbot index` as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.app.cli import build_parser, main
from bot.core.datafiles import InputLimits, limits_from_flags
from tests.helpers import assert_refused, supportbot

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The sample shop's index, built once: (directory, stdout)."""
    out = tmp_path_factory.mktemp("index") / "answers"
    result = supportbot(
        "index", "build", "--data", "data", "--faq", "data/faq.csv", "--out", str(out), cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.slow
def test_build_prints_counts_and_the_directory_last(built: tuple[Path, str]) -> None:
    out, stdout = built
    lines = stdout.strip().splitlines()
    assert Path(lines[-1]) == out
    assert (out / "index.json").is_file() and (out / "embeddings.npy").is_file()
    assert "skipped data/utterances.csv" in stdout  # labelled utterances are not answers
    counts = next(line for line in lines if line.startswith("pairs: "))
    assert " from conversations, 39 from FAQ, 0 approved" in counts
    assert any(line.startswith("duplicates dropped: ") for line in lines)
    # Curation with the sample shop's routing (order_id): counts, reasons, frequent exclusions.
    curation = next(line for line in lines if line.startswith("curation: "))
    assert " templated " in curation and " excluded" in curation
    assert any(
        line.startswith("excluded by reason ") and "first-person action" in line for line in lines
    )
    assert "most frequent excluded answers" in stdout
    lines_read = (out / "pairs.jsonl").read_text().splitlines()
    from_logs = [json.loads(line) for line in lines_read if '"conversation"' in line]
    answers = " ".join(p["answer"] for p in from_logs)  # the FAQ's example number may stay
    assert "{order_id}" in answers and not re.search(r"BC-\d{6}|I checked", answers)
    meta = json.loads((out / "index.json").read_text())
    assert meta["model"] == "bundled" and meta["dimension"] == 384


@pytest.mark.slow
def test_search_finds_the_refund_answer(built: tuple[Path, str]) -> None:
    out, _ = built
    result = supportbot("index", "search", "how long does a refund take", "--index", str(out))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[:3]
    assert first[0].startswith("1. score 0.") and "data/" in first[0]
    assert first[2].startswith("   A: ") and "refund" in first[2].lower()
    assert "5-7 business days" in first[2]


@pytest.mark.slow
def test_search_json_and_k(built: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = built
    # In-process (the same `main` the script calls): a second subprocess would only re-pay
    # the torch import.
    assert main(["index", "search", "refund", "--index", str(out), "-k", "2", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert len(answers) == 2 and answers[0]["score"] >= answers[1]["score"]
    assert {"score", "source", "question", "answer"} <= set(answers[0])


def test_bad_faq_exits_2_with_file_line_and_field(tmp_path: Path) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer\nHow long does delivery take?,\n")
    out = tmp_path / "answers"
    result = supportbot("index", "build", "--faq", str(faq), "--out", str(out))
    assert_refused(result, 'faq.csv line 2: field "answer": is empty', wrote=out)


def test_searching_a_missing_index_explains_how_to_build_one(tmp_path: Path) -> None:
    result = supportbot("index", "search", "hello", "--index", str(tmp_path / "none"))
    assert_refused(result, "supportbot index build")


def test_build_takes_the_input_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer\nHow long does delivery take?,Three to five business days.\n")
    out = tmp_path / "answers"

    status = main(
        ["index", "build", "--faq", str(faq), "--out", str(out), "--max-text-chars", "20"]
    )

    err = capsys.readouterr().err
    assert status == 2 and not out.exists()
    assert f'{faq} line 2: field "question": is 28 characters long' in err
    assert "--max-text-chars" in err
    ns = build_parser().parse_args(["index", "build", "--max-line-mb", "3", "--max-file-mb", "7"])
    assert limits_from_flags(ns) == InputLimits(10_000, 3_000_000, 7_000_000)

"""The shared readers of user data files: bounded, streaming, every problem located."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bot.core.datafiles import (
    DEFAULT_LIMITS,
    InputLimits,
    Problem,
    abbreviate,
    add_limit_flags,
    decoded_lines,
    expand_paths,
    json_records,
    label_problem,
    limits_from_flags,
    path_argument,
    read_csv,
)


def read_lines(path: Path, limits: InputLimits = DEFAULT_LIMITS) -> tuple[list[str], list[Problem]]:
    problems: list[Problem] = []
    return list(decoded_lines(path, problems, limits)), problems


def test_defaults_are_the_documented_ones() -> None:
    documented = InputLimits(
        max_text_chars=10_000, max_line_bytes=16_000_000, max_file_bytes=2_000_000_000
    )
    assert documented == DEFAULT_LIMITS


def test_lines_are_streamed_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')

    def whole_file(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole file was read at once")

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    monkeypatch.setattr(Path, "read_text", whole_file)
    problems: list[Problem] = []
    lines = decoded_lines(path, problems)

    assert next(lines) == '{"a": 1}'  # a generator: the first line comes before the rest
    assert list(lines) == ['{"a": 2}']
    assert problems == []


def test_a_line_over_the_limit_is_a_problem_and_the_next_lines_keep_their_numbers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\nafter\r\nlast")

    lines, problems = read_lines(path, InputLimits(max_line_bytes=100))

    assert lines == ["short", "", "after", "last"]  # the long line reads as blank
    [problem] = problems
    assert (problem.file, problem.line, problem.field) == (str(path), 2, None)
    assert "longer than 100 bytes" in problem.message
    assert "--max-line-mb" in problem.message and "split" in problem.message


def test_a_line_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"x" * 100 + b"\n" + b"y" * 100)

    lines, problems = read_lines(path, InputLimits(max_line_bytes=100))

    assert lines == ["x" * 100, "y" * 100] and problems == []


def test_a_file_over_the_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("text,intent\n" + "where is my order,order_status\n" * 100)

    lines, problems = read_lines(path, InputLimits(max_file_bytes=1000))

    assert lines == []
    [problem] = problems
    assert (problem.file, problem.line) == (str(path), None)
    assert "3,112 bytes" in problem.message and "1,000 bytes" in problem.message
    assert "--max-file-mb" in problem.message and "split" in problem.message


def test_undecodable_bytes_and_bom_as_before(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbftext\ncaf\xe9\nok\n")

    lines, problems = read_lines(path)

    assert lines == ["text", "caf\ufffd", "ok"]
    [problem] = problems
    assert problem.line == 2 and "not valid UTF-8" in problem.message


def test_json_that_python_cannot_hold_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"text": "fine", "intent": "a"}\n'
        + "[" * 100_000
        + "]" * 100_000
        + "\n"
        + '{"n": '
        + "9" * 5000
        + "}\n"
    )
    problems: list[Problem] = []

    records = list(json_records(path, problems))

    assert records == [(1, {"text": "fine", "intent": "a"})]
    deep, digits = problems
    assert deep.line == 2 and "nested too deeply" in deep.message
    assert digits.line == 3 and "4,300 digits" in digits.message


def test_a_csv_field_over_the_csv_modules_limit_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "text,intent\n"
        + "hello,greeting\n"
        + '"'
        + "x" * 200_000
        + '",greeting\n'
        + "hi,greeting\n"
    )
    problems: list[Problem] = []

    table = read_csv(path, problems)

    assert table is not None
    assert [line for line, _ in table.rows] == [2, 4]
    [problem] = problems
    assert problem.line == 3 and "shorten" in problem.message


def test_csv_rows_are_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('text,intent\n"where is\nmy order",order_status\n\nrefund,refund_status\n')
    problems: list[Problem] = []

    table = read_csv(path, problems)

    assert table is not None and problems == []
    assert table.header == ["text", "intent"]
    assert table.rows == [
        (2, ["where is\nmy order", "order_status"]),
        (5, ["refund", "refund_status"]),
    ]


def test_text_limit_message() -> None:
    limits = InputLimits(max_text_chars=10)

    assert limits.text_problem("x" * 10) is None
    message = limits.text_problem("x" * 12_345)
    assert message is not None
    assert "12,345 characters" in message and "10" in message
    assert "split or shorten it" in message and "--max-text-chars" in message


@pytest.mark.parametrize(
    "label",
    [
        "order_status",
        "reverted_card_payment?",  # Banking77
        "AddToPlaylist",  # Snips
        "oos",  # CLINC150
        "contact_human_agent",  # Bitext
        "Late Flight",  # airline sentiment's negativereason
        "Can't Tell",
        "réclamation",
        "a" * 64,
        "v1.2",
    ],
)
def test_labels_of_real_data_sets_are_accepted(label: str) -> None:
    assert label_problem(label) is None


@pytest.mark.parametrize(
    ("label", "says"),
    [
        ("../../evil", '"/"'),
        ("chitchat/ask_name", '"/"'),
        ("a\\b", '"/"'),
        ("nul\x00byte", "control"),
        ("line\nbreak", "control"),
        ("right-to-left\u202eoverride", "control"),
        ("a" * 5000, "5,000 characters"),
        ("", "1-64"),
        (".hidden", '"."'),
        ("..", '"."'),
    ],
)
def test_labels_that_could_escape_a_directory_or_a_line_are_refused(label: str, says: str) -> None:
    problem = label_problem(label)

    assert problem is not None
    assert says in problem
    assert "\n" not in problem and "\x00" not in problem and len(problem) < 300


def test_abbreviate_keeps_messages_to_one_short_line() -> None:
    assert abbreviate("intent/v1") == "intent/v1"
    long = abbreviate("a" * 5000)
    assert len(long) < 100 and "5,000 characters" in long


def test_a_path_no_file_system_can_hold_is_a_problem(tmp_path: Path) -> None:
    problems: list[Problem] = []

    files = expand_paths([tmp_path / ("a" * 5000)], {".csv"}, problems, ".csv")

    assert files == []
    [problem] = problems
    assert "cannot be read" in problem.message
    assert len(str(problem)) < 300


def test_limit_flags_are_shared_and_in_megabytes() -> None:
    parser = argparse.ArgumentParser()
    add_limit_flags(parser)

    assert limits_from_flags(parser.parse_args([])) == DEFAULT_LIMITS
    given = parser.parse_args(
        ["--max-text-chars", "500", "--max-line-mb", "2", "--max-file-mb", "30"]
    )
    assert limits_from_flags(given) == InputLimits(500, 2_000_000, 30_000_000)
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-text-chars", "0"])


def test_records_keep_their_line_numbers_around_an_oversized_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    big = json.dumps({"text": "x" * 1000, "intent": "a"})
    path.write_text(f'{{"i": 1}}\n{big}\n{{"i": 3}}\n')
    problems: list[Problem] = []

    records = list(json_records(path, problems, InputLimits(max_line_bytes=200)))

    assert records == [(1, {"i": 1}), (3, {"i": 3})]
    assert [p.line for p in problems] == [2]


@pytest.mark.parametrize("value", ["", "a\x00b", "a" * 5000, "dir/" + "n" * 256, "é" * 128])
def test_path_argument_refuses_what_no_file_system_holds(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="cannot be a path"):
        path_argument(value)


def test_path_argument_takes_ordinary_paths() -> None:
    assert path_argument("models") == Path("models")
    assert path_argument("/srv/bot/" + "n" * 255) == Path("/srv/bot/" + "n" * 255)

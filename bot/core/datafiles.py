"""Reading user-supplied data files: UTF-8 lines, JSON lines, and located problems.

Shared by training-data ingestion and the answer index, so both report bad input the same way:
every problem names file, line and field and says how to fix it, and all are reported at once.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.core.errors import SupportbotError

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located precisely enough to fix it."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        if self.field:
            where += f': field "{self.field}"'
        return f"{where}: {self.message}"


class DataProblemsError(SupportbotError):
    """Input data has problems; nothing was built from it.

    Attributes:
        problems: every problem found, in file order.
    """

    MAX_SHOWN = 40
    #: completes "N problems in ...", e.g. "the training data; nothing was trained".
    WHAT = "the data; nothing was done"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        shown = [str(p) for p in self.problems[: self.MAX_SHOWN]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problems")
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{len(self.problems)} {noun} in {self.WHAT}:\n  " + "\n  ".join(shown))


def normalize(text: str) -> str:
    """The key under which two texts count as the same (case and spacing ignored)."""
    return _WHITESPACE.sub(" ", text).strip().casefold()


def decoded_lines(path: Path, problems: list[Problem]) -> list[str]:
    """Decode a file line by line as UTF-8, reporting every undecodable line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), None, None, f"cannot be read ({exc.strerror})"))
        return []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad = chunk[exc.start : exc.start + 4]
            problems.append(
                Problem(
                    str(path),
                    number,
                    None,
                    f"bytes {bad!r} at column {exc.start + 1} are not valid UTF-8; "
                    "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
                )
            )
            lines.append(chunk.decode("utf-8", errors="replace"))
    return [line.rstrip("\r") for line in lines]


def json_records(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; bad lines are problems."""
    for number, line in enumerate(decoded_lines(path, problems), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    str(path),
                    number,
                    None,
                    f"is not valid JSON ({exc.msg} at column {exc.colno}); write one JSON "
                    "object per line",
                )
            )
            continue
        if not isinstance(record, dict):
            problems.append(
                Problem(str(path), number, None, "is not a JSON object; write one object per line")
            )
            continue
        yield number, record


@dataclass(frozen=True, slots=True)
class CsvTable:
    """A CSV/TSV file's header and its well-formed, non-blank rows.

    Attributes:
        rows: (line, cells) pairs; `line` is where the row starts, also when a quoted field
            spans several lines.
    """

    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)


def read_csv(path: Path, problems: list[Problem]) -> CsvTable | None:
    """Read a CSV (or, by its suffix, TSV) file; None when it holds nothing at all.

    Undecodable lines and rows whose field count differs from the header's are problems.
    """
    lines = decoded_lines(path, problems)
    if not any(line.strip() for line in lines):
        return None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    table = CsvTable(header=[h.strip() for h in next(reader)])
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(table.header):
            problems.append(
                Problem(
                    str(path),
                    line,
                    None,
                    f"has {len(row)} fields but the header has {len(table.header)}; quote "
                    'texts that contain the delimiter ("...")',
                )
            )
            continue
        table.rows.append((line, row))
    return table


def expand_paths(
    paths: Sequence[Path], suffixes: Collection[str], problems: list[Problem], use: str
) -> list[tuple[Path, bool]]:
    """The files to read: each path as given, directories expanded to their matching files.

    Args:
        suffixes: lower-case extensions (".csv", ...) that can be read.
        use: what to use instead of an unsupported file, for the message.

    Returns:
        (file, explicit) pairs, each file once: `explicit` is False for a directory member,
        which the reader may skip when it does not fit (an FAQ among training data, say).
    """
    files: list[tuple[Path, bool]] = []
    seen: set[Path] = set()
    wanted = ", ".join(sorted(suffixes))

    def add(path: Path, explicit: bool) -> None:
        # The same file named twice (e.g. `--data data/ --faq data/faq.csv`) is read once.
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append((path, explicit))

    for path in paths:
        if path.is_dir():
            members = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
            )
            if not members:
                problems.append(Problem(str(path), None, None, f"holds no {wanted} files"))
            for member in members:
                add(member, False)
        elif path.is_file():
            if path.suffix.lower() not in suffixes:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        None,
                        f"has an unsupported extension {path.suffix!r}; use {use}",
                    )
                )
            else:
                add(path, True)
        else:
            problems.append(Problem(str(path), None, None, "does not exist; check the path"))
    return files

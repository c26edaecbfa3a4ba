"""Reading user-supplied data files: UTF-8 lines, JSON lines, and located problems.

Shared by training-data ingestion and the answer index, so both report bad input the same way:
every problem names file, line and field and says how to fix it, and all are reported at once.

Files are read line by line within `InputLimits`: a file over the size limit is not opened
further, a line over the line limit is skipped in chunks without being decoded or parsed,
and a text over the text limit is a problem, so one huge record costs megabytes, not the
gigabytes its parsed and tokenized copies would take.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bot.core.errors import SupportbotError

_WHITESPACE = re.compile(r"\s+")
MB = 1_000_000
#: What Linux file systems take: a whole path (PATH_MAX) and one name in it (NAME_MAX).
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
#: A too-long line is skipped in pieces of this size, so skipping it needs no more memory.
_SKIP_CHUNK = 1 << 20
#: Labels name files and report keys: at most this long, never a path or a control character.
MAX_LABEL_CHARS = 64
_PATH_SEPARATORS = ("/", "\\")
#: Unicode categories that have no place in a name: controls (NUL, newline, ...), format
#: characters (right-to-left override, zero-width), surrogates, private use, unassigned, and
#: the line and paragraph separators.
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


@dataclass(frozen=True, slots=True)
class InputLimits:
    """How much of a data file is read; beyond it, a located problem instead of the data.

    Attributes:
        max_text_chars: the longest text (a message, an FAQ question or answer) accepted.
        max_line_bytes: the longest line read; a conversation's whole JSON is one line.
        max_file_bytes: the largest file read.
    """

    max_text_chars: int = 10_000
    max_line_bytes: int = 16 * MB
    max_file_bytes: int = 2_000 * MB

    def text_problem(self, text: str) -> str | None:
        """What is wrong with `text`'s length, or None when it is within the limit."""
        if len(text) <= self.max_text_chars:
            return None
        return (
            f"is {len(text):,} characters long; the longest text accepted is "
            f"{self.max_text_chars:,} (--max-text-chars): split or shorten it"
        )


DEFAULT_LIMITS = InputLimits()


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return number


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--max-text-chars`, `--max-line-mb` and `--max-file-mb` to a command that reads
    data files; `limits_from_flags` turns them into `InputLimits`."""
    parser.add_argument(
        "--max-text-chars",
        type=_positive,
        metavar="N",
        default=DEFAULT_LIMITS.max_text_chars,
        help="longest text accepted (default: %(default)s characters)",
    )
    parser.add_argument(
        "--max-line-mb",
        type=_positive,
        metavar="N",
        default=DEFAULT_LIMITS.max_line_bytes // MB,
        help="longest line read, e.g. one conversation in JSONL (default: %(default)s MB)",
    )
    parser.add_argument(
        "--max-file-mb",
        type=_positive,
        metavar="N",
        default=DEFAULT_LIMITS.max_file_bytes // MB,
        help="largest file read (default: %(default)s MB)",
    )


def path_argument(value: str) -> Path:
    """An argparse type for a file or directory to write: refused at once when no file system
    could hold it (empty, a NUL, longer than Linux's 4,096 characters or 255 bytes a name),
    not after the work."""
    names = value.encode("utf-8", "surrogateescape").split(b"/")
    if (
        not value
        or "\x00" in value
        or len(value) > MAX_PATH_CHARS
        or any(len(name) > MAX_NAME_BYTES for name in names)
    ):
        raise argparse.ArgumentTypeError(
            f"{abbreviate(value)!r} cannot be a path: give 1 to {MAX_PATH_CHARS:,} characters "
            f"without NUL, each name in it at most {MAX_NAME_BYTES} bytes"
        )
    return Path(value)


def limits_from_flags(ns: argparse.Namespace) -> InputLimits:
    """The `InputLimits` of the flags `add_limit_flags` added."""
    return InputLimits(
        max_text_chars=ns.max_text_chars,
        max_line_bytes=ns.max_line_mb * MB,
        max_file_bytes=ns.max_file_mb * MB,
    )


def abbreviate(value: str, width: int = 60) -> str:
    """`value`, cut to about `width` characters with its length said, for one-line messages."""
    if len(value) <= width:
        return value
    return f"{value[: width - 1]}… ({len(value):,} characters)"


def label_problem(label: str) -> str | None:
    """What makes `label` unusable as a label name, or None when it is fine.

    A label becomes a key in reports and may name a file, so it is 1-64 characters with no
    path separator and no control or invisible character, and does not start with a dot.
    Anything else is allowed: Banking77 has `reverted_card_payment?`, airline sentiment's
    reasons have spaces (`Late Flight`), Snips uses `AddToPlaylist`.
    """
    rule = (
        f'a label is 1-{MAX_LABEL_CHARS} characters, without "/", "\\" or control characters, '
        'not starting with "."; rename it'
    )
    shown = repr(abbreviate(label, 40))
    if not label or len(label) > MAX_LABEL_CHARS:
        return f"label {shown} is {len(label):,} characters long; {rule}"
    if any(sep in label for sep in _PATH_SEPARATORS):
        return f'label {shown} contains "/" or "\\"; {rule}'
    if any(unicodedata.category(char) in _UNPRINTABLE for char in label):
        return f"label {shown} contains a control or invisible character; {rule}"
    if label.startswith("."):
        return f'label {shown} starts with "."; {rule}'
    return None


def _size(count: int) -> str:
    return f"{count / MB:,.0f} MB" if count >= MB else f"{count:,} bytes"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located precisely enough to fix it."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        file = abbreviate(self.file, 200)
        where = file if self.line is None else f"{file} line {self.line}"
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


def _raw_lines(
    handle: BinaryIO, path: Path, problems: list[Problem], limits: InputLimits
) -> Iterator[bytes]:
    """The file's lines without their newline; a line over the limit is skipped (read in
    pieces, never held whole) and comes out empty, so later lines keep their numbers."""
    line_limit, total = limits.max_line_bytes, 0
    for number in itertools.count(1):
        chunk = handle.readline(line_limit + 1)
        if not chunk:
            return
        total += len(chunk)
        if chunk.endswith(b"\n"):
            yield chunk[:-1]
        elif len(chunk) <= line_limit:
            yield chunk  # the last line, with no newline after it
        else:
            while chunk and not chunk.endswith(b"\n"):
                chunk = handle.readline(_SKIP_CHUNK)
                total += len(chunk)
            problems.append(
                Problem(
                    str(path),
                    number,
                    None,
                    f"is longer than {_size(line_limit)} (--max-line-mb), so it was skipped "
                    "unparsed: split it into several records (one per line) or shorten its "
                    "texts",
                )
            )
            yield b""
        if total > limits.max_file_bytes:  # the file grew since it was measured
            problems.append(Problem(str(path), None, None, _too_large(total, limits)))
            return


def _too_large(size: int, limits: InputLimits) -> str:
    return (
        f"is {_size(size)}, more than the {_size(limits.max_file_bytes)} a file may have "
        "(--max-file-mb); split it into several files or raise the limit"
    )


def decoded_lines(
    path: Path, problems: list[Problem], limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[str]:
    """Decode a file line by line as UTF-8, reporting every undecodable line.

    Lines are read one at a time, within `limits` (a line over the limit is a problem and
    reads as an empty line, so the numbers of later lines stay right).
    """
    try:
        handle = path.open("rb")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        problems.append(Problem(str(path), None, None, f"cannot be read ({reason})"))
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limits.max_file_bytes:
            problems.append(Problem(str(path), None, None, _too_large(size, limits)))
            return
        for number, chunk in enumerate(_raw_lines(handle, path, problems, limits), start=1):
            if number == 1 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            try:
                line = chunk.decode("utf-8")
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
                line = chunk.decode("utf-8", errors="replace")
            yield line.rstrip("\r")


def json_records(
    path: Path, problems: list[Problem], limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; bad lines are problems."""
    for number, line in enumerate(decoded_lines(path, problems, limits), start=1):
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
        except RecursionError:  # valid JSON, but arrays nested thousands deep
            problems.append(
                Problem(
                    str(path),
                    number,
                    None,
                    "is nested too deeply to read; write one flat JSON object per line",
                )
            )
            continue
        except ValueError:  # valid JSON, but an integer longer than Python converts
            problems.append(
                Problem(
                    str(path),
                    number,
                    None,
                    "holds a number of more than 4,300 digits; write it as a string",
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


def read_csv(
    path: Path, problems: list[Problem], limits: InputLimits = DEFAULT_LIMITS
) -> CsvTable | None:
    """Read a CSV (or, by its suffix, TSV) file; None when it holds nothing at all.

    Undecodable lines, fields longer than the csv module takes and rows whose field count
    differs from the header's are problems.
    """
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(
        (line + "\n" for line in decoded_lines(path, problems, limits)), delimiter=delimiter
    )
    rows = _csv_rows(reader, path, problems)
    header = next((row for _, row in rows if any(cell.strip() for cell in row)), None)
    if header is None:
        return None
    table = CsvTable(header=[h.strip() for h in header])
    for line, row in rows:
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


def _csv_rows(reader: Any, path: Path, problems: list[Problem]) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells); a row the csv module refuses is a problem."""
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(
                Problem(
                    str(path),
                    start,
                    None,
                    f"cannot be read as CSV ({exc}); shorten the field, or close its quotes",
                )
            )
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        yield line, row


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
        try:
            if path.is_dir():
                members = sorted(
                    p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                )
                if not members:
                    problems.append(Problem(str(path), None, None, f"holds no {wanted} files"))
                for member in members:
                    add(member, False)
                continue
            is_file = path.is_file()
        except OSError as exc:  # a name too long for the file system, no permission, ...
            problems.append(
                Problem(str(path), None, None, f"cannot be read ({exc.strerror}); check the path")
            )
            continue
        if is_file:
            if path.suffix.lower() not in suffixes:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        None,
                        f"has an unsupported extension {abbreviate(path.suffix)!r}; use {use}",
                    )
                )
            else:
                add(path, True)
        else:
            problems.append(Problem(str(path), None, None, "does not exist; check the path"))
    return files

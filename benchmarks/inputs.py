"""Reading the benchmarks' input files: a CSV data set as rows with their line numbers.

A benchmark cannot run without its data, so a missing file or column ends the run with a
message saying what to pass instead (`sys.exit`: these are scripts, not library code).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path


def read_table(path: Path, columns: Sequence[str], fix: str) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: value}) for every non-blank row of a CSV file, oldest first.

    Args:
        columns: the columns the benchmark needs; the file may have more.
        fix: what to do when the file does not exist ("pass ... with --data").

    Returns:
        `line` is where the row starts: a quoted value (a multi-line answer) may span lines.
    """
    if not path.is_file():
        sys.exit(f"{path} does not exist; {fix}")
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        missing = [c for c in columns if c not in header]
        if missing:
            sys.exit(f"{path}: columns {missing} missing (header: {', '.join(header)})")
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if record:
                rows.append((line, dict(zip(header, record, strict=False))))
    return rows

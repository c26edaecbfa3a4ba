"""Reading and validating labelled support data.

Three input shapes are accepted (README, "Input formats"):

- conversations JSONL: one conversation per line with `messages`; customer messages may carry
  `intent` / `sentiment`; a conversation-level `intent` labels its first customer message;
- flat CSV / JSONL of labelled texts, the column names chosen by flags;
- Rasa NLU YAML (`nlu:` with `intent` + `examples`).

Everything is validated before any training starts. Problems are collected (not raised one at
a time) so the user fixes a file in one pass; each names file, line, field and the fix.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bot.core.datafiles import (
    DEFAULT_LIMITS,
    DataProblemsError,
    InputLimits,
    Problem,
    decoded_lines,
    expand_paths,
    json_records,
    label_problem,
    normalize,
    read_csv,
)
from bot.core.errors import SupportbotError

TASKS = ("intent", "sentiment")
ConflictPolicy = Literal["error", "majority", "drop"]
#: What to do with a text that carries two different labels (`--on-conflict`).
CONFLICT_POLICIES: tuple[ConflictPolicy, ...] = ("error", "majority", "drop")
CONVERSATION_SUFFIXES = {".jsonl", ".json", ".ndjson"}
FLAT_SUFFIXES = {".csv", ".tsv"}
RASA_SUFFIXES = {".yml", ".yaml"}
SUPPORTED_SUFFIXES = CONVERSATION_SUFFIXES | FLAT_SUFFIXES | RASA_SUFFIXES
TEXT_COLUMN_CANDIDATES = ("text", "utterance", "message", "query")
# Rasa marks entities inline as [text](entity) or [text]{"entity": ...}; the label is the intent.
_RASA_ENTITY = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text and where it came from."""

    text: str
    label: str
    source: str
    line: int


class DataValidationError(DataProblemsError):
    """The input data has problems; nothing was trained."""

    WHAT = "the training data; nothing was trained"


class EvaluationDataError(DataProblemsError):
    """The evaluation data has problems; nothing was evaluated."""

    WHAT = "the evaluation data; nothing was evaluated"


@dataclass(frozen=True, slots=True)
class Columns:
    """Which fields of a flat file hold the text and the label (None: pick by convention)."""

    text: str | None = None
    label: str | None = None


@dataclass
class LoadReport:
    """What loading did besides returning examples: files read or skipped, duplicates merged."""

    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duplicates_merged: int = 0
    removed_overlapping_test: int = 0
    #: texts with two labels kept under their most frequent one (`--on-conflict majority`).
    conflicts_majority: int = 0
    #: texts with two labels left out (`--on-conflict drop`, or a tie under `majority`).
    conflicts_dropped: int = 0

    def lines(self) -> list[str]:
        out = [f"read {len(self.files)} file(s): {', '.join(self.files)}"]
        out += [f"skipped {s}" for s in self.skipped]
        if self.duplicates_merged:
            out.append(
                f"merged {self.duplicates_merged} exact duplicate text(s) with the same label"
            )
        if self.conflicts_majority:
            out.append(
                f"kept {self.conflicts_majority} text(s) with conflicting labels under their "
                "most frequent label (--on-conflict majority)"
            )
        if self.conflicts_dropped:
            out.append(
                f"dropped {self.conflicts_dropped} text(s) with conflicting labels "
                "(--on-conflict drop, or a tie under majority)"
            )
        if self.removed_overlapping_test:
            out.append(
                f"dropped {self.removed_overlapping_test} training text(s) that also appear in "
                "the test set"
            )
        return out


def _label_field(task: str, columns: Columns, available: Iterable[str]) -> str | None:
    if columns.label:
        return columns.label
    names = list(available)
    for candidate in (task, "label", "category"):
        if candidate in names:
            return candidate
    return None


def _text_field(columns: Columns, available: Iterable[str]) -> str | None:
    if columns.text:
        return columns.text
    names = list(available)
    return next((c for c in TEXT_COLUMN_CANDIDATES if c in names), None)


class _Collector:
    """Turns raw (text, label) fields into Examples, recording problems."""

    def __init__(self, path: Path, problems: list[Problem], limits: InputLimits) -> None:
        self.path = str(path)
        self.problems = problems
        self.limits = limits
        self.examples: list[Example] = []

    def add(
        self, line: int, text: Any, label: Any, text_field: str, label_field: str, hint: str
    ) -> None:
        text_value = "" if text is None else str(text).strip()
        text_issue = (
            self.limits.text_problem(text_value)
            if text_value
            else f"is empty; every {hint} needs its text"
        )
        structured = isinstance(label, dict | list)
        label_value = "" if label is None or structured else str(label).strip()
        if structured:
            label_issue: str | None = "must be a string (the label's name), not a JSON object"
        elif not label_value:
            label_issue = "is missing or empty; label the row or remove it"
        else:
            label_issue = label_problem(label_value)
        for name, issue in ((text_field, text_issue), (label_field, label_issue)):
            if issue:
                self.problems.append(Problem(self.path, line, name, issue))
        if not text_issue and not label_issue:
            self.examples.append(Example(text_value, label_value, self.path, line))


def _read_flat_csv(
    path: Path,
    task: str,
    columns: Columns,
    problems: list[Problem],
    explicit: bool,
    limits: InputLimits,
) -> list[Example] | None:
    already = len(problems)
    table = read_csv(path, problems, limits)
    if table is None:
        if len(problems) == already:  # not unreadable or too large: really empty
            problems.append(
                Problem(str(path), None, None, "is empty; expected a header row and data")
            )
        return []
    header = table.header
    text_field = _text_field(columns, header)
    label_field = _label_field(task, columns, header)
    missing = [
        (flag, name, default)
        for flag, name, default in (
            ("--text-column", text_field, "/".join(TEXT_COLUMN_CANDIDATES)),
            ("--label-column", label_field, f"{task}/label/category"),
        )
        if name is None or name not in header
    ]
    if missing:
        if not explicit and columns == Columns():
            return None  # a directory member that does not carry this task's labels
        for flag, name, default in missing:
            wanted = f'"{name}"' if name else f"one of {default}"
            problems.append(
                Problem(
                    str(path),
                    1,
                    name,
                    f"unknown column: the header has no column {wanted} (columns: "
                    f"{', '.join(header)}); name the right one with {flag}",
                )
            )
        return []
    assert text_field is not None and label_field is not None
    ti, li = header.index(text_field), header.index(label_field)
    collector = _Collector(path, problems, limits)
    for line, row in table.rows:
        collector.add(line, row[ti], row[li], text_field, label_field, "row")
    return collector.examples


def _conversation_examples(
    path: Path,
    task: str,
    records: Iterable[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    limits: InputLimits,
) -> list[Example]:
    collector = _Collector(path, problems, limits)
    for number, record in records:
        messages = record.get("messages")
        if not isinstance(messages, list):
            problems.append(
                Problem(str(path), number, "messages", "must be a list of {role, text} objects")
            )
            continue
        first_customer = True
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict) or message.get("role") not in ("customer", "agent"):
                problems.append(
                    Problem(
                        str(path),
                        number,
                        f"{where}.role",
                        'must be "customer" or "agent"',
                    )
                )
                continue
            if message["role"] != "customer":
                continue
            label = message.get(task)
            if task == "intent" and label is None and first_customer:
                label = record.get("intent")
            first_customer = False
            if label is None:
                continue  # unlabelled customer turns are fine: not every turn is annotated
            collector.add(
                number, message.get("text"), label, f"{where}.text", f"{where}.{task}", "message"
            )
    return collector.examples


def _flat_json_examples(
    path: Path,
    task: str,
    columns: Columns,
    records: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    explicit: bool,
    limits: InputLimits,
) -> list[Example] | None:
    keys: set[str] = set()
    for _, record in records:
        keys.update(record)
    text_field = _text_field(columns, keys)
    label_field = _label_field(task, columns, keys)
    if text_field is None or label_field is None or not {text_field, label_field} <= keys:
        if not explicit and columns == Columns():
            return None
        for flag, name in (("--text-column", text_field), ("--label-column", label_field)):
            if name is None or name not in keys:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        name,
                        f"unknown column: no record has {'it' if name else 'a ' + flag[2:]} "
                        f"(fields: {', '.join(sorted(keys))}); name it with {flag}",
                    )
                )
        return []
    collector = _Collector(path, problems, limits)
    for number, record in records:
        collector.add(
            number,
            record.get(text_field),
            record.get(label_field),
            text_field,
            label_field,
            "record",
        )
    return collector.examples


_ALIAS_REFUSED = "an alias (*name) repeats another block; write the examples out instead"


class _RasaLoader(yaml.SafeLoader):
    """YAML without aliases: Rasa NLU files need none, and an alias lets a small file expand
    into gigabytes (`*a` repeating `&a` a million times)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, _ALIAS_REFUSED, mark)
        return super().compose_node(parent, index)


def _rasa_examples(
    path: Path, task: str, problems: list[Problem], explicit: bool, limits: InputLimits
) -> list[Example] | None:
    lines = list(decoded_lines(path, problems, limits))
    text = "\n".join(lines)
    try:
        document = yaml.load(text, Loader=_RasaLoader)  # a SafeLoader without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", exc)
        problems.append(
            Problem(
                str(path),
                mark.line + 1 if mark else None,
                None,
                problem
                if problem == _ALIAS_REFUSED
                else f"is not valid YAML ({problem}); check the indentation",
            )
        )
        return []
    if not isinstance(document, dict) or "nlu" not in document:
        if not explicit:
            return None
        problems.append(
            Problem(
                str(path), None, "nlu", "is missing; a Rasa NLU file has a top-level `nlu:` list"
            )
        )
        return []
    if task != "intent":
        if not explicit:
            return None
        problems.append(
            Problem(
                str(path),
                None,
                None,
                f"Rasa NLU files label intents only, not {task}; give {task} labels in a CSV "
                "or conversations JSONL",
            )
        )
        return []
    # Map each example back to its line for error messages.
    line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("- intent:"):
            line_of.setdefault(stripped, number)
        elif stripped.startswith("- "):
            line_of.setdefault(stripped[2:].strip(), number)
    collector = _Collector(path, problems, limits)
    for block in document.get("nlu") or []:
        if not isinstance(block, dict) or "intent" not in block:
            continue  # synonyms, regexes and lookups carry no intent examples
        intent = block.get("intent")
        examples = block.get("examples") or ""
        if not isinstance(examples, str):
            problems.append(
                Problem(
                    str(path),
                    line_of.get(f"- intent: {intent}"),
                    "examples",
                    "must be a block string of `- example` lines (examples: |)",
                )
            )
            continue
        for raw in examples.splitlines():
            item = raw.strip()
            if not item.startswith("-"):
                continue
            item = item[1:].strip()
            plain = _RASA_ENTITY.sub(r"\1", item)
            collector.add(line_of.get(item, 0), plain, intent, "examples", "intent", "example")
    return collector.examples


def _read_file(
    path: Path,
    task: str,
    columns: Columns,
    problems: list[Problem],
    explicit: bool,
    limits: InputLimits,
) -> list[Example] | None:
    suffix = path.suffix.lower()
    if suffix in FLAT_SUFFIXES:
        return _read_flat_csv(path, task, columns, problems, explicit, limits)
    if suffix in RASA_SUFFIXES:
        return _rasa_examples(path, task, problems, explicit, limits)
    already = len(problems)
    records = list(json_records(path, problems, limits))
    if not records and len(problems) > already:
        return []  # unreadable or too large: said already, no column to look for
    if records and any("messages" in r for _, r in records):
        return _conversation_examples(path, task, records, problems, limits)
    return _flat_json_examples(path, task, columns, records, problems, explicit, limits)


def load_examples(
    paths: Sequence[Path],
    task: str,
    columns: Columns = Columns(),
    min_examples: int = 5,
    report: LoadReport | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    on_conflict: ConflictPolicy = "error",
) -> list[Example]:
    """Load, validate and de-duplicate the labelled examples for one task.

    Args:
        paths: files or directories. In a directory, files that do not carry labels for
            `task` (e.g. an FAQ) are skipped and listed in `report.skipped`.
        task: `intent` or `sentiment`; decides which label field is read.
        columns: text/label field names for flat files.
        min_examples: every label needs at least this many distinct examples (0 disables).
        report: filled with what was read, skipped and merged.
        limits: the longest text and line and the largest file read (`InputLimits`);
            anything beyond is a problem, read no further than needed to say so.
        on_conflict: a text carrying two different labels is a problem (`error`), keeps its
            most frequent label (`majority`; a tie drops it) or is left out (`drop`). Real
            logs are noisy: a few such texts should not block a public set.

    Returns:
        Examples in file order, exact duplicates (same text, same label) merged.

    Raises:
        DataValidationError: anything wrong, all problems at once.
    """
    if task not in TASKS:
        raise SupportbotError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    report = report if report is not None else LoadReport()
    problems: list[Problem] = []
    examples: list[Example] = []
    for path, explicit in expand_paths(
        paths, SUPPORTED_SUFFIXES, problems, ".jsonl, .csv, .tsv or a Rasa .yml"
    ):
        found = _read_file(path, task, columns, problems, explicit, limits)
        if found is None:
            report.skipped.append(f"{path} (no {task} labels)")
            continue
        report.files.append(str(path))
        examples += found
    if not examples and not problems:
        problems.append(
            Problem(
                ", ".join(str(p) for p in paths),
                None,
                task,
                f"no labelled examples for {task} were found; label customer messages with "
                f'"{task}" or name the label column with --label-column',
            )
        )
    unique = _merge_duplicates(examples, problems, report, on_conflict)
    if min_examples > 0:
        counts = Counter(e.label for e in unique)
        first: dict[str, Example] = {}
        for e in unique:
            first.setdefault(e.label, e)
        for label, count in sorted(counts.items()):
            if count < min_examples:
                e = first[label]
                problems.append(
                    Problem(
                        e.source,
                        e.line,
                        task,
                        f'label "{label}" has {count} distinct example(s); every label needs at '
                        f"least {min_examples}: add examples, fix a misspelt label, or lower "
                        "--min-examples",
                    )
                )
    if problems:
        raise DataValidationError(problems)
    return unique


def _merge_duplicates(
    examples: list[Example],
    problems: list[Problem],
    report: LoadReport,
    on_conflict: ConflictPolicy = "error",
) -> list[Example]:
    if on_conflict not in CONFLICT_POLICIES:
        raise SupportbotError(
            f"unknown conflict policy {on_conflict!r}; expected one of "
            + ", ".join(CONFLICT_POLICIES)
        )
    by_key: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_key[normalize(e.text)].append(e)
    unique = []
    for group in by_key.values():
        labels = sorted({e.label for e in group})
        if len(labels) > 1:
            kept = _resolve_conflict(group, on_conflict)
            if kept is not None:
                report.conflicts_majority += 1
                unique.append(kept)
                continue
            if on_conflict != "error":
                report.conflicts_dropped += 1
                continue
            places = "; ".join(f"{e.source} line {e.line} says {e.label!r}" for e in group)
            first = group[0]
            problems.append(
                Problem(
                    first.source,
                    first.line,
                    "text",
                    f"{first.text!r} has conflicting labels ({places}); keep one label, or "
                    "pass --on-conflict majority (keep the most frequent) or --on-conflict "
                    "drop (leave it out)",
                )
            )
            continue
        unique.append(group[0])
        report.duplicates_merged += len(group) - 1
    unique.sort(key=lambda e: (e.source, e.line))
    return unique


def _resolve_conflict(group: list[Example], on_conflict: ConflictPolicy) -> Example | None:
    """The copy to keep of a text with several labels under `majority`, else None (drop or
    report): the first copy carrying the strictly most frequent label."""
    if on_conflict != "majority":
        return None
    ranked = Counter(e.label for e in group).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None  # a tie: no label is more believable than another
    return next(e for e in group if e.label == ranked[0][0])


def drop_overlap(train: list[Example], test: list[Example], report: LoadReport) -> list[Example]:
    """Remove training examples whose text also appears in the test set (no leakage)."""
    test_keys = {normalize(e.text) for e in test}
    kept = [e for e in train if normalize(e.text) not in test_keys]
    report.removed_overlapping_test += len(train) - len(kept)
    return kept


TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")


def load_texts(
    paths: Sequence[Path], columns: Columns = Columns(), limits: InputLimits = DEFAULT_LIMITS
) -> list[str]:
    """Unlabelled texts (e.g. out-of-scope queries for `supportbot evaluate --oos-data`).

    `.txt`: one text per non-blank line; CSV/TSV and JSONL: the text column (`columns.text`,
    else text/utterance/message/query); any label column is ignored. Texts repeated (case and
    spacing aside) are kept once.

    Raises:
        EvaluationDataError: a file cannot be read, has no text column, or a text is too long.
    """
    problems: list[Problem] = []
    texts: list[str] = []
    seen: set[str] = set()

    def add(path: Path, line: int, field: str | None, value: Any) -> None:
        text = "" if value is None else str(value).strip()
        if not text:
            return
        issue = limits.text_problem(text)
        if issue:
            problems.append(Problem(str(path), line, field, issue))
        elif normalize(text) not in seen:
            seen.add(normalize(text))
            texts.append(text)

    for path, _ in expand_paths(paths, TEXT_SUFFIXES, problems, "a .txt, .csv or .jsonl file"):
        suffix = path.suffix.lower()
        if suffix == ".txt":
            for number, line in enumerate(decoded_lines(path, problems, limits), start=1):
                add(path, number, None, line)
        elif suffix == ".jsonl":
            for number, record in json_records(path, problems, limits):
                name = _text_field(columns, record)
                if name is None or name not in record:
                    problems.append(
                        Problem(
                            str(path),
                            number,
                            name,
                            "has no text field "
                            f"({'/'.join(TEXT_COLUMN_CANDIDATES)}); name it with --text-column",
                        )
                    )
                    continue
                add(path, number, name, record[name])
        else:
            table = read_csv(path, problems, limits)
            if table is None:
                continue
            name = _text_field(columns, table.header)
            if name is None or name not in table.header:
                problems.append(
                    Problem(
                        str(path),
                        1,
                        name,
                        f"unknown column: the header has no text column (columns: "
                        f"{', '.join(table.header)}); name it with --text-column",
                    )
                )
                continue
            index = table.header.index(name)
            for number, row in table.rows:
                add(path, number, name, row[index])
    if not texts and not problems:
        problems.append(Problem(", ".join(map(str, paths)), None, None, "holds no texts"))
    if problems:
        raise EvaluationDataError(problems)
    return texts

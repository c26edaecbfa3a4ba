"""Reading answer sources into question -> answer pairs: resolved conversations, FAQ files
(CSV or Markdown) and approved answers become `AnswerPair`s, validated before anything is
embedded (every problem at once, each with file, line, field and the fix, in the style of
`training/data.py`) and de-duplicated by question.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from bot.core.datafiles import (
    DEFAULT_LIMITS,
    DataProblemsError,
    InputLimits,
    Problem,
    decoded_lines,
    expand_paths,
    json_records,
    normalize,
    read_csv,
)
from bot.core.entities import EntityConfig
from bot.retrieval.curation import AnswerCurator, Candidate, CurationReport

PairKind = Literal["conversation", "faq", "approved"]

SMALL_TALK_INTENTS = frozenset({"greeting", "thanks", "goodbye"})
MIN_QUESTION_WORDS = 3
CONVERSATION_SUFFIXES = {".jsonl", ".json", ".ndjson"}
CSV_SUFFIXES = {".csv", ".tsv"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
SUPPORTED_SUFFIXES = CONVERSATION_SUFFIXES | CSV_SUFFIXES | MARKDOWN_SUFFIXES

# Higher wins when two pairs share a question.
_KIND_RANK: dict[str, int] = {"faq": 2, "approved": 1, "conversation": 0}
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_QUESTION_MARK = re.compile(r"^\*\*Q:\*\*\s*(.*)$", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^\*\*A:\*\*\s*(.*)$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class AnswerPair:
    """A question and the answer that resolved it.

    Attributes:
        question: what the customer asked (or the FAQ question).
        answer: what the agent replied (or the FAQ answer).
        intent: the question's intent label, when the input had one.
        source: where it was read, `file:line`.
        kind: `conversation`, `faq` or `approved`.
        slots: the placeholders `answer` needs filled from the customer's conversation
            (`{order_id}`), set by the curation (bot/retrieval/curation.py); the answer is
            served only when the conversation has told the bot each of them.
        echoes: words the answer repeats from the question it answered (a place, a product:
            `switzerland`), set by the curation; the answer is served only to a question
            that names each of them.
    """

    question: str
    answer: str
    intent: str | None
    source: str
    kind: PairKind
    slots: tuple[str, ...] = ()
    echoes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "question": self.question,
            "answer": self.answer,
            "intent": self.intent,
            "source": self.source,
            "kind": self.kind,
        }
        if self.slots:  # absent otherwise, so older indexes keep their fingerprint
            data["slots"] = list(self.slots)
        if self.echoes:
            data["echoes"] = list(self.echoes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerPair:
        kind = str(data["kind"])
        if kind not in _KIND_RANK:
            raise ValueError(f"unknown kind {kind!r}")
        intent = data.get("intent")
        return cls(
            question=str(data["question"]),
            answer=str(data["answer"]),
            intent=None if intent is None else str(intent),
            source=str(data["source"]),
            kind=cast(PairKind, kind),
            slots=tuple(str(s) for s in data.get("slots") or ()),
            echoes=tuple(str(w) for w in data.get("echoes") or ()),
        )


class AnswerDataError(DataProblemsError):
    """The question/answer input has problems; no index was built."""

    WHAT = "the answer data; no index was built"


@dataclass
class PairReport:
    """What reading did besides returning pairs: files, skips, counts, duplicates dropped."""

    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    conversations: int = 0
    unresolved: int = 0
    without_pair: int = 0
    read: Counter[str] = field(default_factory=Counter)
    duplicates_dropped: int = 0
    curation: CurationReport = field(default_factory=CurationReport)

    def lines(self) -> list[str]:
        out = [f"read {len(self.files)} file(s): {', '.join(self.files)}"]
        out += [f"skipped {s}" for s in self.skipped]
        if self.conversations:
            out.append(
                f"conversations: {self.conversations} read, {self.unresolved} not resolved, "
                f"{self.without_pair} resolved without a substantive question and answer"
            )
        out.append(
            f"pairs: {self.read['conversation']} from conversations, {self.read['faq']} from FAQ, "
            f"{self.read['approved']} approved"
        )
        out += self.curation.lines()
        out.append(f"duplicates dropped: {self.duplicates_dropped} (same question, one kept)")
        return out


@dataclass(frozen=True, slots=True)
class _Candidate:
    pair: AnswerPair
    when: datetime | None
    order: int
    customer_texts: tuple[str, ...] = ()  # the conversation's, for the curation


def _optional_label(
    value: Any, path: Path, line: int, name: str, problems: list[Problem]
) -> tuple[bool, str | None]:
    """(valid, label): a label is absent (None) or a non-empty string."""
    if value is None:
        return True, None
    if isinstance(value, str) and value.strip():
        return True, value.strip()
    problems.append(
        Problem(
            str(path),
            line,
            name,
            f"must be a non-empty string when given, found {value!r}; fix the label or "
            "remove the field",
        )
    )
    return False, None


def _timestamp(
    value: Any, path: Path, line: int, problems: list[Problem]
) -> tuple[bool, datetime | None]:
    if value is None:
        return True, None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # Undated offsets are taken as UTC so that all timestamps compare.
            return True, when if when.tzinfo else when.replace(tzinfo=UTC)
    problems.append(
        Problem(
            str(path),
            line,
            "started_at",
            f"must be an ISO 8601 time such as 2026-01-04T10:03:00Z, found {value!r}",
        )
    )
    return False, None


def _text_fits(
    text: str, path: Path, line: int, name: str, problems: list[Problem], limits: InputLimits
) -> bool:
    """True when `text` is within the text limit; otherwise records the problem."""
    issue = limits.text_problem(text)
    if issue:
        problems.append(Problem(str(path), line, name, issue))
    return issue is None


def _conversation_pairs(
    path: Path,
    records: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    report: PairReport,
    limits: InputLimits,
) -> list[_Candidate]:
    found: list[_Candidate] = []
    for number, record in records:
        report.conversations += 1
        ok = True
        resolved = record.get("resolved", False)
        if not isinstance(resolved, bool):
            ok = False
            problems.append(
                Problem(
                    str(path),
                    number,
                    "resolved",
                    f"must be true or false, found {resolved!r}; only resolved conversations "
                    "become answers",
                )
            )
        valid, conversation_intent = _optional_label(
            record.get("intent"), path, number, "intent", problems
        )
        ok &= valid
        valid, when = _timestamp(record.get("started_at"), path, number, problems)
        ok &= valid
        messages = record.get("messages")
        if not isinstance(messages, list):
            problems.append(
                Problem(str(path), number, "messages", "must be a list of {role, text} objects")
            )
            continue
        turns: list[tuple[str, str, str | None]] = []  # role, text, intent
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict) or message.get("role") not in ("customer", "agent"):
                ok = False
                problems.append(
                    Problem(str(path), number, f"{where}.role", 'must be "customer" or "agent"')
                )
                continue
            text = message.get("text")
            if not isinstance(text, str):
                ok = False
                problems.append(
                    Problem(
                        str(path),
                        number,
                        f"{where}.text",
                        f"must be a string (the message as written), found {text!r}",
                    )
                )
                continue
            ok &= _text_fits(text, path, number, f"{where}.text", problems, limits)
            valid, intent = _optional_label(
                message.get("intent"), path, number, f"{where}.intent", problems
            )
            ok &= valid
            turns.append((message["role"], text.strip(), intent))
        if not ok:
            continue
        if not resolved:
            report.unresolved += 1
            continue
        candidate = _resolved_pair(path, number, turns, conversation_intent, problems)
        if candidate is None:
            report.without_pair += 1
            continue
        said = tuple(text for role, text, _ in turns if role == "customer")
        found.append(_Candidate(candidate, when, 0, said))
    return found


def _resolved_pair(
    path: Path,
    line: int,
    turns: list[tuple[str, str, str | None]],
    conversation_intent: str | None,
    problems: list[Problem],
) -> AnswerPair | None:
    """The first substantive customer turn and the next agent turn, or None."""
    first_customer = True
    for index, (role, text, intent) in enumerate(turns):
        if role != "customer":
            continue
        # As in training/data.py, the conversation's intent labels its first customer turn.
        effective = intent if intent is not None or not first_customer else conversation_intent
        first_customer = False
        if effective in SMALL_TALK_INTENTS or len(text.split()) < MIN_QUESTION_WORDS:
            continue
        for offset, (later_role, answer, _) in enumerate(turns[index + 1 :], start=index + 1):
            if later_role != "agent":
                continue
            if not answer:
                problems.append(
                    Problem(
                        str(path),
                        line,
                        f"messages[{offset}].text",
                        "is empty, but it is the agent answer of a resolved conversation; "
                        "fill in the reply or mark the conversation unresolved",
                    )
                )
                return None
            # A small-talk conversation label says nothing about a later real question.
            fallback = None if conversation_intent in SMALL_TALK_INTENTS else conversation_intent
            return AnswerPair(text, answer, intent or fallback, f"{path}:{line}", "conversation")
        return None  # no agent turn after it: nobody answered
    return None


def _approved_pairs(
    path: Path,
    records: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    limits: InputLimits,
) -> list[_Candidate]:
    found = []
    for number, record in records:
        question = record.get("question")
        answer = record.get("answer")
        ok = True
        for name, value in (("question", question), ("answer", answer)):
            if not isinstance(value, str) or not value.strip():
                ok = False
                problems.append(
                    Problem(
                        str(path),
                        number,
                        name,
                        f"must be a non-empty string, found {value!r}; every approved pair "
                        "needs a question and its answer",
                    )
                )
            else:
                ok &= _text_fits(value.strip(), path, number, name, problems, limits)
        valid, intent = _optional_label(record.get("intent"), path, number, "intent", problems)
        if ok and valid:
            assert isinstance(question, str) and isinstance(answer, str)
            pair = AnswerPair(
                question.strip(), answer.strip(), intent, f"{path}:{number}", "approved"
            )
            found.append(_Candidate(pair, None, 0))
    return found


def _read_jsonl(
    path: Path, problems: list[Problem], report: PairReport, explicit: bool, limits: InputLimits
) -> list[_Candidate] | None:
    already = len(problems)
    records = list(json_records(path, problems, limits))
    if any("messages" in record for _, record in records):
        return _conversation_pairs(path, records, problems, report, limits)
    if records and all({"question", "answer"} & set(record) for _, record in records):
        return _approved_pairs(path, records, problems, limits)
    if not records and len(problems) > already:
        return []  # unreadable or too large: said already
    if not explicit:
        return None  # e.g. a flat labelled-utterance file in the same directory
    if records:
        problems.append(
            Problem(
                str(path),
                records[0][0],
                None,
                "has neither `messages` (a conversation) nor `question` and `answer` (an "
                "approved pair); give conversations or question/answer records",
            )
        )
    else:
        problems.append(Problem(str(path), None, None, "holds no records"))
    return []


def _read_faq_csv(
    path: Path, problems: list[Problem], explicit: bool, limits: InputLimits
) -> list[_Candidate] | None:
    already = len(problems)
    table = read_csv(path, problems, limits)
    if table is None:
        if len(problems) > already:
            return []  # unreadable or too large: said already
        if explicit:
            problems.append(
                Problem(str(path), None, None, "is empty; expected a question,answer header")
            )
        return [] if explicit else None
    header = [h.casefold() for h in table.header]
    missing = [name for name in ("question", "answer") if name not in header]
    if missing:
        if not explicit:
            return None  # a labelled-utterance CSV in the same directory, not an FAQ
        for name in missing:
            problems.append(
                Problem(
                    str(path),
                    1,
                    name,
                    f"unknown column: the header has no column {name!r} (columns: "
                    f"{', '.join(header)}); an FAQ CSV needs question,answer columns",
                )
            )
        return []
    qi, ai = header.index("question"), header.index("answer")
    ii = header.index("intent") if "intent" in header else None
    found = []
    for line, row in table.rows:
        question, answer = row[qi].strip(), row[ai].strip()
        intent = (row[ii].strip() or None) if ii is not None else None
        fits = True
        for name, value in (("question", question), ("answer", answer)):
            if not value:
                problems.append(
                    Problem(
                        str(path),
                        line,
                        name,
                        f"is empty; every FAQ row needs its {name}",
                    )
                )
            else:
                fits &= _text_fits(value, path, line, name, problems, limits)
        if question and answer and fits:
            pair = AnswerPair(question, answer, intent, f"{path}:{line}", "faq")
            found.append(_Candidate(pair, None, 0))
    return found


def _read_faq_markdown(
    path: Path, problems: list[Problem], explicit: bool, limits: InputLimits
) -> list[_Candidate] | None:
    """`## Question` headings or `**Q:**` lines, each followed by its answer.

    A level-1 heading (a title) ends the current entry; level-3+ headings inside an answer
    belong to it. Text before the first question is an introduction and is ignored.
    """
    found: list[_Candidate] = []
    entry: dict[str, Any] | None = None  # question, line, answer lines, whether **A:** was seen
    in_fence = False

    def flush() -> None:
        nonlocal entry
        if entry is None:
            return
        question = " ".join(entry["question"]).strip()
        answer = _BLANK_RUNS.sub("\n\n", "\n".join(entry["answer"])).strip()
        if not question:
            problems.append(
                Problem(str(path), entry["line"], "question", "is empty; write the question")
            )
        elif not answer:
            problems.append(
                Problem(
                    str(path),
                    entry["line"],
                    "answer",
                    f"question {question!r} has no answer; write it in the paragraphs below "
                    "the question",
                )
            )
        elif all(
            [  # a list, not a generator: both are checked, both problems reported
                _text_fits(value, path, entry["line"], name, problems, limits)
                for name, value in (("question", question), ("answer", answer))
            ]
        ):
            pair = AnswerPair(question, answer, None, f"{path}:{entry['line']}", "faq")
            found.append(_Candidate(pair, None, 0))
        entry = None

    for number, line in enumerate(decoded_lines(path, problems, limits), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        q_mark = None if in_fence else _QUESTION_MARK.match(line.strip())
        a_mark = None if in_fence else _ANSWER_MARK.match(line.strip())
        if heading and len(heading.group(1)) <= 2:
            flush()
            if len(heading.group(1)) == 2:
                entry = {"question": [heading.group(2)], "line": number, "answer": [], "a": True}
        elif q_mark:
            flush()
            entry = {"question": [q_mark.group(1)], "line": number, "answer": [], "a": False}
        elif a_mark:
            if entry is None:
                problems.append(
                    Problem(
                        str(path),
                        number,
                        "answer",
                        "**A:** has no question before it; put a **Q:** line or a "
                        "## heading above it",
                    )
                )
                continue
            entry["a"] = True
            entry["answer"].append(a_mark.group(1))
        elif entry is not None:
            if entry["a"]:
                entry["answer"].append(line.rstrip())
            elif line.strip():
                entry["question"].append(line.strip())  # a **Q:** question over several lines
    flush()
    if not found and not any(p.file == str(path) for p in problems):
        if not explicit:
            return None
        problems.append(
            Problem(
                str(path),
                None,
                None,
                "holds no FAQ entries; write each question as a `## Question` heading (or a "
                "`**Q:**` line) followed by its answer",
            )
        )
    return found


def _deduplicate(candidates: list[_Candidate], report: PairReport) -> list[AnswerPair]:
    oldest = datetime.min.replace(tzinfo=UTC)

    def preference(c: _Candidate) -> tuple[int, bool, datetime, int, int]:
        return (
            _KIND_RANK[c.pair.kind],
            c.when is not None,
            c.when or oldest,
            len(c.pair.answer),
            -c.order,
        )

    best: dict[str, _Candidate] = {}
    for candidate in candidates:
        key = normalize(candidate.pair.question)
        current = best.get(key)
        if current is None or preference(candidate) > preference(current):
            best[key] = candidate
    report.duplicates_dropped += len(candidates) - len(best)
    return [c.pair for c in sorted(best.values(), key=lambda c: c.order)]


def build_answer_pairs(
    paths: Sequence[Path],
    report: PairReport | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    entities: EntityConfig | None = None,
) -> list[AnswerPair]:
    """Read, validate, curate and de-duplicate question/answer pairs.

    Three kinds of input are read:

    - conversations JSONL (`"kind": "conversation"`): from every conversation marked
      `"resolved": true`, the first substantive customer message paired with the next agent
      message. Small talk (turns whose intent is greeting / thanks / goodbye) and very short
      turns (fewer than `MIN_QUESTION_WORDS` words, e.g. "human pls", "BC-201853") are not
      questions worth answering again;
    - FAQ files (`"faq"`): CSV with `question,answer` (optional `intent`) columns, or Markdown
      where each `## Question` heading, or a `**Q:**` line, is followed by its answer
      paragraphs (or a `**A:**` line);
    - approved pairs (`"approved"`): JSONL records with `question` and `answer` (optional
      `intent`), e.g. agent replies exported as good answers.

    Args:
        paths: conversations JSONL, FAQ CSV/Markdown, approved-pair JSONL, or directories of
            them. In a directory, files that are none of these (e.g. a labelled-utterance CSV)
            are skipped and listed in `report.skipped`; named explicitly, they are an error.
        report: filled with the files read and skipped and the counts per kind.
        limits: the longest text and line and the largest file read (`InputLimits`).
        entities: the routing file's entities (`RoutingConfig.entities`); its slot entities
            turn answers into templates. None: built-in entities only. Every answer from a
            conversation is curated (bot/retrieval/curation.py): another customer's details
            become placeholders or keep the answer out; `report.curation` counts why.

    Returns:
        One pair per distinct question among the kept ones, in file order (duplicate rule:
        `merge_pairs`).

    Raises:
        AnswerDataError: anything wrong, all problems at once.
    """
    report = report if report is not None else PairReport()
    problems: list[Problem] = []
    candidates: list[_Candidate] = []
    for path, explicit in expand_paths(
        paths,
        SUPPORTED_SUFFIXES,
        problems,
        "conversations .jsonl, an FAQ .csv (question,answer) or an FAQ .md",
    ):
        first_problem = len(problems)
        suffix = path.suffix.lower()
        found: list[_Candidate] | None
        if suffix in CSV_SUFFIXES:
            found = _read_faq_csv(path, problems, explicit, limits)
        elif suffix in MARKDOWN_SUFFIXES:
            found = _read_faq_markdown(path, problems, explicit, limits)
        else:
            found = _read_jsonl(path, problems, report, explicit, limits)
        # Syntax errors are found in a first pass; show this file's problems in line order.
        problems[first_problem:] = sorted(problems[first_problem:], key=lambda p: p.line or 0)
        if found is None:
            report.skipped.append(f"{path} (neither conversations nor question/answer pairs)")
            continue
        report.files.append(str(path))
        for candidate in found:
            report.read[candidate.pair.kind] += 1
            candidates.append(replace(candidate, order=len(candidates)))
    if not candidates and not problems:
        problems.append(
            Problem(
                ", ".join(str(p) for p in paths) or "(no paths)",
                None,
                None,
                'no question/answer pairs were found; mark answered conversations "resolved": '
                "true, or add an FAQ (question,answer CSV or Markdown)",
            )
        )
    if problems:
        raise AnswerDataError(problems)
    curated = AnswerCurator(entities).curate_all(
        [Candidate(c.pair, c.customer_texts) for c in candidates], report.curation
    )
    kept = [replace(c, pair=pair) for c, pair in zip(candidates, curated, strict=True) if pair]
    return _deduplicate(kept, report)


def merge_pairs(pairs: Sequence[AnswerPair]) -> list[AnswerPair]:
    """De-duplicate pairs from several sources by the duplicate rule.

    Duplicate rule (also `build_answer_pairs`'s): pairs whose questions are the same after
    `normalize` (case and spacing ignored) keep one pair, chosen by, in order: kind (faq over
    approved over conversation, because curated answers beat one agent's reply), recency (a
    conversation's `started_at`; undated counts as oldest), the longest answer, and finally the
    first one read. The same answer to many different questions is kept for each question:
    every phrasing is a way to find it.

    Used when approved answers from the store join an existing index's pairs.
    """
    candidates = [_Candidate(pair, None, order) for order, pair in enumerate(pairs)]
    return _deduplicate(candidates, PairReport())

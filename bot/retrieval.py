"""The answer index: past customer questions and the agent answers (or FAQ entries) for them.

Building reads three kinds of input (see ARCHITECTURE.md):

- conversations JSONL (`"kind": "conversation"`): from every conversation marked
  `"resolved": true`, the first substantive customer message paired with the next agent message.
  Small talk (turns whose intent is greeting / thanks / goodbye) and very short turns (fewer
  than `MIN_QUESTION_WORDS` words, e.g. "human pls", "BC-201853") are not questions worth
  answering again;
- FAQ files (`"faq"`): CSV with `question,answer` (optional `intent`) columns, or Markdown
  where each `## Question` heading, or a `**Q:**` line, is followed by its answer paragraphs
  (or a `**A:**` line);
- approved pairs (`"approved"`): JSONL records with `question` and `answer` (optional `intent`),
  e.g. agent replies exported as good answers.

Everything is validated before anything is embedded; all problems are reported at once, each
with file, line, field and the fix, in the style of `training/data.py`.

Duplicate rule: pairs whose questions are the same after `normalize` (case and spacing ignored)
keep one pair, chosen by, in order: kind (faq over approved over conversation, because curated
answers beat one agent's reply), recency (a conversation's `started_at`; undated counts as
oldest), the longest answer, and finally the first one read. The same answer to many different
questions is kept for each question: every phrasing is a way to find it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from bot.errors import (
    BadRequestError,
    ConfigurationError,
    ModelNotFoundError,
    SupportbotError,
)
from bot.events import Answer
from bot.models import DEFAULT_BACKBONE, quiet_transformers, resolve_backbone
from bot.tasks import cancel_and_wait
from bot.validation import (
    DataProblemsError,
    Problem,
    decoded_lines,
    expand_paths,
    json_records,
    normalize,
    read_csv,
)

log = logging.getLogger(__name__)

PairKind = Literal["conversation", "faq", "approved"]
Vectors = npt.NDArray[np.float32]
#: Embeds texts: one row per text, float32, shape (len(texts), dimension).
Embed = Callable[[Sequence[str]], Vectors]
#: Embeds one query text off the event loop (e.g. a micro-batcher's `submit`).
AsyncEmbed = Callable[[str], Awaitable[Vectors]]

SMALL_TALK_INTENTS = frozenset({"greeting", "thanks", "goodbye"})
MIN_QUESTION_WORDS = 3
CONVERSATION_SUFFIXES = {".jsonl", ".json", ".ndjson"}
CSV_SUFFIXES = {".csv", ".tsv"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
SUPPORTED_SUFFIXES = CONVERSATION_SUFFIXES | CSV_SUFFIXES | MARKDOWN_SUFFIXES

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
PAIRS_FILE = "pairs.jsonl"
FORMAT_VERSION = 1

# Higher wins when two pairs share a question.
_KIND_RANK: dict[str, int] = {"faq": 2, "approved": 1, "conversation": 0}
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_QUESTION_MARK = re.compile(r"^\*\*Q:\*\*\s*(.*)$", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^\*\*A:\*\*\s*(.*)$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLANK_RUNS = re.compile(r"\n{3,}")


# -- pairs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerPair:
    """A question and the answer that resolved it.

    Attributes:
        question: what the customer asked (or the FAQ question).
        answer: what the agent replied (or the FAQ answer).
        intent: the question's intent label, when the input had one.
        source: where it was read, `file:line`.
        kind: `conversation`, `faq` or `approved`.
    """

    question: str
    answer: str
    intent: str | None
    source: str
    kind: PairKind

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "intent": self.intent,
            "source": self.source,
            "kind": self.kind,
        }

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
        )


class AnswerDataError(DataProblemsError):
    """The question/answer input has problems; no index was built."""

    WHAT = "the answer data; no index was built"


class AnswerIndexError(SupportbotError):
    """An answer index is inconsistent, or asked to do something it cannot."""


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
        out.append(f"duplicates dropped: {self.duplicates_dropped} (same question, one kept)")
        return out


@dataclass(frozen=True, slots=True)
class _Candidate:
    pair: AnswerPair
    when: datetime | None
    order: int


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


def _conversation_pairs(
    path: Path,
    records: list[tuple[int, dict[str, Any]]],
    problems: list[Problem],
    report: PairReport,
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
        found.append(_Candidate(candidate, when, 0))
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
        valid, intent = _optional_label(record.get("intent"), path, number, "intent", problems)
        if ok and valid:
            assert isinstance(question, str) and isinstance(answer, str)
            pair = AnswerPair(
                question.strip(), answer.strip(), intent, f"{path}:{number}", "approved"
            )
            found.append(_Candidate(pair, None, 0))
    return found


def _read_jsonl(
    path: Path, problems: list[Problem], report: PairReport, explicit: bool
) -> list[_Candidate] | None:
    records = list(json_records(path, problems))
    if any("messages" in record for _, record in records):
        return _conversation_pairs(path, records, problems, report)
    if records and all({"question", "answer"} & set(record) for _, record in records):
        return _approved_pairs(path, records, problems)
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


def _read_faq_csv(path: Path, problems: list[Problem], explicit: bool) -> list[_Candidate] | None:
    table = read_csv(path, problems)
    if table is None:
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
        if question and answer:
            pair = AnswerPair(question, answer, intent, f"{path}:{line}", "faq")
            found.append(_Candidate(pair, None, 0))
    return found


def _read_faq_markdown(
    path: Path, problems: list[Problem], explicit: bool
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
        else:
            pair = AnswerPair(question, answer, None, f"{path}:{entry['line']}", "faq")
            found.append(_Candidate(pair, None, 0))
        entry = None

    for number, line in enumerate(decoded_lines(path, problems), start=1):
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


def build_answer_pairs(paths: Sequence[Path], report: PairReport | None = None) -> list[AnswerPair]:
    """Read, validate and de-duplicate question/answer pairs.

    Args:
        paths: conversations JSONL, FAQ CSV/Markdown, approved-pair JSONL, or directories of
            them. In a directory, files that are none of these (e.g. a labelled-utterance CSV)
            are skipped and listed in `report.skipped`; named explicitly, they are an error.
        report: filled with the files read and skipped and the counts per kind.

    Returns:
        One pair per distinct question, in file order (duplicate rule: module docstring).

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
            found = _read_faq_csv(path, problems, explicit)
        elif suffix in MARKDOWN_SUFFIXES:
            found = _read_faq_markdown(path, problems, explicit)
        else:
            found = _read_jsonl(path, problems, report, explicit)
        # Syntax errors are found in a first pass; show this file's problems in line order.
        problems[first_problem:] = sorted(problems[first_problem:], key=lambda p: p.line or 0)
        if found is None:
            report.skipped.append(f"{path} (neither conversations nor question/answer pairs)")
            continue
        report.files.append(str(path))
        for candidate in found:
            report.read[candidate.pair.kind] += 1
            candidates.append(_Candidate(candidate.pair, candidate.when, len(candidates)))
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
    return _deduplicate(candidates, report)


def merge_pairs(pairs: Sequence[AnswerPair]) -> list[AnswerPair]:
    """De-duplicate pairs from several sources by the module's duplicate rule.

    Used when approved answers from the store join an existing index's pairs.
    """
    candidates = [_Candidate(pair, None, order) for order, pair in enumerate(pairs)]
    return _deduplicate(candidates, PairReport())


# -- embedding and search ----------------------------------------------------------------


class SentenceEmbedder:
    """Embeds texts with a sentence-transformers model, loaded on first use.

    Loading is lazy so that building an index from bad data fails before any model loads, and
    thread-safe because searches call it from worker threads.

    Args:
        model: `bundled` (the offline all-MiniLM-L6-v2), a Hugging Face name or a local path.
        batch_size: texts per forward pass; sentence-transformers sorts texts by length
            first, so small chunks of similar length waste little on padding.
    """

    def __init__(self, model: str = DEFAULT_BACKBONE, batch_size: int = 16) -> None:
        self.model = model
        self.batch_size = batch_size
        self._encoder: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._encoder is None:
                from sentence_transformers import SentenceTransformer

                quiet_transformers()
                self._encoder = SentenceTransformer(resolve_backbone(self.model), device="cpu")
            return self._encoder

    def shareable(self) -> tuple[Any, Any, int] | None:
        """(transformers encoder, tokenizer, max tokens) when this model is exactly a
        transformer with mean pooling (and normalization), so that its forward can be shared
        with the classifiers (bot/shared_encoder.py); None for any other pipeline."""
        modules = list(self._load())
        kinds = [type(module).__name__ for module in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
            return None
        pooling = modules[1].get_config_dict()
        modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
        if pooling.get("pooling_mode", "mean") != "mean" or set(modes) - {
            "pooling_mode_mean_tokens"
        }:
            return None
        encoder = getattr(modules[0], "auto_model", None)
        if encoder is None:
            return None
        return encoder, modules[0].tokenizer, int(self._load().max_seq_length)

    def __call__(self, texts: Sequence[str]) -> Vectors:
        """L2-normalized float32 embeddings, one row per text."""
        encoder = self._encoder if self._encoder is not None else self._load()
        vectors = encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def _normalized_rows(matrix: npt.NDArray[Any]) -> Vectors:
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0)):
        # Already unit length (encoders normalize, saved indexes are): dividing again would
        # nudge the last bits, and a loaded index must score exactly like the one saved.
        return rows
    # A zero row (an empty text from some encoders) stays zero instead of becoming NaN.
    return cast(Vectors, rows / np.where(norms == 0, 1.0, norms))


def fingerprint(pairs: Sequence[AnswerPair], model: str) -> str:
    """sha256 of the pairs as `pairs.jsonl` stores them plus the model name.

    Two indexes with the same fingerprint hold the same questions embedded by the same model.
    """
    digest = hashlib.sha256(f"{model}\n".encode())
    for pair in pairs:
        digest.update(_pair_line(pair).encode())
    return digest.hexdigest()


def _pair_line(pair: AnswerPair) -> str:
    return json.dumps(pair.to_dict(), ensure_ascii=False, sort_keys=True) + "\n"


def index_model(directory: Path) -> str:
    """The encoder an index at `directory` was built with (so queries use the same one).

    Raises:
        ModelNotFoundError: `directory` holds no answer index.
    """
    meta_path = directory / INDEX_FILE
    if not meta_path.is_file():
        raise ModelNotFoundError(
            f"{directory} is not an answer index: {INDEX_FILE} is missing; build one with "
            "`supportbot index build --data data/ --out DIR`"
        )
    return str(json.loads(meta_path.read_text())["model"])


class EmbeddingAnswerIndex:
    """Past questions embedded with a sentence encoder; answers found by cosine similarity.

    Search is exact: one matrix-vector product over all question embeddings, then a partial
    sort. Exact search is used because it stays within a few milliseconds up to ~100k pairs
    (p50 4-8 ms for 100k x 384 float32 on a busy 2-CPU machine,
    `benchmarks/retrieval_benchmark.py`; the product is memory-bound), below the encoder's own
    ~15 ms per query. An approximate-nearest-neighbour library (FAISS, hnswlib) would only be
    needed beyond that, at the price of recall and another dependency.

    Identical answers given to several questions appear once per result list (under the
    best-matching question), so `k` results are `k` different answers when there are that many.

    Args:
        pairs: what was embedded, row for row.
        embeddings: shape (len(pairs), dimension); rows are L2-normalized here if they are not.
        embed: embeds texts for `search` (run in a worker thread); default: a lazily loaded
            `SentenceEmbedder(model)`.
        model: the encoder the embeddings were made with (recorded by `save`).
        embed_async: when given, `search` awaits it for the query vector instead of running
            `embed` in a thread; the runtime passes its micro-batcher's `submit` here.
        built_at: when the embeddings were made (ISO 8601); default now.

    Raises:
        AnswerIndexError: embeddings and pairs do not match.
    """

    def __init__(
        self,
        pairs: Sequence[AnswerPair],
        embeddings: npt.NDArray[Any],
        embed: Embed | None = None,
        *,
        model: str = DEFAULT_BACKBONE,
        embed_async: AsyncEmbed | None = None,
        built_at: str | None = None,
    ) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(pairs):
            raise AnswerIndexError(
                f"expected one embedding row per pair ({len(pairs)} rows), found shape "
                f"{embeddings.shape}; rebuild the index with `supportbot index build`"
            )
        self.pairs: tuple[AnswerPair, ...] = tuple(pairs)
        self.model = model
        self.built_at = built_at or datetime.now(UTC).isoformat(timespec="seconds")
        self._embeddings = _normalized_rows(embeddings)
        self._embed: Embed = embed if embed is not None else SentenceEmbedder(model)
        self._embed_async = embed_async
        by_intent: dict[str, list[int]] = {}
        answer_ids: dict[str, int] = {}
        groups = []
        for row, pair in enumerate(self.pairs):
            if pair.intent is not None:
                by_intent.setdefault(pair.intent, []).append(row)
            groups.append(answer_ids.setdefault(normalize(pair.answer), len(answer_ids)))
        self._rows_by_intent = {k: np.asarray(v, dtype=np.int64) for k, v in by_intent.items()}
        self._answer_group = np.asarray(groups, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def dimension(self) -> int:
        """Length of each embedding."""
        return int(self._embeddings.shape[1])

    @property
    def intents(self) -> frozenset[str]:
        """The intents some pair carries (what `intent=` can filter on)."""
        return frozenset(self._rows_by_intent)

    @property
    def fingerprint(self) -> str:
        """See `fingerprint()`."""
        return fingerprint(self.pairs, self.model)

    @classmethod
    def build(
        cls,
        pairs: Sequence[AnswerPair],
        model: str = DEFAULT_BACKBONE,
        embed: Embed | None = None,
        embed_async: AsyncEmbed | None = None,
    ) -> EmbeddingAnswerIndex:
        """Embed the questions of `pairs`.

        Args:
            pairs: e.g. from `build_answer_pairs`.
            model: the sentence encoder (`bundled`, a Hugging Face name or a path).
            embed: use this instead of loading `model` (it must be the same model for `save`
                to record the truth).
            embed_async: see the class docstring.

        Raises:
            AnswerIndexError: no pairs, or the encoder returned the wrong number of rows.
        """
        if not pairs:
            raise AnswerIndexError(
                "there are no question/answer pairs to index; give resolved conversations or "
                "an FAQ file"
            )
        embed = embed if embed is not None else SentenceEmbedder(model)
        vectors = np.asarray(embed([p.question for p in pairs]), dtype=np.float32)
        return cls(pairs, vectors, embed, model=model, embed_async=embed_async)

    def save(self, directory: Path) -> Path:
        """Write `embeddings.npy`, `pairs.jsonl` and `index.json` to `directory`.

        The files are written to a sibling temporary directory that then replaces `directory`,
        so a reader never sees a mix of old and new files.

        Raises:
            ConfigurationError: `directory` exists and is something other than an answer index.
        """
        if directory.exists() and (
            not directory.is_dir()
            or (any(directory.iterdir()) and not (directory / INDEX_FILE).is_file())
        ):
            raise ConfigurationError(
                f"{directory} exists and is not an answer index (no {INDEX_FILE}); choose "
                "another --out or remove it"
            )
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
        try:
            np.save(staging / EMBEDDINGS_FILE, self._embeddings, allow_pickle=False)
            with (staging / PAIRS_FILE).open("w", encoding="utf-8") as handle:
                handle.writelines(_pair_line(pair) for pair in self.pairs)
            meta = {
                "format": FORMAT_VERSION,
                "model": self.model,
                "dimension": self.dimension,
                "count": len(self.pairs),
                "built_at": self.built_at,
                "fingerprint": self.fingerprint,
                "kinds": dict(Counter(p.kind for p in self.pairs)),
            }
            (staging / INDEX_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if directory.exists():
                retired = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(directory, retired)
                os.replace(staging, directory)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def load(
        cls,
        directory: Path,
        embed: Embed | None = None,
        embed_async: AsyncEmbed | None = None,
    ) -> EmbeddingAnswerIndex:
        """Load an index written by `save`; the encoder is the one recorded, loaded on use.

        Raises:
            ModelNotFoundError: `directory` holds no answer index.
            AnswerIndexError: its files do not agree with each other.
        """
        meta_path = directory / INDEX_FILE
        if not meta_path.is_file():
            raise ModelNotFoundError(
                f"{directory} is not an answer index: {INDEX_FILE} is missing; build one with "
                "`supportbot index build --data data/ --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        fix = f"; rebuild it with `supportbot index build --out {directory}`"
        try:
            embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
            lines = (directory / PAIRS_FILE).read_text(encoding="utf-8").splitlines()
            pairs = [AnswerPair.from_dict(json.loads(line)) for line in lines if line.strip()]
        except (OSError, ValueError, KeyError) as exc:
            raise AnswerIndexError(f"{directory} is incomplete or corrupt ({exc}){fix}") from exc
        expected = (int(meta["count"]), int(meta["dimension"]))
        if embeddings.shape != expected or len(pairs) != expected[0]:
            raise AnswerIndexError(
                f"{directory}: {INDEX_FILE} says {expected[0]} pairs of dimension {expected[1]}, "
                f"found embeddings of shape {embeddings.shape} and {len(pairs)} pairs{fix}"
            )
        index = cls(
            pairs,
            embeddings,
            embed,
            model=str(meta["model"]),
            embed_async=embed_async,
            built_at=str(meta.get("built_at") or ""),
        )
        if index.fingerprint != meta.get("fingerprint"):
            raise AnswerIndexError(
                f"{directory}: {PAIRS_FILE} does not match the fingerprint in {INDEX_FILE} "
                f"(edited or partly copied){fix}"
            )
        return index

    async def search(
        self,
        text: str,
        k: int = 3,
        intent: str | None = None,
        embedding: Vectors | None = None,
    ) -> list[Answer]:
        """The best answers for `text`, best first, each with its cosine similarity.

        The query is embedded off the event loop: by `embed_async` when given, otherwise in a
        worker thread (`asyncio.to_thread`) together with the search.

        Args:
            text: the customer's message; blank text finds nothing.
            k: at most this many answers.
            intent: prefer pairs of this intent: only they are searched when any exist.
            embedding: `text` already embedded with this index's encoder (the runtime's
                shared forward makes it together with intent and sentiment); then it is not
                embedded again.

        Raises:
            BadRequestError: `k` is below 1.
        """
        _check_k(k)
        if not text.strip():
            return []
        if embedding is not None:
            return self.search_embedding(embedding, k, intent)
        if self._embed_async is not None:
            vector = await self._embed_async(text)
            return self.search_embedding(vector, k, intent)
        return await asyncio.to_thread(self._embed_and_search, text, k, intent)

    def _embed_and_search(self, text: str, k: int, intent: str | None) -> list[Answer]:
        return self.search_embedding(self._embed([text])[0], k, intent)

    def search_embedding(
        self, vector: npt.NDArray[Any], k: int = 3, intent: str | None = None
    ) -> list[Answer]:
        """Exact cosine search for an already embedded query (normalized here).

        Args:
            vector: shape (dimension,) or (1, dimension).
            k: at most this many answers, distinct answer texts.
            intent: restrict to pairs of this intent when any exist, else search all.

        Raises:
            BadRequestError: `k` is below 1.
            AnswerIndexError: the vector's dimension is not the index's (another model).
        """
        _check_k(k)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise AnswerIndexError(
                f"the query embedding has {query.shape[0]} dimensions but the index holds "
                f"{self.dimension} (model {self.model!r}); embed queries with the model the "
                "index was built with"
            )
        norm = float(np.linalg.norm(query))
        if norm == 0.0 or not self.pairs:
            return []
        scores = self._embeddings @ (query / norm)
        rows = self._rows_by_intent.get(intent) if intent is not None else None
        candidates = scores if rows is None else scores[rows]
        answers = []
        for position in self._best(candidates, rows, k):
            row = int(position if rows is None else rows[position])
            pair = self.pairs[row]
            score = float(np.clip(scores[row], -1.0, 1.0))
            answers.append(Answer(pair.answer, score, pair.source, pair.question))
        return answers

    def _best(
        self, scores: npt.NDArray[np.float32], rows: npt.NDArray[np.int64] | None, k: int
    ) -> list[int]:
        """Positions in `scores` of the k best rows with distinct answers, best first."""
        n = int(scores.shape[0])
        # Look at a few more than k so that repeated answers rarely force a second pass.
        window = min(n, 4 * k)
        while True:
            top = np.argpartition(scores, n - window)[n - window :] if window < n else np.arange(n)
            ordered = top[np.argsort(-scores[top], kind="stable")]
            picked: list[int] = []
            seen: set[int] = set()
            for position in ordered:
                row = int(position if rows is None else rows[position])
                group = int(self._answer_group[row])
                if group in seen:
                    continue
                seen.add(group)
                picked.append(int(position))
                if len(picked) == k:
                    return picked
            if window >= n:
                return picked
            window = min(n, window * 4)


def _check_k(k: int) -> None:
    if k < 1:
        raise BadRequestError(f"k must be at least 1, found {k}; ask for 1 or more answers")


class ReloadingAnswerIndex:
    """The answer index directory as served: a rebuilt index is swapped in without a restart.

    A background task checks `index.json` every `interval_s` seconds; when its fingerprint
    or build time changes (`supportbot retrain` or `index build` replaced the directory), the
    new index is loaded beside the old one in a worker thread and swapped in with one
    reference assignment, so a search in flight finishes on the index it started with and
    none fails. A broken or half-copied directory is logged and the old index kept.

    Args:
        directory: the index directory.
        load: loads an index from a directory (the runtime binds its embedder here).
        interval_s: how often `index.json` is checked.
    """

    def __init__(
        self,
        directory: Path,
        load: Callable[[Path], EmbeddingAnswerIndex],
        interval_s: float = 2.0,
    ) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._load = load
        self.current = load(directory)
        self._stamp = self._read_stamp()
        self._watcher: asyncio.Task[None] | None = None
        self.reloads = 0

    def __len__(self) -> int:
        return len(self.current)

    def _read_stamp(self) -> str | None:
        try:
            meta = json.loads((self.directory / INDEX_FILE).read_text())
            return f"{meta['fingerprint']} {meta.get('built_at')}"
        except (OSError, ValueError, KeyError, TypeError):
            return None  # mid-swap or broken: look again at the next check

    async def search(
        self,
        text: str,
        k: int = 3,
        intent: str | None = None,
        embedding: Vectors | None = None,
    ) -> list[Answer]:
        """See `EmbeddingAnswerIndex.search`."""
        return await self.current.search(text, k, intent, embedding)

    async def reload_if_changed(self) -> bool:
        """Load the directory's index if it is not the one served; True when swapped."""
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        index = await asyncio.to_thread(self._load, self.directory)
        if index.model != self.current.model:
            self._stamp = stamp  # do not retry every interval; a restart picks the model up
            log.error(
                "answer index in %s was built with %r, not %r; restart the bot to serve it",
                self.directory,
                index.model,
                self.current.model,
            )
            return False
        self.current, self._stamp = index, stamp
        self.reloads += 1
        log.info("reloaded the answer index from %s (%d pairs)", self.directory, len(index))
        return True

    async def start(self) -> None:
        """Start watching the directory."""
        self._watcher = asyncio.create_task(self._watch(), name="answer-index-watcher")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        await cancel_and_wait(watcher)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reload_if_changed()
            except (SupportbotError, OSError, ValueError) as exc:
                log.error("answer index reload failed, still serving the old one: %s", exc)

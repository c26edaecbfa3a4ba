"""Learned entities: annotated examples, token-classification fine-tuning, span metrics.

Annotated examples come from two formats (README, "Learned entities"):

- Rasa NLU YAML: `[Berlin](city)`, `[Berlin](city:BER)`, `[Berlin]{"entity": "city",
  "value": "BER"}` inside `examples: |` blocks of any intent, and `- synonym: BER` blocks;
- JSONL: `{"text": "...", "entities": [{"start": 0, "end": 6, "entity": "city",
  "value": "BER"}]}` (`value` optional; a record without `entities` is a sentence with none).

Every problem (a span beyond the text, overlapping spans, an empty entity name, invalid
markup) is collected with its file, line and field before anything is trained.

The model tags each word piece with BIO tags (`O`, `B-city`, `I-city`) from the encoder's last
hidden states (`bot/nlu/entity_model.py`), trained with the same backbone and
`TrainingArguments` as the classifiers: seeded, the lower layers frozen (`tuned_layers`) so
the runtime can share them, early stopping on the validation span F1.
"""

from __future__ import annotations

import json
import math
import platform
import random
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from bot.core.datafiles import (
    DEFAULT_LIMITS,
    DataProblemsError,
    InputLimits,
    Problem,
    abbreviate,
    decoded_lines,
    expand_paths,
    json_records,
)
from bot.core.errors import ConfigurationError
from bot.nlu.artifacts import quiet_transformers, resolve_backbone
from bot.nlu.entity_model import (
    OUTSIDE,
    SCHEMES,
    EntityMeta,
    TokenTaggerModule,
    best_tags,
    decode_spans,
    encode_with_offsets,
    forbidden_moves,
    save_tagger,
    token_logits,
    word_starts,
)
from bot.nlu.shared_encoder import freeze_lower_layers
from training.arguments import TrainingArguments
from training.data import _ALIAS_REFUSED, _RasaLoader
from training.registry import FileModelRegistry, ModelVersion
from training.trainer import BestEpoch, make_batches, optimizer_and_schedule, seed_everything

ENTITY_SUFFIXES = {".yml", ".yaml", ".jsonl", ".json", ".ndjson"}
REPORT_FILE = "report.txt"
METRICS_FILE = "metrics.json"
TEST_SET_FILE = "test_set.jsonl"
IGNORE = -100
#: Fewer validation sentences than this cannot pick an epoch: on 70 Snips queries (7 held
#: out) early stopping kept epoch 5 of 30 and macro slot F1 fell from 0.69 to 0.35
#: (benchmarks/entity_benchmark.py --dev); the sentences are trained on instead.
MIN_VALIDATION = 50
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_NAME_RULE = "entity names are a letter, then letters, digits, `_`, `-` or `.` (at most 64)"
# [text](entity), [text](entity:value) or [text]{"entity": ..., "value": ...}
_MARKUP = re.compile(r"\[([^\[\]]+)\](?:\(([^()]*)\)|(\{[^{}]*\}))")


class EntityDataError(DataProblemsError):
    """The annotated entity data has problems; nothing was trained."""

    WHAT = "the entity training data; nothing was trained"


@dataclass(frozen=True, slots=True)
class Span:
    """One annotated entity: `text[start:end]` is `entity`, stored as `value` when given."""

    entity: str
    start: int
    end: int
    value: str | None = None


@dataclass(frozen=True, slots=True)
class AnnotatedExample:
    """A sentence with its entity spans and where it came from."""

    text: str
    spans: tuple[Span, ...]
    source: str = ""
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSONL form `load_annotated` reads back."""
        return {
            "text": self.text,
            "entities": [
                {"start": s.start, "end": s.end, "entity": s.entity}
                | ({"value": s.value} if s.value is not None else {})
                for s in self.spans
            ],
            "source": self.source,
            "line": self.line,
        }


@dataclass
class AnnotatedData:
    """What `load_annotated` read: the sentences and the synonyms (entity -> text -> value)."""

    examples: list[AnnotatedExample] = field(default_factory=list)
    synonyms: dict[str, dict[str, str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def entities(self) -> tuple[str, ...]:
        """The entity names, sorted."""
        return tuple(sorted({s.entity for e in self.examples for s in e.spans}))


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def parse_markup(item: str) -> tuple[str, list[Span], list[str]]:
    """Rasa's inline entity markup: the plain text, its spans, and what is wrong with it."""
    plain: list[str] = []
    spans: list[Span] = []
    problems: list[str] = []
    position = 0
    length = 0
    for match in _MARKUP.finditer(item):
        before = item[position : match.start()]
        plain.append(before)
        length += len(before)
        written = match.group(1)
        entity: Any = None
        value: Any = None
        if match.group(2) is not None:
            entity, _, value = match.group(2).partition(":")
            value = value.strip() or None
        else:
            try:
                spec = json.loads(match.group(3))
            except json.JSONDecodeError as exc:
                problems.append(
                    f"{abbreviate(match.group(0))}: the {{...}} after [text] is not valid JSON "
                    f'({exc.msg}); write it as {{"entity": "name"}}'
                )
                spec = {}
            if isinstance(spec, dict):
                entity, value = spec.get("entity"), spec.get("value")
        entity = entity.strip() if isinstance(entity, str) else ""
        if not entity:
            problems.append(
                f"{abbreviate(match.group(0))}: the entity name is empty; write "
                '[text](entity) or [text]{"entity": "entity"}'
            )
        elif not _NAME.match(entity):
            problems.append(f"{abbreviate(match.group(0))}: {entity!r}: {_NAME_RULE}")
        stripped = written.strip()
        if not stripped:
            problems.append(f"{abbreviate(match.group(0))}: the entity's text is empty")
        lead = len(written) - len(written.lstrip())
        if entity and stripped:
            start = length + lead
            spans.append(
                Span(entity, start, start + len(stripped), None if value is None else str(value))
            )
        plain.append(written)
        length += len(written)
        position = match.end()
    plain.append(item[position:])
    return "".join(plain), spans, problems


def check_spans(text: str, raw: Any) -> tuple[list[Span], list[tuple[str, str]]]:
    """Spans of a JSONL record's `entities` and (field, problem) pairs for the bad ones."""
    problems: list[tuple[str, str]] = []
    spans: list[Span] = []
    if raw is None:
        return spans, problems
    if not isinstance(raw, list):
        return spans, [("entities", "must be a list of {start, end, entity} objects")]
    for i, item in enumerate(raw):
        where = f"entities[{i}]"
        if not isinstance(item, dict):
            problems.append((where, "must be an object with start, end and entity"))
            continue
        start, end, entity = item.get("start"), item.get("end"), item.get("entity")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            problems.append((f"{where}.start", f"must be a character offset >= 0, got {start!r}"))
            continue
        if not isinstance(end, int) or isinstance(end, bool) or end <= start:
            problems.append(
                (f"{where}.end", f"must be an offset after start ({start}), got {end!r}")
            )
            continue
        if end > len(text):
            problems.append(
                (
                    f"{where}.end",
                    f"{end} is beyond the text ({len(text)} characters); offsets count "
                    "characters from 0, end is exclusive",
                )
            )
            continue
        if not isinstance(entity, str) or not entity.strip():
            problems.append((f"{where}.entity", "is missing or empty; name the entity"))
            continue
        if not _NAME.match(entity.strip()):
            problems.append((f"{where}.entity", f"{abbreviate(entity)!r}: {_NAME_RULE}"))
            continue
        if not text[start:end].strip():
            problems.append((where, f"covers only spaces ({start}:{end})"))
            continue
        value = item.get("value")
        spans.append(Span(entity.strip(), start, end, None if value is None else str(value)))
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.end:
            problems.append(
                (
                    "entities",
                    f"spans overlap: {a.entity} {a.start}:{a.end} and {b.entity} "
                    f"{b.start}:{b.end}; a character belongs to one entity",
                )
            )
    return ordered, problems


def _jsonl_examples(
    path: Path, problems: list[Problem], limits: InputLimits
) -> list[AnnotatedExample]:
    out = []
    for number, record in json_records(path, problems, limits):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(
                Problem(str(path), number, "text", "is missing or empty; every record needs one")
            )
            continue
        issue = limits.text_problem(text)
        if issue:
            problems.append(Problem(str(path), number, "text", issue))
            continue
        spans, bad = check_spans(text, record.get("entities"))
        for name, message in bad:
            problems.append(Problem(str(path), number, name, message))
        if not bad:
            out.append(AnnotatedExample(text, tuple(spans), str(path), number))
    return out


def _rasa_examples(
    path: Path, problems: list[Problem], limits: InputLimits, synonyms: dict[str, str]
) -> list[AnnotatedExample]:
    lines = list(decoded_lines(path, problems, limits))
    try:
        document = yaml.load("\n".join(lines), Loader=_RasaLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", exc)
        message = (
            problem
            if problem == _ALIAS_REFUSED
            else f"is not valid YAML ({problem}); check the indentation"
        )
        problems.append(Problem(str(path), mark.line + 1 if mark else None, None, str(message)))
        return []
    if not isinstance(document, dict) or not isinstance(document.get("nlu"), list):
        problems.append(
            Problem(
                str(path), None, "nlu", "is missing; a Rasa NLU file has a top-level `nlu:` list"
            )
        )
        return []
    line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("- "):
            line_of.setdefault(stripped[2:].strip(), number)
    out = []
    for block in document["nlu"]:
        if not isinstance(block, dict):
            continue
        examples = block.get("examples")
        if not isinstance(examples, str) or not ("intent" in block or "synonym" in block):
            continue  # regexes and lookups carry no annotated sentences
        items = [raw.strip()[1:].strip() for raw in examples.splitlines()]
        items = [i for i in items if i]
        if "synonym" in block:
            for item in items:
                synonyms[_key(item)] = str(block["synonym"])
            continue
        for item in items:
            at = line_of.get(item, 0)
            text, spans, bad = parse_markup(item)
            for message in bad:
                problems.append(Problem(str(path), at or None, "examples", message))
            issue = limits.text_problem(text) if text.strip() else "is empty"
            if issue:
                problems.append(Problem(str(path), at or None, "examples", issue))
            if not bad and not issue:
                out.append(AnnotatedExample(text, tuple(spans), str(path), at))
    return out


def load_annotated(paths: Sequence[Path], limits: InputLimits = DEFAULT_LIMITS) -> AnnotatedData:
    """Read annotated sentences from Rasa NLU YAML and JSONL span files (or directories).

    Synonyms come from `value`s (markup or JSONL) and Rasa `synonym:` blocks: the model
    stores the text it finds and, as the value, what the data mapped that text to.

    Raises:
        EntityDataError: every problem found, with file, line and field.
    """
    problems: list[Problem] = []
    data = AnnotatedData()
    rasa_synonyms: dict[str, str] = {}
    for path, _ in expand_paths(paths, ENTITY_SUFFIXES, problems, "Rasa NLU YAML or JSONL"):
        if path.suffix.lower() in {".yml", ".yaml"}:
            data.examples += _rasa_examples(path, problems, limits, rasa_synonyms)
        else:
            data.examples += _jsonl_examples(path, problems, limits)
        data.files.append(str(path))
    if not problems and not any(e.spans for e in data.examples):
        problems.append(
            Problem(
                ", ".join(abbreviate(f) for f in data.files) or "--data",
                None,
                None,
                "holds no annotated entity; mark entities as [text](entity) in Rasa examples "
                "or give JSONL records with `entities` spans",
            )
        )
    if problems:
        raise EntityDataError(problems)
    for example in data.examples:
        for span in example.spans:
            written = _key(example.text[span.start : span.end])
            value = span.value if span.value is not None else rasa_synonyms.get(written)
            if value is not None and value != example.text[span.start : span.end]:
                data.synonyms.setdefault(span.entity, {})[written] = value
    return data


# -- tagging -------------------------------------------------------------------------------


def piece_targets(
    spans: Sequence[Span],
    offsets: Sequence[tuple[int, int]],
    words: Sequence[int | None],
    tag_index: dict[str, int],
    scheme: str,
) -> list[int]:
    """BIO tag ids per word piece (IGNORE for special tokens, and for pieces after a word's
    first under the `first` scheme). A piece belongs to a span it overlaps."""
    starts = set(word_starts(words))
    targets = []
    begun: set[int] = set()
    for position, ((a, b), word) in enumerate(zip(offsets, words, strict=True)):
        if word is None or b <= a:
            targets.append(IGNORE)
            continue
        if scheme == "first" and position not in starts:
            targets.append(IGNORE)
            continue
        tag = OUTSIDE
        for index, span in enumerate(spans):
            if a < span.end and span.start < b:
                tag = f"{'I' if index in begun else 'B'}-{span.entity}"
                begun.add(index)
                break
        targets.append(tag_index[tag])
    return targets


# -- metrics -------------------------------------------------------------------------------


def span_metrics(
    gold: Sequence[Iterable[tuple[str, int, int]]],
    predicted: Sequence[Iterable[tuple[str, int, int]]],
    entities: Sequence[str] = (),
) -> dict[str, Any]:
    """Span-level precision, recall and F1 per entity (a prediction counts when entity,
    start and end all match, as seqeval/conlleval count chunks), micro and macro averages and
    the share of sentences whose spans are all exactly right."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    exact = 0
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(g), set(p)
        exact += gs == ps
        for name, *_ in gs & ps:
            tp[name] += 1
        for name, *_ in ps - gs:
            fp[name] += 1
        for name, *_ in gs - ps:
            fn[name] += 1
    names = sorted(set(entities) | set(tp) | set(fp) | set(fn))

    def prf(t: int, f_pos: int, f_neg: int) -> tuple[float, float, float]:
        precision = t / (t + f_pos) if t + f_pos else 0.0
        recall = t / (t + f_neg) if t + f_neg else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    per_entity = {}
    for name in names:
        precision, recall, f1 = prf(tp[name], fp[name], fn[name])
        per_entity[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp[name] + fn[name],
            "predicted": tp[name] + fp[name],
        }
    precision, recall, f1 = prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    supported = [v["f1"] for v in per_entity.values() if v["support"]]
    return {
        "n": len(gold),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "micro_f1": round(f1, 4),
        "macro_f1": round(sum(supported) / len(supported), 4) if supported else 0.0,
        "exact_match": round(exact / len(gold), 4) if gold else 0.0,
        "per_entity": per_entity,
    }


def render_entity_report(metrics: dict[str, Any], title: str) -> str:
    """A readable per-entity table."""
    lines = [
        f"{title}: {metrics['n']} sentences",
        f"span F1 micro {metrics['micro_f1']:.4f}, macro {metrics['macro_f1']:.4f}; "
        f"precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}; "
        f"sentences exactly right {metrics['exact_match']:.1%}",
        "",
        f"{'entity':<28}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for name, row in metrics["per_entity"].items():
        lines.append(
            f"{abbreviate(name, 27):<28}{row['precision']:>10.4f}{row['recall']:>10.4f}"
            f"{row['f1']:>10.4f}{row['support']:>9}"
        )
    return "\n".join(lines) + "\n"


# -- training ------------------------------------------------------------------------------


@dataclass
class FittedTagger:
    """A fine-tuned entity model in memory, not yet registered."""

    model: TokenTaggerModule
    tokenizer: Any
    meta: EntityMeta
    args: TrainingArguments
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    note: str = ""

    def predict(
        self, texts: Sequence[str], batch_size: int = 64
    ) -> list[list[tuple[str, int, int]]]:
        """(entity, start, end) spans per text."""
        return predict_spans(self.model, self.tokenizer, self.meta, texts, batch_size)

    def evaluate(self, examples: Sequence[AnnotatedExample]) -> dict[str, Any]:
        """Span metrics on annotated sentences."""
        predicted = self.predict([e.text for e in examples])
        gold = [[(s.entity, s.start, s.end) for s in e.spans] for e in examples]
        return span_metrics(gold, predicted, self.meta.entities)


def predict_spans(
    model: TokenTaggerModule,
    tokenizer: Any,
    meta: EntityMeta,
    texts: Sequence[str],
    batch_size: int = 64,
) -> list[list[tuple[str, int, int]]]:
    """(entity, start, end) spans per text from a model in memory."""
    encoded = encode_with_offsets(tokenizer, texts, meta.max_length)
    logits = token_logits(model, tokenizer, encoded.input_ids, batch_size)
    tags = meta.tags
    learned = model.transitions.detach().cpu()  # zero without a CRF layer: no change
    return [
        decode_spans(
            text,
            best_tags(logits[i], encoded.words[i], tags, learned),
            encoded.offsets[i],
            encoded.words[i],
        )
        for i, text in enumerate(texts)
    ]


#: The CRF transitions' learning rate: at the head's (2e-3) they moved by 0.13 at most in a
#: run, too little to steer a path (Adam moves each by about its rate per step); 0.05 was
#: chosen on held-out training queries (benchmarks/entity_benchmark.py --dev; 0.2: no better).
CRF_LEARNING_RATE = 0.05

#: Scores that stand for "never" in the CRF's log-space sums (finite, so a gold sequence
#: that breaks BIO after truncation costs a lot instead of an infinite loss).
_NEVER = -1e4


def crf_nll(
    emissions: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor
) -> torch.Tensor:
    """Per sentence, the negative log-likelihood of the gold tag sequence under a linear-chain
    CRF: `emissions` (batch, words, tags) from the head, `gold` (batch, words) tag ids,
    `mask` (batch, words) True for real words (each row starts with one), `transitions`
    (tags + 1, tags) with row `tags` the start, BIO's forbidden moves already at `_NEVER`."""
    batch, length, n_tags = emissions.shape
    start, moves = transitions[n_tags], transitions[:n_tags]
    rows = torch.arange(batch, device=emissions.device)
    score = start[gold[:, 0]] + emissions[rows, 0, gold[:, 0]]
    alpha = start[None, :] + emissions[:, 0]
    for i in range(1, length):
        here = mask[:, i]
        step = moves[gold[:, i - 1], gold[:, i]] + emissions[rows, i, gold[:, i]]
        score = score + torch.where(here, step, torch.zeros_like(step))
        nxt = torch.logsumexp(alpha[:, :, None] + moves[None], dim=1) + emissions[:, i]
        alpha = torch.where(here[:, None], nxt, alpha)
    return torch.logsumexp(alpha, dim=-1) - score


def fit_tagger(
    train: Sequence[AnnotatedExample],
    validation: Sequence[AnnotatedExample],
    args: TrainingArguments,
    entities: Sequence[str] | None = None,
    synonyms: dict[str, dict[str, str]] | None = None,
    scheme: str = "all",
    progress: bool = True,
    crf: bool = True,
) -> FittedTagger:
    """Fine-tune a BIO tagger on `train`, keep the epoch with the best validation span F1.

    With fewer than `MIN_VALIDATION` validation sentences, they join the training data and
    the whole epoch budget is run (see `MIN_VALIDATION`).

    Args:
        entities: the entity names (default: those in `train` and `validation`).
        scheme: `first` trains on the first piece of each word, `all` on every piece.
        crf: add a linear-chain CRF over the words' first pieces (the default): its loss (the
            whole tag sequence's likelihood) is added to the per-piece cross-entropy, and its
            learned tag transitions are used when decoding (`TokenTaggerModule`).
    """
    from transformers import AutoModel, AutoTokenizer

    if scheme not in SCHEMES:
        raise ConfigurationError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    started = time.perf_counter()
    seed_everything(args.seed)
    quiet_transformers()
    names = tuple(entities or sorted({s.entity for e in [*train, *validation] for s in e.spans}))
    note = ""
    if 0 < len(validation) < MIN_VALIDATION:
        note = (
            f"{len(validation)} validation sentences are too few to pick an epoch (fewer than "
            f"{MIN_VALIDATION}): trained on them too, for the whole epoch budget"
        )
        train, validation = [*train, *validation], []
    meta = EntityMeta(
        entities=names,
        max_length=args.max_length,
        backbone=args.model,
        tuned_layers=args.tuned_layers,
        scheme=scheme,
        synonyms=dict(synonyms or {}),
    )
    source = resolve_backbone(args.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot load backbone {args.model!r} ({exc}); give a local model directory, a "
            "Hugging Face name available offline in the cache, or `bundled`"
        ) from exc
    model = TokenTaggerModule(encoder, len(meta.tags))
    if args.tuned_layers is not None:
        try:
            freeze_lower_layers(model.encoder, args.tuned_layers)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tag_index = {tag: i for i, tag in enumerate(meta.tags)}
    try:
        encoded = encode_with_offsets(tokenizer, [e.text for e in train], args.max_length)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    targets = [
        piece_targets(e.spans, encoded.offsets[i], encoded.words[i], tag_index, scheme)
        for i, e in enumerate(train)
    ]
    starts = [word_starts(words) for words in encoded.words]
    word_gold = [
        word_tags([t[p] for p in w], meta.tags) for t, w in zip(targets, starts, strict=True)
    ]
    never = forbidden_moves(meta.tags).clamp(min=_NEVER).to(device)
    if crf:
        model.transitions.requires_grad_(True)
    epochs = args.resolved_epochs(len(train))
    micro_per_epoch = math.ceil(len(train) / args.batch_size)
    optimizer, scheduler, _ = optimizer_and_schedule(
        model,
        args,
        len(train),
        extra=[{"params": [model.transitions], "lr": CRF_LEARNING_RATE}] if crf else (),
    )
    rng = random.Random(args.seed)
    lengths = [len(ids) for ids in encoded.input_ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fitted = FittedTagger(model, tokenizer, meta, args, note=note)
    best = BestEpoch(args.early_stopping_patience)
    bar = tqdm(
        total=micro_per_epoch * epochs,
        desc=f"entity tagger ({len(train)} sentences, at most {epochs} epochs)",
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        batches = make_batches(lengths, args.batch_size, rng, args.length_bucketing)
        for micro, indices in enumerate(batches, start=1):
            width = max(lengths[i] for i in indices)
            ids = torch.full((len(indices), width), pad, dtype=torch.long)
            mask = torch.zeros((len(indices), width), dtype=torch.long)
            target = torch.full((len(indices), width), IGNORE, dtype=torch.long)
            for row, i in enumerate(indices):
                ids[row, : lengths[i]] = torch.tensor(encoded.input_ids[i])
                mask[row, : lengths[i]] = 1
                target[row, : lengths[i]] = torch.tensor(targets[i])
            logits = model(ids.to(device), mask.to(device))
            loss = F.cross_entropy(
                logits.float().reshape(-1, len(meta.tags)),
                target.reshape(-1).to(device),
                ignore_index=IGNORE,
                label_smoothing=args.label_smoothing,
            )
            if crf:
                transitions = model.transitions + never
                loss = loss + _crf_loss(logits, indices, starts, word_gold, transitions)
            (loss / args.gradient_accumulation_steps).backward()
            if micro % args.gradient_accumulation_steps == 0 or micro == len(batches):
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            running += loss.item() * len(indices)
            seen += len(indices)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{running / seen:.4f}")
        val_f1 = None
        if validation:
            val_f1 = fitted.evaluate(validation)["micro_f1"]
            bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{running / seen:.4f}", f1=val_f1)
        fitted.history.append(
            {
                "epoch": epoch,
                "train_loss": round(running / max(1, seen), 5),
                "validation_span_f1": val_f1,
                "seconds": round(time.perf_counter() - epoch_start, 2),
            }
        )
        stop = best.update(epoch, val_f1, model)
        fitted.best_epoch = best.best_epoch
        if stop and epoch < epochs:
            fitted.stopped_early = True
            bar.total = bar.n
            bar.refresh()
            if progress:
                bar.write(
                    f"stopped early at epoch {epoch} of at most {epochs} (no validation "
                    f"span F1 gain for {args.early_stopping_patience} epochs); keeping "
                    f"epoch {fitted.best_epoch}",
                    file=sys.stderr,
                )
            break
    bar.close()
    best.restore(model)
    model.to("cpu").eval()
    fitted.seconds = time.perf_counter() - started
    return fitted


def word_tags(targets: Sequence[int], tags: Sequence[str]) -> list[int]:
    """The gold tag ids at a sentence's words (their first pieces' targets) as valid BIO, the
    CRF's gold path: IGNORE is `O`, and an `I-x` not after `B-x`/`I-x` (a span that began
    inside the previous word) is `B-x`, as decoding reads it."""
    index = {tag: i for i, tag in enumerate(tags)}
    out, previous = [], OUTSIDE
    for target in targets:
        tag = tags[target] if target >= 0 else OUTSIDE
        if tag.startswith("I-") and previous not in (f"B-{tag[2:]}", tag):
            tag = f"B-{tag[2:]}"
        out.append(index[tag])
        previous = tag
    return out


def _crf_loss(
    logits: torch.Tensor,
    indices: Sequence[int],
    starts: Sequence[Sequence[int]],
    word_gold: Sequence[Sequence[int]],
    transitions: torch.Tensor,
) -> torch.Tensor:
    """The CRF's negative log-likelihood per word of a batch, over each sentence's words
    (their first pieces' logits, `word_tags` gold); sentences without a word are left out."""
    rows = [row for row, i in enumerate(indices) if starts[i]]
    if not rows:
        return logits.sum() * 0.0
    width = max(len(starts[indices[row]]) for row in rows)
    position = torch.zeros(len(rows), width, dtype=torch.long)
    gold = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for k, row in enumerate(rows):
        words = starts[indices[row]]
        position[k, : len(words)] = torch.tensor(words)
        gold[k, : len(words)] = torch.tensor(word_gold[indices[row]])
        mask[k, : len(words)] = True
    device = logits.device
    picked = logits[torch.tensor(rows, device=device)].float()
    emissions = torch.gather(
        picked, 1, position.to(device)[:, :, None].expand(-1, -1, picked.shape[-1])
    )
    nll = crf_nll(emissions, gold.to(device), mask.to(device), transitions)
    return nll.sum() / mask.sum()


def split_annotated(
    examples: Sequence[AnnotatedExample],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[list[AnnotatedExample], list[AnnotatedExample], list[AnnotatedExample]]:
    """A seeded random (train, validation, test) split; validation and test get at least one
    sentence each when their fraction is above 0 and there are 3 or more sentences."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    n = len(order)

    def share(fraction: float) -> int:
        return 0 if fraction <= 0 or n < 3 else max(1, round(n * fraction))

    n_test, n_val = share(test_fraction), share(validation_fraction)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def write_annotated(path: Path, examples: Sequence[AnnotatedExample]) -> None:
    """Save annotated sentences as JSONL in the format `load_annotated` reads."""
    with path.open("w", encoding="utf-8") as handle:
        for e in examples:
            handle.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")


@dataclass(frozen=True, slots=True)
class EntityTrainingRun:
    """What `train_entities` produced."""

    version: ModelVersion
    report: str
    metrics: dict[str, Any]
    files: list[str]


def train_entities(
    data: Sequence[Path],
    out: Path,
    args: TrainingArguments,
    test: Sequence[Path] = (),
    scheme: str = "all",
    progress: bool = True,
    promote: bool | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    crf: bool = True,
) -> EntityTrainingRun:
    """Validate annotated data, fine-tune, evaluate and register an `entity` version.

    Raises:
        EntityDataError: the data has problems; nothing was written.
    """
    started = time.perf_counter()
    loaded = load_annotated(data, limits)
    test_examples: list[AnnotatedExample] = []
    if test:
        test_examples = load_annotated(test, limits).examples
        held = {_key(e.text) for e in test_examples}
        loaded.examples = [e for e in loaded.examples if _key(e.text) not in held]
    train, validation, split_test = split_annotated(
        loaded.examples, args.validation_fraction, 0.0 if test else args.test_fraction, args.seed
    )
    source = "held-out test set" if test else "held-out test split"
    if not test:
        test_examples = split_test
    if not test_examples:
        test_examples, source = (
            (validation, "validation split (no test data)")
            if validation
            else (train, "training data (nothing held out: figures are optimistic)")
        )
    fitted = fit_tagger(
        train, validation, args, loaded.entities, loaded.synonyms, scheme, progress, crf
    )
    test_metrics = fitted.evaluate(test_examples)
    registry = FileModelRegistry(out)
    staging = registry.stage("entity")
    try:
        save_tagger(fitted.model, fitted.tokenizer, fitted.meta, staging)
        (staging / "training_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
        write_annotated(staging / TEST_SET_FILE, test_examples)
        seconds = round(time.perf_counter() - started, 1)
        metrics = {
            "task": "entity",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "evaluated_on": source,
            # `accuracy` is the share of sentences with every span right, for `models list`.
            "test": {**test_metrics, "accuracy": test_metrics["exact_match"]},
            "validation": fitted.evaluate(validation) if validation else None,
            "training": {
                "scheme": scheme,
                "crf": crf,
                "note": fitted.note,
                "epochs_run": len(fitted.history),
                "best_epoch": fitted.best_epoch,
                "stopped_early": fitted.stopped_early,
                "seconds": seconds,
                "history": fitted.history,
                "sizes": {
                    "train": len(train),
                    "validation": len(validation),
                    "test": len(test_examples),
                },
                "files": loaded.files,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "accuracy": test_metrics["exact_match"],
            "macro_f1": test_metrics["macro_f1"],
            "micro_f1": test_metrics["micro_f1"],
            "per_entity": test_metrics["per_entity"],
        }
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        report = render_entity_report(test_metrics, f"entity model on the {source}") + (
            f"training: {len(train)} train / {len(validation)} validation / "
            f"{len(test_examples)} test sentences, {len(fitted.history)} epoch(s), best epoch "
            f"{fitted.best_epoch}, {seconds} s; tagging scheme {scheme}"
            f"{', CRF layer' if crf else ''}, tuned layers "
            f"{args.tuned_layers if args.tuned_layers is not None else 'all'}\n"
            + (f"{fitted.note}\n" if fitted.note else "")
        )
        (staging / REPORT_FILE).write_text(report)
        version = registry.commit("entity", staging, promote=promote)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return EntityTrainingRun(version, report, metrics, loaded.files)


#: The entity recipe where it differs from the classifiers' (TrainingArguments defaults):
#: measured with benchmarks/entity_benchmark.py --dev (README: Entity extraction).
ENTITY_DEFAULTS = TrainingArguments(
    batch_size=16, learning_rate=1e-4, label_smoothing=0.0, early_stopping_patience=3
)

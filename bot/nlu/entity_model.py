"""The learned-entity artifact: a transformer encoder with a token-classification head.

This module owns the on-disk format that `training/entities.py` writes and the runtime loads.
A model directory (`models/entity/vN/`) holds:

- a Hugging Face encoder directory (`config.json`, `model.safetensors`, tokenizer files);
- `entity_head.safetensors`: the linear layer from each token's last hidden state to its BIO
  tag (`O`, `B-city`, `I-city`, ...);
- `entity.json`: the tags, the entity names, max length, backbone, tuned layers, the tagging
  scheme, the synonyms learned from the training data (`Berlin` -> `BER`) and, for a model
  trained with a CRF layer, its learned tag-transition scores.

A text's spans are read from the word pieces' offsets in the text, so `text[start:end]` is
exactly what the entity covers. A word's tag is its first piece's: a span never ends inside a
word.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bot.core.datafiles import abbreviate
from bot.core.entities import Entity
from bot.core.errors import ModelNotFoundError
from bot.nlu.classifier import read_model_directory, write_model_directory

HEAD_FILE = "entity_head.safetensors"
META_FILE = "entity.json"
OUTSIDE = "O"
#: How word pieces get training targets: only the first piece of each word, or all pieces.
SCHEMES = ("first", "all")


def bio_tags(entities: Sequence[str]) -> tuple[str, ...]:
    """`O`, then `B-x` and `I-x` for each entity name, in the given order."""
    return (OUTSIDE, *(f"{p}-{name}" for name in entities for p in ("B", "I")))


class TokenTaggerModule(nn.Module):
    """Encoder + dropout + linear head over every token state; returns (batch, tokens, tags).

    `transitions` (tags + 1, tags): the score of tag `to` following tag `from` (row `tags`:
    the sentence start) from one word to the next, added to the tag scores when decoding;
    learned by a CRF layer (training/entities.py), zero for a model trained without one.
    """

    def __init__(self, encoder: Any, num_tags: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder: Any = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), num_tags)
        self.transitions = nn.Parameter(torch.zeros(num_tags + 1, num_tags), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(self.dropout(out.last_hidden_state))


@dataclass(frozen=True, slots=True)
class EntityMeta:
    """What `entity.json` records next to the weights.

    Attributes:
        synonyms: per entity, the case-folded text -> the value the training data mapped it
            to (Rasa `{"entity": "city", "value": "BER"}`, `[Berlin](city:BER)`, `synonym:`).
    """

    entities: tuple[str, ...]
    max_length: int
    backbone: str = ""
    tuned_layers: int | None = None
    scheme: str = "all"
    synonyms: dict[str, dict[str, str]] = field(default_factory=dict)
    task: str = "entity"
    transitions: tuple[tuple[float, ...], ...] | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        return bio_tags(self.entities)

    def to_dict(self) -> dict[str, Any]:
        learned = {"transitions": [list(row) for row in self.transitions or ()]}
        return {
            "task": self.task,
            "entities": list(self.entities),
            "tags": list(self.tags),
            "max_length": self.max_length,
            "backbone": self.backbone,
            "tuned_layers": self.tuned_layers,
            "scheme": self.scheme,
            "synonyms": self.synonyms,
            **(learned if self.transitions else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntityMeta:
        tuned = data.get("tuned_layers")
        return cls(
            entities=tuple(str(name) for name in data["entities"]),
            max_length=int(data["max_length"]),
            backbone=str(data.get("backbone", "")),
            tuned_layers=None if tuned is None else int(tuned),
            scheme=str(data.get("scheme", "first")),
            synonyms={
                str(k): {str(a): str(b) for a, b in v.items()}
                for k, v in (data.get("synonyms") or {}).items()
            },
            task=str(data.get("task", "entity")),
            transitions=_transitions(data.get("transitions")),
        )


def _transitions(raw: Any) -> tuple[tuple[float, ...], ...] | None:
    if raw is None:
        return None
    return tuple(tuple(float(x) for x in row) for row in raw)


def save_tagger(
    model: TokenTaggerModule, tokenizer: Any, meta: EntityMeta, directory: Path
) -> None:
    """Write a model directory in the format described in this module's docstring (the
    model's learned transitions, if any, into `entity.json`)."""
    learned = model.transitions.detach().cpu()
    if bool(learned.any()):
        meta = replace(meta, transitions=tuple(tuple(row) for row in learned.tolist()))
    write_model_directory(
        model, tokenizer, meta.tags, meta.to_dict(), directory, HEAD_FILE, META_FILE
    )


def _not_a_model(directory: Path, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{abbreviate(str(directory), 200)} is not a supportbot entity model directory: "
        f"{what}; pass a version directory written by `supportbot train entity` "
        "(e.g. models/entity/v1)"
    )


def read_entity_meta(directory: Path) -> EntityMeta:
    """Read `entity.json` of a model directory.

    Raises:
        ModelNotFoundError: the directory does not hold a readable `entity.json`.
    """
    path = directory / META_FILE
    try:
        if not path.is_file():
            raise _not_a_model(directory, f"{META_FILE} is missing")
        return EntityMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _not_a_model(
            directory, f"{META_FILE} cannot be read ({abbreviate(str(exc))})"
        ) from exc


def load_tagger(directory: Path, plain: bool = False) -> tuple[TokenTaggerModule, Any, EntityMeta]:
    """Load the module, tokenizer and meta of an entity model directory (CPU, eval mode);
    `plain`: see `read_model_directory`."""
    meta = read_entity_meta(directory)
    model, tokenizer = read_model_directory(
        directory,
        HEAD_FILE,
        lambda encoder: TokenTaggerModule(encoder, len(meta.tags)),
        lambda what: _not_a_model(directory, what),
        plain,
    )
    if meta.transitions is not None:
        learned = torch.tensor(meta.transitions, dtype=torch.float32)
        if learned.shape != model.transitions.shape:
            raise _not_a_model(
                directory,
                f"{META_FILE} has {tuple(learned.shape)} transition scores for "
                f"{len(meta.tags)} tags",
            )
        model.transitions.data.copy_(learned)
    return model, tokenizer, meta


def is_entity_model_dir(path: Path) -> bool:
    """True when `path` holds a saved entity model."""
    return (path / META_FILE).is_file() and (path / HEAD_FILE).is_file()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A batch of texts as word pieces: ids, and per text its pieces' character offsets and
    word numbers (None for special tokens)."""

    input_ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    words: list[list[int | None]]


def encode_with_offsets(tokenizer: Any, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenize (truncating) and keep each piece's offsets and word number.

    Raises:
        ValueError: the tokenizer is not a fast tokenizer (no offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets; entity models need a "
            "fast (Rust) tokenizer: choose a backbone that has one"
        )
    if not texts:
        return Encoded([], [], [])
    batch = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True
    )
    offsets = [[(int(a), int(b)) for a, b in row] for row in batch["offset_mapping"]]
    words = [batch.word_ids(i) for i in range(len(texts))]
    return Encoded(list(batch["input_ids"]), offsets, words)


def word_starts(words: Sequence[int | None]) -> list[int]:
    """Positions of the first piece of each word."""
    out, previous = [], None
    for position, word in enumerate(words):
        if word is not None and word != previous:
            out.append(position)
        previous = word
    return out


def allowed_transitions(tags: Sequence[str]) -> torch.Tensor:
    """(from, to) mask of BIO: `I-x` only after `B-x` or `I-x`; row `len(tags)` is the start."""
    allowed = torch.ones(len(tags) + 1, len(tags), dtype=torch.bool)
    for to, tag in enumerate(tags):
        if tag.startswith("I-"):
            name = tag[2:]
            for source, previous in enumerate(tags):
                allowed[source, to] = previous in (f"B-{name}", f"I-{name}")
            allowed[len(tags), to] = False
    return allowed


@functools.lru_cache(maxsize=16)
def forbidden_moves(tags: tuple[str, ...]) -> torch.Tensor:
    """`allowed_transitions` as scores: 0 where BIO allows the move, -inf where it does not;
    built once per tag set, not per message (read only: callers add to it, never into it)."""
    allowed = allowed_transitions(tags)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def best_tags(
    logits: torch.Tensor,
    words: Sequence[int | None],
    tags: Sequence[str],
    transitions: torch.Tensor | None = None,
) -> list[str]:
    """Per-piece tags read at each word's first piece: the most likely tag sequence over the
    words that is valid BIO (Viterbi with `I-x` allowed only after `B-x`/`I-x`), so a
    multi-word entity comes out as one span of one type instead of fragments; with
    `transitions` (a CRF layer's, see `TokenTaggerModule`) their scores count too."""
    positions = word_starts(words)
    out = [OUTSIDE] * len(words)
    if not positions:
        return out
    scores = torch.log_softmax(logits[positions].float(), dim=-1)
    blocked = forbidden_moves(tuple(tags))
    if transitions is not None:
        blocked = blocked + transitions.float()
    best = scores[0] + blocked[len(tags)]
    back = []
    for row in scores[1:]:
        total = best[:, None] + blocked[: len(tags)]  # (from, to)
        best, source = total.max(dim=0)
        best = best + row
        back.append(source)
    path = [int(best.argmax())]
    for source in reversed(back):
        path.append(int(source[path[-1]]))
    path.reverse()
    for position, tag in zip(positions, path, strict=True):
        out[position] = tags[tag]
    return out


def decode_spans(
    text: str,
    tags: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    words: Sequence[int | None],
) -> list[tuple[str, int, int]]:
    """(entity, start, end) spans from per-piece tags: a word takes its first piece's tag;
    `B-x` starts a span, `I-x` continues one of `x` (or starts one after anything else, as
    conlleval reads it)."""
    word_end: dict[int, int] = {}
    for (_, end), word in zip(offsets, words, strict=True):
        if word is not None:
            word_end[word] = max(word_end.get(word, 0), end)
    spans: list[list[Any]] = []
    current: list[Any] | None = None
    for position in word_starts(words):
        tag, word = tags[position], words[position]
        assert word is not None
        start, end = offsets[position][0], word_end[word]
        if tag == OUTSIDE:
            current = None
            continue
        prefix, _, name = tag.partition("-")
        if prefix == "I" and current is not None and current[0] == name:
            current[2] = end
            continue
        current = [name, start, end]
        spans.append(current)
    out = []
    for name, start, end in spans:
        # Offsets may cover leading/trailing spaces with some tokenizers: trim to the text.
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((str(name), int(start), int(end)))
    return out


def token_logits(
    model: TokenTaggerModule, tokenizer: Any, input_ids: Sequence[Sequence[int]], batch_size: int
) -> list[torch.Tensor]:
    """Per text, the (pieces, tags) logits of `model`'s own forward, batched by length."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    pad = tokenizer.pad_token_id or 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]
            width = len(input_ids[chunk[-1]])
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(input_ids[i])] = torch.tensor(list(input_ids[i]))
                mask[row, : len(input_ids[i])] = 1
            logits = model(ids.to(device), mask.to(device)).float().cpu()
            for row, i in enumerate(chunk):
                out[i] = logits[row, : len(input_ids[i])]
    model.train(was_training)
    return out


class TokenTagger:
    """Inference over a saved entity model: entity spans per text.

    Args:
        directory: a model version directory.
        batch_size: texts per forward pass.
    """

    def __init__(self, directory: Path, batch_size: int = 16) -> None:
        self.directory = directory
        self.model, self.tokenizer, self.meta = load_tagger(directory, plain=True)
        self.batch_size = batch_size
        self._tags = self.meta.tags
        self._transitions = (
            None if self.meta.transitions is None else self.model.transitions.detach().clone()
        )

    @property
    def entities(self) -> tuple[str, ...]:
        return self.meta.entities

    def token_logits(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Per text, the (pieces, tags) logits of the model's own forward."""
        encoded = encode_with_offsets(self.tokenizer, texts, self.meta.max_length)
        return token_logits(self.model, self.tokenizer, encoded.input_ids, self.batch_size)

    def head_logits(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per text, tag logits from last hidden states computed elsewhere (a shared forward)."""
        with torch.inference_mode():
            return [self.model.head(s).float() for s in states]

    def spans(self, texts: Sequence[str]) -> list[list[Entity]]:
        """The learned entities of each text, in text order."""
        return self.decode(texts, self.token_logits(texts), self.meta.max_length)

    def decode(
        self, texts: Sequence[str], logits: Sequence[torch.Tensor], max_length: int
    ) -> list[list[Entity]]:
        """Entities from per-text tag logits of texts tokenized at `max_length`."""
        encoded = encode_with_offsets(self.tokenizer, texts, max_length)
        out = []
        for i, text in enumerate(texts):
            if len(logits[i]) != len(encoded.offsets[i]):
                raise ValueError(
                    f"{len(logits[i])} token states for {len(encoded.offsets[i])} word pieces: "
                    "the states come from another tokenizer or max length"
                )
            tags = best_tags(logits[i], encoded.words[i], self._tags, self._transitions)
            found = decode_spans(text, tags, encoded.offsets[i], encoded.words[i])
            out.append([self._entity(text, name, start, end) for name, start, end in found])
        return out

    def _entity(self, text: str, name: str, start: int, end: int) -> Entity:
        written = text[start:end]
        key = " ".join(written.casefold().split())
        value = self.meta.synonyms.get(name, {}).get(key, written)
        return Entity(name, value, written, start, end)

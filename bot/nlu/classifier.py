"""The text classifier artifact: a transformer encoder, mean pooling and a linear head.

This module owns the on-disk format that `training/` writes and the runtime loads. A model
directory holds:

- a Hugging Face encoder directory (`config.json`, `model.safetensors`, tokenizer files), so
  `AutoModel.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)` load it; the
  config carries `id2label` / `label2id`;
- `classifier_head.safetensors`: the linear head on top of the mean-pooled token states;
- `classifier.json`: labels, pooling, max length, calibrated temperature and abstain threshold.

Mean pooling (not BERT's [CLS] pooler) is used because sentence encoders such as
all-MiniLM-L6-v2 were trained with it; a [CLS] head throws that training away.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bot.core.datafiles import abbreviate
from bot.core.errors import ModelNotFoundError
from bot.nlu.artifacts import (  # noqa: F401  (re-exported for callers of the artifact API)
    BUNDLED_BACKBONE_NAMES,
    DEFAULT_BACKBONE,
    quiet_transformers,
    resolve_backbone,
)

HEAD_FILE = "classifier_head.safetensors"
META_FILE = "classifier.json"


# The module a model directory is read into (a classifier or the entity tagger).
M = TypeVar("M", bound=nn.Module)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states that the attention mask marks as real tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


class MeanPoolingClassifier(nn.Module):
    """Encoder + mean pooling + dropout + linear head; returns logits."""

    def __init__(self, encoder: Any, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        # A transformers PreTrainedModel (or a peft wrapper of one while training).
        self.encoder: Any = encoder
        hidden_size = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embeddings, before the head."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(input_ids, attention_mask)))


def length_chunks(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Tokenize once, sort by length and yield (positions in `texts`, input ids, attention
    mask) per chunk of similar length, so one long message does not make a whole batch pay
    for its padding."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(ids[chunk[-1]])
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        yield chunk, input_ids, mask


@dataclass(frozen=True, slots=True)
class ClassifierMeta:
    """What `classifier.json` records next to the weights."""

    task: str
    labels: tuple[str, ...]
    max_length: int
    temperature: float = 1.0
    abstain_threshold: float = 0.0
    pooling: str = "mean"
    backbone: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "pooling": self.pooling,
            "backbone": self.backbone,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierMeta:
        return cls(
            task=str(data["task"]),
            labels=tuple(str(label) for label in data["labels"]),
            max_length=int(data["max_length"]),
            temperature=float(data.get("temperature", 1.0)),
            abstain_threshold=float(data.get("abstain_threshold", 0.0)),
            pooling=str(data.get("pooling", "mean")),
            backbone=str(data.get("backbone", "")),
        )


@dataclass(frozen=True, slots=True)
class Prediction:
    """One classified text: the best label, its calibrated probability and the runner-ups."""

    label: str
    confidence: float
    abstained: bool
    top: tuple[tuple[str, float], ...]


def save_classifier(
    model: MeanPoolingClassifier, tokenizer: Any, meta: ClassifierMeta, directory: Path
) -> None:
    """Write a model directory in the format described in this module's docstring."""
    write_model_directory(
        model, tokenizer, meta.labels, meta.to_dict(), directory, HEAD_FILE, META_FILE
    )


def write_model_directory(
    model: nn.Module,
    tokenizer: Any,
    labels: Sequence[str],
    meta: dict[str, Any],
    directory: Path,
    head_file: str,
    meta_file: str,
) -> None:
    """The encoder directory (with `labels` as the config's `id2label`), the tokenizer,
    `model.head`'s weights in `head_file` and `meta` as JSON in `meta_file`: the layout of
    the classifiers and of the entity tagger (bot/nlu/entity_model.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    encoder: Any = model.encoder
    config: Any = encoder.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    head_module: Any = model.head
    head = {k: v.detach().cpu().contiguous() for k, v in head_module.state_dict().items()}
    save_file(head, str(directory / head_file))
    (directory / meta_file).write_text(json.dumps(meta, indent=2) + "\n")


def _not_a_model(directory: Path, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{abbreviate(str(directory), 200)} is not a supportbot model directory: {what}; "
        "pass a version directory written by `supportbot train` (e.g. models/intent/v1)"
    )


def read_meta(directory: Path) -> ClassifierMeta:
    """Read `classifier.json` of a model directory.

    Raises:
        ModelNotFoundError: the directory does not hold a readable `classifier.json`.
    """
    path = directory / META_FILE
    try:
        if not path.is_file():
            raise _not_a_model(directory, f"{META_FILE} is missing")
        return ClassifierMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # ValueError covers invalid JSON and UTF-8; KeyError/TypeError a JSON of another shape.
        raise _not_a_model(
            directory, f"{META_FILE} cannot be read ({abbreviate(str(exc))})"
        ) from exc


def load_model(
    directory: Path, plain: bool = False
) -> tuple[MeanPoolingClassifier, Any, ClassifierMeta]:
    """Load the module, tokenizer and meta of a model directory (CPU, eval mode); `plain`:
    see `read_model_directory`."""

    meta = read_meta(directory)
    model, tokenizer = read_model_directory(
        directory,
        HEAD_FILE,
        lambda encoder: MeanPoolingClassifier(encoder, len(meta.labels)),
        lambda what: _not_a_model(directory, what),
        plain,
    )
    return model, tokenizer, meta


def read_model_directory(
    directory: Path,
    head_file: str,
    build: Callable[[Any], M],
    not_a_model: Callable[[str], Exception],
    plain: bool = False,
) -> tuple[M, Any]:
    """The module `build` makes of the directory's encoder, with `head_file`'s weights in
    its `head`, and the tokenizer (CPU, eval mode): the counterpart of
    `write_model_directory`, for the classifiers and the entity tagger.

    `plain` (inference only): a BERT encoder runs on plain torch (`bot/nlu/plain_bert.py`),
    without importing transformers' model code; anything else loads with transformers.
    """
    missing = [name for name in (head_file, "config.json") if not (directory / name).is_file()]
    if missing:
        raise not_a_model(f"{', '.join(missing)} missing")
    loaded = None
    if plain:
        from bot.nlu.plain_bert import load_plain

        loaded = load_plain(directory)
    if loaded is not None:
        model = build(loaded[0])
        tokenizer: Any = loaded[1]
    else:
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        model = build(AutoModel.from_pretrained(str(directory)))
    head: Any = model.head
    head.load_state_dict(load_file(str(directory / head_file)))
    model.eval()
    return model, tokenizer


class TransformerClassifier:
    """Inference over a saved model: calibrated probabilities and abstention.

    Args:
        directory: a model version directory.
        batch_size: texts per forward pass in `predict_proba`.
    """

    def __init__(self, directory: Path, batch_size: int = 16) -> None:
        self.directory = directory
        self.model, self.tokenizer, self.meta = load_model(directory, plain=True)
        self.batch_size = batch_size

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw (uncalibrated) logits, shape (len(texts), num_labels), in input order.

        Texts are tokenized once, sorted by length and run in chunks of similar length, so a
        long message does not make a whole batch pay for its padding.
        """
        if not texts:
            return torch.empty(0, len(self.labels))
        out = torch.empty(len(texts), len(self.labels))
        with torch.inference_mode():
            for chunk, input_ids, mask in length_chunks(
                self.tokenizer, texts, self.meta.max_length, self.batch_size
            ):
                out[chunk] = self.model(input_ids, mask).float()
        return out

    def pooled_and_logits(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-pooled encoder states and raw logits from one forward, in input order."""
        hidden = int(self.model.head.in_features)
        pooled = torch.empty(len(texts), hidden)
        if not texts:
            return pooled, torch.empty(0, len(self.labels))
        with torch.inference_mode():
            for chunk, input_ids, mask in length_chunks(
                self.tokenizer, texts, self.meta.max_length, self.batch_size
            ):
                pooled[chunk] = self.model.embed(input_ids, mask).float()
        return pooled, self.head_logits(pooled)

    def head_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from mean-pooled encoder states computed elsewhere (a shared forward)."""
        with torch.inference_mode():
            return self.model.head(pooled).float()

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: the temperature-scaled softmax of `logits`."""
        return torch.softmax(logits / self.meta.temperature, dim=-1)

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """Calibrated probabilities (temperature-scaled softmax)."""
        return self.calibrated(self.logits(texts))

    def predict(self, texts: Sequence[str], top_k: int = 3) -> list[Prediction]:
        """Classify texts; a prediction below the stored threshold is marked abstained."""
        return self.predictions(self.predict_proba(texts), top_k)

    def predictions(self, probs: torch.Tensor, top_k: int = 3) -> list[Prediction]:
        """One `Prediction` per row of calibrated probabilities."""
        k = min(top_k, len(self.labels))
        out = []
        for row in probs:
            values, indices = row.topk(k)
            top = tuple(
                (self.labels[int(i)], float(v)) for v, i in zip(values, indices, strict=True)
            )
            confidence = top[0][1]
            out.append(
                Prediction(
                    label=top[0][0],
                    confidence=confidence,
                    abstained=confidence < self.meta.abstain_threshold,
                    top=top,
                )
            )
        return out


def is_model_dir(path: Path) -> bool:
    """True when `path` holds a saved classifier."""
    return (path / META_FILE).is_file() and (path / HEAD_FILE).is_file()

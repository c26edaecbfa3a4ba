"""BERT-family encoders served on plain torch and the `tokenizers` library.

Loading any model through transformers imports `transformers.modeling_utils`, and with it
sympy (through `torch.distributed.tensor`), scipy (through transformers' detection losses),
accelerate and `torch._dynamo`: about 100 MB of every serving replica's memory for code a
forward pass never runs (measured, issue 19). The bundled all-MiniLM-L6-v2 and every model
trained from it are plain BERT encoders, so serving runs them here instead: the same
weights (read from `model.safetensors`), the same arithmetic (embeddings, then per layer
scaled-dot-product attention and a GELU feed-forward block, each with a residual and a
LayerNorm), the same tokenizer (`tokenizer.json` with the truncation and padding transformers
sets per call), checked against transformers on probe texts in the tests.

Anything else, another architecture or a BERT variant this does not cover (relative
positions, another activation, a decoder, a tokenizer whose settings transformers would
rewrite), returns None from `load_plain` and is loaded with transformers as before. Training
always uses transformers (dropout, peft, gradient checkpointing).

The module layout and parameter names are transformers' `BertModel`'s (`embeddings`,
`encoder.layer[i].attention.self.query`, ...), so a state dict moves between the two, and
the shared forward (`bot/nlu/shared_encoder.py`) finds the layers the same way.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

#: The config values this implementation computes exactly as transformers' BertModel does.
_REQUIRED = {
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "chunk_size_feed_forward": 0,
}
_IGNORED_WEIGHTS = ("pooler.", "embeddings.position_ids")


@dataclass(frozen=True)
class PlainConfig:
    """The few config values the forward needs (plus what callers read: `hidden_size`)."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def read(cls, directory: Path) -> PlainConfig | None:
        """The config of a plain BERT encoder at `directory`, or None for anything else."""
        try:
            raw = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        if raw.get("model_type") != "bert":
            return None
        if any(raw.get(key, value) != value for key, value in _REQUIRED.items()):
            return None
        try:
            config = cls(
                hidden_size=int(raw["hidden_size"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                vocab_size=int(raw["vocab_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if config.hidden_size % config.num_attention_heads:
            return None
        return config


class PlainOutput(NamedTuple):
    """What the encoder returns: `out.last_hidden_state` or `out[0]`, as transformers'."""

    last_hidden_state: torch.Tensor


def _table(rows: int, width: int) -> nn.Embedding:
    # Uninitialised: the weights always come from a file. (A random initialisation on the
    # meta device `PlainBert.load` builds on would import torch._dynamo and sympy.)
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width))


class PlainEmbeddings(nn.Module):
    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.word_embeddings = _table(config.vocab_size, config.hidden_size)
        self.position_embeddings = _table(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = _table(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        embedded = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(embedded)


class _SelfAttention(nn.Module):
    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)


class _Output(nn.Module):
    def __init__(self, width_in: int, config: PlainConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _Output(config.hidden_size, config)


class _Intermediate(nn.Module):
    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class PlainLayer(nn.Module):
    """One BERT layer. `mask`: boolean, (batch, 1, 1, tokens), True where a token is real
    (`attention_mask_for`), or None when nothing is padding."""

    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Output(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attention = self.attention.self
        batch, length, width = hidden.shape
        heads = attention.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, heads, width // heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(attention.query(hidden)),
            split(attention.key(hidden)),
            split(attention.value(hidden)),
            attn_mask=mask,
        )
        context = context.transpose(1, 2).reshape(batch, length, width)
        out = self.attention.output
        attended = out.LayerNorm(out.dense(context) + hidden)
        expanded = F.gelu(self.intermediate.dense(attended))
        return self.output.LayerNorm(self.output.dense(expanded) + attended)


class _Encoder(nn.Module):
    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(PlainLayer(config) for _ in range(config.num_hidden_layers))


def attention_mask_for(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The layers' mask for a (batch, tokens) 0/1 attention mask: None without padding."""
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class PlainBert(nn.Module):
    """A BERT encoder's forward (inference): `PlainBert.load(directory)`."""

    def __init__(self, config: PlainConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = PlainEmbeddings(config)
        self.encoder = _Encoder(config)
        self.pooler: nn.Module | None = None  # mean pooling never reads BERT's pooler

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PlainOutput:
        hidden = self.embeddings(input_ids=input_ids)
        mask = attention_mask_for(attention_mask)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return PlainOutput(hidden)

    @classmethod
    def load(cls, directory: Path) -> PlainBert | None:
        """The encoder at `directory` (config.json + model.safetensors), or None when it is
        not a plain BERT encoder or its weights do not fit exactly.

        Its parameters come from `SHARED_WEIGHTS`: a tensor equal to one an encoder loaded
        earlier in this process holds (the backbone's embeddings and untuned layers, which
        every model trained from it has) is that encoder's parameter, not a copy. The
        module is built without allocating weights of its own, so loading a model set holds
        each shared tensor once from the start instead of once per model until the shared
        forward releases the copies (the peak while starting, issue 19).
        """
        config = PlainConfig.read(directory)
        weights = directory / "model.safetensors"
        if config is None or not weights.is_file():
            return None
        with torch.device("meta"):
            model = cls(config)
        expected = {name: p.shape for name, p in model.named_parameters()}
        state: dict[str, torch.Tensor] = {}
        with safe_open(str(weights), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                name = key.removeprefix("bert.")
                if name in expected:
                    state[name] = handle.get_tensor(key)
                elif not name.startswith(_IGNORED_WEIGHTS):
                    return None  # weights this forward would not use: not a plain encoder
        if set(state) != set(expected):
            return None
        if any(state[name].shape != shape for name, shape in expected.items()):
            return None
        model.load_state_dict(
            {name: SHARED_WEIGHTS.parameter(name, tensor) for name, tensor in state.items()},
            assign=True,
        )
        return model.requires_grad_(False).eval()


class SharedWeights:
    """Parameters of the encoders loaded in this process, each distinct tensor held once.

    `parameter(name, tensor)` returns a parameter an earlier encoder holds under the same
    name when its values are equal (compared in full, never assumed from file names or
    metadata), else a new one. Held weakly: a model that is unloaded (a retired version)
    takes its own weights with it. Inference only: the parameters need no gradient, and
    nothing may change one in place (every encoder holding it would change).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, tuple[int, ...], torch.dtype], list[weakref.ref[Any]]] = {}

    def parameter(self, name: str, tensor: torch.Tensor) -> nn.Parameter:
        key = (name, tuple(tensor.shape), tensor.dtype)
        with self._lock:
            alive = [held for ref in self._held.get(key, ()) if (held := ref()) is not None]
            found = next((held for held in alive if torch.equal(held, tensor)), None)
            if found is None:
                found = nn.Parameter(tensor, requires_grad=False)
                alive.append(found)
            self._held[key] = [weakref.ref(held) for held in alive]
            return found

    def __len__(self) -> int:
        """How many distinct parameters are held (by encoders still loaded)."""
        with self._lock:
            return sum(1 for refs in self._held.values() for ref in refs if ref() is not None)


SHARED_WEIGHTS = SharedWeights()


class _Batch(dict[str, Any]):
    """What the tokenizer returns: `batch["input_ids"]`, `batch["offset_mapping"]`,
    `batch.word_ids(i)`, as transformers' BatchEncoding."""

    def __init__(self, encodings: list[Any], offsets: bool) -> None:
        super().__init__(input_ids=[e.ids for e in encodings])
        if offsets:
            self["offset_mapping"] = [e.offsets for e in encodings]
        self._encodings = encodings

    def word_ids(self, index: int) -> list[int | None]:
        return list(self._encodings[index].word_ids)


class PlainTokenizer:
    """A fast tokenizer read from `tokenizer.json`, called as transformers' is in serving:
    `tokenizer(texts, truncation=True, max_length=N[, return_offsets_mapping=True])`."""

    is_fast = True

    def __init__(self, tokenizer: Any, pad_token_id: int) -> None:
        self._tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        # transformers clears the file's own padding and truncation and sets them per call.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._max_length: int | None = None
        # Truncation is the tokenizer's state: callers with other lengths (the shared forward,
        # a model's own) must not interleave between setting it and encoding.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path) -> PlainTokenizer | None:
        """The tokenizer at `directory`, or None when transformers would load it otherwise
        (no tokenizer.json, or settings it would rewrite the file's normalizer with)."""
        from tokenizers import Tokenizer

        try:
            settings = json.loads((directory / "tokenizer_config.json").read_text())
            raw = json.loads((directory / "tokenizer.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(settings, dict) or not isinstance(raw, dict):
            return None
        if settings.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
            return None
        normalizer = raw.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer" or (
            normalizer.get("lowercase") != settings.get("do_lower_case", True)
            or normalizer.get("strip_accents") != settings.get("strip_accents")
            or normalizer.get("handle_chinese_chars")
            != settings.get("tokenize_chinese_chars", True)
        ):
            return None  # BertTokenizerFast would rebuild the normalizer from the settings
        if settings.get("truncation_side", "right") != "right":
            return None
        pad = settings.get("pad_token", "[PAD]")
        if isinstance(pad, dict):
            pad = pad.get("content")
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        pad_id = tokenizer.token_to_id(str(pad))
        if pad_id is None:
            return None
        return cls(tokenizer, int(pad_id))

    def __call__(
        self,
        texts: list[str],
        truncation: bool = True,
        max_length: int | None = None,
        return_offsets_mapping: bool = False,
    ) -> _Batch:
        limit = max_length if truncation else None
        with self._lock:
            if limit != self._max_length:
                if limit is None:
                    self._tokenizer.no_truncation()
                else:
                    self._tokenizer.enable_truncation(limit)
                self._max_length = limit
            encodings = self._tokenizer.encode_batch(list(texts))
        return _Batch(encodings, return_offsets_mapping)


def load_plain(directory: Path) -> tuple[PlainBert, PlainTokenizer] | None:
    """The encoder and tokenizer at `directory` on plain torch, or None (use transformers)."""
    tokenizer = PlainTokenizer.load(directory)
    if tokenizer is None:
        return None
    encoder = PlainBert.load(directory)
    if encoder is None:
        return None
    return encoder, tokenizer

"""Sentence embeddings: the encoder that turns texts into unit-length float32 vectors
(`SentenceEmbedder`, loaded on first use), the `Vectors` type and the embedding callables an
answer index accepts in its place.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bot.nlu.artifacts import DEFAULT_BACKBONE, quiet_transformers, resolve_backbone

Vectors = npt.NDArray[np.float32]
#: Embeds texts: one row per text, float32, shape (len(texts), dimension).
Embed = Callable[[Sequence[str]], Vectors]
#: Embeds one query text off the event loop (e.g. a micro-batcher's `submit`).
AsyncEmbed = Callable[[str], Awaitable[Vectors]]


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
                path = resolve_backbone(self.model)
                self._encoder = MeanPoolingEncoder.load_if_plain(path)
                if self._encoder is None:
                    from sentence_transformers import SentenceTransformer

                    quiet_transformers()
                    self._encoder = SentenceTransformer(path, device="cpu")
            return self._encoder

    def shareable(self) -> tuple[Any, Any, int] | None:
        """(transformers encoder, tokenizer, max tokens) when this model is exactly a
        transformer with mean pooling (and normalization), so that its forward can be shared
        with the classifiers (bot/nlu/shared_encoder.py); None for any other pipeline."""
        loaded = self._load()
        if isinstance(loaded, MeanPoolingEncoder):
            return loaded.encoder, loaded.tokenizer, loaded.max_length
        modules = list(loaded)
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
        if isinstance(encoder, MeanPoolingEncoder):
            return encoder.encode(texts, self.batch_size)
        vectors = encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


# The sentence-transformers modules `MeanPoolingEncoder` stands in for, in this order.
PLAIN_MODULES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)


class MeanPoolingEncoder:
    """A sentence-transformers model that is a transformer, mean pooling and normalization
    (the bundled all-MiniLM-L6-v2 and most of its kind), run with transformers alone.

    It computes what `SentenceTransformer.encode` computes for such a model (same tokenizer,
    truncation, pooling and normalization; the same vectors within float noise, tested)
    without importing sentence-transformers, which pulls scipy, scikit-learn, pandas and
    datasets into the process: about 300 MB of every serving replica's memory (measured,
    issue 19). Any other pipeline (another pooling, a dense layer, lower-casing, a model
    given by hub name) is loaded with sentence-transformers as before.
    """

    def __init__(self, encoder: Any, tokenizer: Any, max_length: int) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load_if_plain(cls, path: str) -> MeanPoolingEncoder | None:
        """The model at local directory `path` when it is exactly that pipeline, else None."""
        root = Path(path)
        try:
            modules = json.loads((root / "modules.json").read_text())
            config = json.loads((root / "sentence_bert_config.json").read_text())
            types = tuple(str(m["type"]) for m in modules)
            if types != PLAIN_MODULES or modules[0]["path"] != "":
                return None
            pooling = json.loads((root / str(modules[1]["path"]) / "config.json").read_text())
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
        mean_only = modes == {"pooling_mode_mean_tokens"} and pooling.get(
            "pooling_mode", "mean"
        ) in ("mean", None)
        if not mean_only or config.get("do_lower_case"):
            return None
        from bot.nlu.plain_bert import load_plain

        max_length = int(config.get("max_seq_length") or 512)
        loaded = load_plain(root)  # a BERT encoder runs without transformers' model code
        if loaded is not None:
            return cls(loaded[0], loaded[1], max_length)
        from transformers import AutoModel, AutoTokenizer

        encoder = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(encoder, tokenizer, max_length)

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        """Unit-length float32 embeddings, one row per text, in input order."""
        import torch

        from bot.nlu.classifier import length_chunks, mean_pool

        out = np.zeros((len(texts), self.encoder.config.hidden_size), dtype=np.float32)
        if not texts:
            return out
        with torch.inference_mode():
            for chunk, input_ids, mask in length_chunks(
                self.tokenizer, texts, self.max_length, batch_size
            ):
                hidden = self.encoder(input_ids=input_ids, attention_mask=mask)[0]
                pooled = torch.nn.functional.normalize(mean_pool(hidden, mask), p=2, dim=1)
                out[chunk] = pooled.float().numpy()
        return out


def normalized_rows(matrix: npt.NDArray[Any]) -> Vectors:
    """`matrix` as float32 with each row scaled to unit length; zero rows stay zero."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0)):
        # Already unit length (encoders normalize, saved indexes are): dividing again would
        # nudge the last bits, and a loaded index must score exactly like the one saved.
        return rows
    # A zero row (an empty text from some encoders) stays zero instead of becoming NaN.
    return cast(Vectors, rows / np.where(norms == 0, 1.0, norms))

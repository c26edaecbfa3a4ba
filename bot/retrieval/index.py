"""The answer index: question -> answer pairs with their question embeddings, searched by
exact cosine similarity (`EmbeddingAnswerIndex`), its directory format (`index.json`,
`embeddings.npy`, `pairs.jsonl`, fingerprinted; `curation.json`, the curation report of the
build, with the answers it excluded) and the served index that swaps in a rebuilt
directory without a restart (`ReloadingAnswerIndex`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.core.background import cancel_and_wait
from bot.core.datafiles import normalize
from bot.core.entities import OPTIONAL_SLOTS, fill
from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    ModelNotFoundError,
    SupportbotError,
)
from bot.core.library import ExcludedAnswer
from bot.core.records import Answer
from bot.nlu.artifacts import DEFAULT_BACKBONE
from bot.retrieval.curation import excluded_from_dict, named_words
from bot.retrieval.embedder import AsyncEmbed, Embed, SentenceEmbedder, Vectors, normalized_rows
from bot.retrieval.sources import AnswerPair

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
PAIRS_FILE = "pairs.jsonl"
CURATION_FILE = "curation.json"
FORMAT_VERSION = 1


class AnswerIndexError(SupportbotError):
    """An answer index is inconsistent, or asked to do something it cannot."""


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
            "`supportbot index build --data data/ --index DIR`"
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
        curation: the build's curation report (`CurationReport.to_dict`), saved with the
            index; its excluded answers are `excluded`.

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
        curation: Mapping[str, Any] | None = None,
    ) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(pairs):
            raise AnswerIndexError(
                f"expected one embedding row per pair ({len(pairs)} rows), found shape "
                f"{embeddings.shape}; rebuild the index with `supportbot index build`"
            )
        self.pairs: tuple[AnswerPair, ...] = tuple(pairs)
        self.model = model
        self.built_at = built_at or datetime.now(UTC).isoformat(timespec="seconds")
        self.curation = None if curation is None else dict(curation)
        # The answers curation kept out, the most frequent first (the console lists them).
        self.excluded: tuple[ExcludedAnswer, ...] = (
            () if curation is None else excluded_from_dict(curation)
        )
        self._embeddings = normalized_rows(embeddings)
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
        self._rows_without_intent = np.asarray(
            [row for row, pair in enumerate(self.pairs) if pair.intent is None], dtype=np.int64
        )
        self._answer_group = np.asarray(groups, dtype=np.int64)
        # Templates by the slots they need: a query lacking one of them skips those rows.
        needs: dict[frozenset[str], list[int]] = {}
        for row, pair in enumerate(self.pairs):
            required = frozenset(pair.slots) - OPTIONAL_SLOTS
            if required:
                needs.setdefault(required, []).append(row)
        self._rows_needing = {k: np.asarray(v, dtype=np.int64) for k, v in needs.items()}
        # Answers that repeat words of their own question (a place, a product): by word.
        echoing: dict[str, list[int]] = {}
        for row, pair in enumerate(self.pairs):
            for word in pair.echoes:
                echoing.setdefault(word, []).append(row)
        self._rows_echoing = {k: np.asarray(v, dtype=np.int64) for k, v in echoing.items()}

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
        curation: Mapping[str, Any] | None = None,
    ) -> EmbeddingAnswerIndex:
        """Embed the questions of `pairs`.

        Args:
            pairs: e.g. from `build_answer_pairs`.
            model: the sentence encoder (`bundled`, a Hugging Face name or a path).
            embed: use this instead of loading `model` (it must be the same model for `save`
                to record the truth).
            embed_async, curation: see the class docstring.

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
        return cls(pairs, vectors, embed, model=model, embed_async=embed_async, curation=curation)

    def save(self, directory: Path) -> Path:
        """Write `embeddings.npy`, `pairs.jsonl`, `index.json` and (when the index has a
        curation report) `curation.json` to `directory`.

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
                "another --index or remove it"
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
            if self.curation is not None:
                (staging / CURATION_FILE).write_text(
                    json.dumps(self.curation, ensure_ascii=False, indent=1) + "\n",
                    encoding="utf-8",
                )
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
                "`supportbot index build --data data/ --index DIR`"
            )
        meta = json.loads(meta_path.read_text())
        fix = f"; rebuild it with `supportbot index build --index {directory}`"
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
            curation=read_curation(directory),
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
        slots: Mapping[str, str] | None = None,
    ) -> list[Answer]:
        """The best answers for `text`, best first, each with its cosine similarity.

        The query is embedded off the event loop: by `embed_async` when given, otherwise in a
        worker thread (`asyncio.to_thread`) together with the search.

        Args:
            text: the customer's message; blank text finds nothing.
            k: at most this many answers.
            intent: the question's intent, when the classifier is confident: only pairs of
                this intent and pairs without one (an unlabelled FAQ entry) are searched, so an
                answer written for another intent is never returned.
            embedding: `text` already embedded with this index's encoder (the runtime's
                shared forward makes it together with intent and sentiment); then it is not
                embedded again.
            slots: what the conversation told the bot (`order_id` -> `BC-204719`, `name`);
                answers needing a slot not given are not returned, the others are filled in.

        Raises:
            BadRequestError: `k` is below 1.
        """
        _check_k(k)
        if not text.strip():
            return []
        if embedding is not None:
            return self.search_embedding(embedding, k, intent, slots, text)
        if self._embed_async is not None:
            vector = await self._embed_async(text)
            return self.search_embedding(vector, k, intent, slots, text)
        return await asyncio.to_thread(self._embed_and_search, text, k, intent, slots)

    def _embed_and_search(
        self, text: str, k: int, intent: str | None, slots: Mapping[str, str] | None
    ) -> list[Answer]:
        return self.search_embedding(self._embed([text])[0], k, intent, slots, text)

    def search_embedding(
        self,
        vector: npt.NDArray[Any],
        k: int = 3,
        intent: str | None = None,
        slots: Mapping[str, str] | None = None,
        text: str = "",
    ) -> list[Answer]:
        """Exact cosine search for an already embedded query (normalized here).

        Args:
            vector: shape (dimension,) or (1, dimension).
            k: at most this many answers, distinct answer texts.
            intent: search only pairs of this intent and pairs without an intent; None:
                search all.
            slots: see `search`; None or empty: no template that needs a slot is returned.
            text: the query's text: an answer that repeats words of the question it was
                written for (`AnswerPair.echoes`, "we can't ship to Switzerland") is returned
                only when `text` names each of them; empty: never.

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
        rows = self._rows_for(intent)
        rows = self._fillable(rows, slots or {})
        rows = self._named(rows, text)
        candidates = scores if rows is None else scores[rows]
        answers = []
        for position in self._best(candidates, rows, k):
            row = int(position if rows is None else rows[position])
            pair = self.pairs[row]
            score = float(np.clip(scores[row], -1.0, 1.0))
            said = fill(pair.answer, slots or {}) if pair.slots else pair.answer
            if said is not None:
                answers.append(Answer(said, score, pair.source, pair.question))
        return answers

    def _rows_for(self, intent: str | None) -> npt.NDArray[np.int64] | None:
        """The rows an answer for `intent` may come from (None: all)."""
        if intent is None:
            return None
        own = self._rows_by_intent.get(intent)
        if own is None:
            return self._rows_without_intent
        return np.sort(np.concatenate([own, self._rows_without_intent]))

    def _fillable(
        self, rows: npt.NDArray[np.int64] | None, slots: Mapping[str, str]
    ) -> npt.NDArray[np.int64] | None:
        """`rows` (None: all) without the templates needing a slot that `slots` lacks."""
        blocked = [r for need, r in self._rows_needing.items() if not need <= slots.keys()]
        return self._without(rows, blocked)

    def _named(self, rows: npt.NDArray[np.int64] | None, text: str) -> npt.NDArray[np.int64] | None:
        """`rows` (None: all) without the answers repeating a word `text` does not name."""
        if not self._rows_echoing:
            return rows
        named = named_words(text, self._rows_echoing)
        blocked = [r for word, r in self._rows_echoing.items() if word not in named]
        return self._without(rows, blocked)

    def _without(
        self, rows: npt.NDArray[np.int64] | None, blocked: list[npt.NDArray[np.int64]]
    ) -> npt.NDArray[np.int64] | None:
        if not blocked:
            return rows
        keep = np.ones(len(self.pairs), dtype=bool)
        keep[np.concatenate(blocked)] = False
        if rows is not None:
            return rows[keep[rows]]
        return np.flatnonzero(keep).astype(np.int64)

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


def read_curation(directory: Path) -> dict[str, Any] | None:
    """The curation report saved with the index at `directory` (None: there is none, e.g. an
    index built before reports were saved; a broken one is logged and ignored, as it only
    feeds the console's list of excluded answers)."""
    path = directory / CURATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        excluded_from_dict(data)
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable, no excluded answers are listed: %s", path, exc)
        return None
    return dict(data)


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
        slots: Mapping[str, str] | None = None,
    ) -> list[Answer]:
        """See `EmbeddingAnswerIndex.search`."""
        return await self.current.search(text, k, intent, embedding, slots)

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

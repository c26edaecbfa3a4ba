"""Understanding messages: the live intent, sentiment and (when trained) entity models,
micro-batched, hot-reloaded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from bot.core.background import cancel_and_wait
from bot.core.bus import EventBus
from bot.core.errors import ModelNotFoundError
from bot.core.records import Scored, Understanding
from bot.infra.batching import MicroBatcher
from bot.nlu.artifacts import TASKS, read_live_versions
from bot.nlu.classifier import TransformerClassifier
from bot.nlu.entity_model import TokenTagger
from bot.nlu.oos import SENTENCE_PROBES, OosDetector
from bot.nlu.shared_encoder import (
    PROBE_TEXTS,
    Branch,
    SharedEncoder,
    common_depth,
    transformer_layers,
)

log = logging.getLogger(__name__)

MODELS_TOPIC = "models"
#: The optional live model: served when the registry has one, never required.
ENTITY_TASK = "entity"
SERVED_TASKS = (*TASKS, ENTITY_TASK)


def quantize(classifier: TransformerClassifier | TokenTagger) -> None:
    """int8 dynamic quantization of the linear layers: about 2x faster on CPU, same answers
    on all but borderline inputs (measured in benchmarks/inference_benchmark.py)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier.model = quantize_dynamic(classifier.model, {nn.Linear}, dtype=torch.qint8)


class QueryEncoder(Protocol):
    """The answer index's encoder, as far as sharing its forward needs it (SentenceEmbedder)."""

    def __call__(self, texts: Sequence[str]) -> Any: ...

    def shareable(self) -> tuple[Any, Any, int] | None: ...


@dataclass(frozen=True)
class ModelSet:
    """The intent and sentiment classifiers (and the entity model, when the registry has
    a live one) of one registry state.

    `shared` is set when the models (and the answer index's encoder, when given) have
    their embeddings and lower layers in common: then one forward serves all of them and
    every `Understanding` carries the message's query embedding for the answer index.
    """

    intent: TransformerClassifier
    sentiment: TransformerClassifier
    versions: dict[str, str]
    shared: SharedEncoder | None = None
    oos: OosDetector | None = None
    entity: TokenTagger | None = None

    @classmethod
    def load(
        cls, models_dir: Path, quantized: bool, query_encoder: QueryEncoder | None = None
    ) -> ModelSet:
        live = read_live_versions(models_dir)
        missing = [task for task in TASKS if task not in live]
        if missing:
            raise ModelNotFoundError(
                f"no live {' or '.join(missing)} model in {models_dir}; train with "
                f"`supportbot train {missing[0]} --data data/ --models {models_dir}`"
            )
        intent = TransformerClassifier(models_dir / "intent" / live["intent"])
        oos = OosDetector.load_if_present(intent.directory)
        if oos is None:
            log.warning(
                "intent %s has no out-of-scope detector (trained by an older supportbot or "
                "with --oos-method none): it only abstains below its confidence threshold; "
                "train it again to decline out-of-scope messages",
                live["intent"],
            )
        sentiment = TransformerClassifier(models_dir / "sentiment" / live["sentiment"])
        entity = None
        if ENTITY_TASK in live:
            entity = TokenTagger(models_dir / ENTITY_TASK / live[ENTITY_TASK])
        versions = {task: live[task] for task in SERVED_TASKS if task in live}
        shared = share_forward(intent, sentiment, query_encoder, entity)
        if oos is not None and oos.needs_sentences:
            # `sentence-knn` scores the answer index's query embedding, which only the shared
            # forward gives with no second pass; it must come from the encoder the detector
            # was fitted with, else the detector's fallback is served.
            probe = None
            if shared is not None and "query" in shared.names and query_encoder is not None:
                probe = np.asarray(query_encoder(list(SENTENCE_PROBES)), dtype=np.float32)
            oos, how = oos.for_sentence_encoder(probe)
            log.info("intent %s: out-of-scope detection %s", live["intent"], how)
        if quantized:
            # int8 only where the models compute on their own: the shared layers and the
            # answer index's get float16 weights (float32 arithmetic), since the index was
            # embedded in float32 and int8 moved its embeddings too far (see README).
            on_own = {"intent", "sentiment"} | ({ENTITY_TASK} if entity else set())
            if shared is not None:
                shared.quantize_tops(on_own)
                shared.half_weights()
                on_own -= shared.names
            own: list[tuple[str, TransformerClassifier | TokenTagger | None]] = [
                ("intent", intent),
                ("sentiment", sentiment),
                (ENTITY_TASK, entity),
            ]
            for name, model in own:
                if name in on_own and model is not None:
                    quantize(model)
        if shared is not None:
            shared.release_duplicates()  # one copy of the shared weights per process
        return cls(intent, sentiment, versions, shared, oos, entity)

    def classify(self, texts: Sequence[str]) -> list[Understanding]:
        """Intent and sentiment for a batch of texts (blocking; runs in the worker thread)."""
        pooled: dict[str, torch.Tensor] = {}
        tokens: dict[str, list[torch.Tensor]] = {}
        if self.shared is not None:
            pooled, tokens = self.shared.run(texts, frozenset({ENTITY_TASK}))
        found: list[list[Any]] = [[] for _ in texts]
        if self.entity is not None:
            if ENTITY_TASK in tokens and self.shared is not None:
                logits = self.entity.head_logits(tokens[ENTITY_TASK])
                found = self.entity.decode(texts, logits, self.shared.max_length)
            else:
                found = self.entity.spans(texts)
        if "intent" in pooled:
            intent_pooled = pooled["intent"]
            intent_logits = self.intent.head_logits(intent_pooled)
        else:
            intent_pooled, intent_logits = self.intent.pooled_and_logits(texts)
        intents = self.intent.predictions(self.intent.calibrated(intent_logits), top_k=3)
        query = (
            torch.nn.functional.normalize(pooled["query"], dim=-1) if "query" in pooled else None
        )
        oos_scores: Sequence[float | None] = [None] * len(texts)
        oos_flags: Sequence[bool] = [False] * len(texts)
        if self.oos is not None:
            raw, flags = self.oos.decide(
                intent_pooled.numpy(),
                intent_logits.numpy(),
                query.numpy() if query is not None and self.oos.needs_sentences else None,
            )
            oos_scores, oos_flags = [round(float(v), 4) for v in raw], flags.tolist()
        if "sentiment" in pooled:
            sentiment_probs = self.sentiment.calibrated(
                self.sentiment.head_logits(pooled["sentiment"])
            )
        else:
            sentiment_probs = self.sentiment.predict_proba(texts)
        labels = self.sentiment.labels
        neg = labels.index("negative") if "negative" in labels else None
        pos = labels.index("positive") if "positive" in labels else None
        out = []
        for row, (prediction, probs) in enumerate(zip(intents, sentiment_probs, strict=True)):
            out_of_scope = bool(oos_flags[row])
            scores = tuple(
                sorted(
                    (Scored(label, float(p)) for label, p in zip(labels, probs, strict=True)),
                    key=lambda s: -s.score,
                )
            )
            negativity = (float(probs[neg]) if neg is not None else 0.0) - (
                float(probs[pos]) if pos is not None else 0.0
            )
            out.append(
                Understanding(
                    # An out-of-scope message has no intent: nothing acts on a guess.
                    intent=None if prediction.abstained or out_of_scope else prediction.label,
                    intent_confidence=prediction.confidence,
                    top_intents=tuple(Scored(label, score) for label, score in prediction.top),
                    sentiment=scores[0].label,
                    negativity=negativity,
                    sentiment_scores=scores,
                    model_versions=dict(self.versions),
                    query_embedding=None if query is None else query[row].numpy(),
                    out_of_scope=out_of_scope,
                    oos_score=oos_scores[row],
                    entities=tuple(found[row]),
                )
            )
        return out


def share_forward(
    intent: TransformerClassifier,
    sentiment: TransformerClassifier,
    query_encoder: QueryEncoder | None,
    entity: TokenTagger | None = None,
) -> SharedEncoder | None:
    """A shared forward for the largest group of the models (intent, sentiment, the entity
    model, the answer index's encoder) that have layers in common, e.g. intent and the index
    when sentiment was trained with every layer tuned; None when no two share anything or
    the shared forward does not give what each model gives on its own (checked on probe
    texts, float32, before quantization). Models outside the group run their own forward."""
    models: dict[str, tuple[Any, int]] = {
        "intent": (intent.model.encoder, intent.meta.max_length),
        "sentiment": (sentiment.model.encoder, sentiment.meta.max_length),
    }
    if entity is not None:
        models[ENTITY_TASK] = (entity.model.encoder, entity.meta.max_length)
    query = query_encoder.shareable() if query_encoder is not None else None
    if query is not None:
        models["query"] = (query[0], query[2])
    groups = [
        names
        for size in range(len(models), 1, -1)
        for names in itertools.combinations(models, size)
    ]
    for names in groups:
        depth = common_depth([models[name][0] for name in names])
        if depth is None:
            continue
        branches = [Branch(name, models[name][0]) for name in names]
        max_length = max(models[name][1] for name in names)
        shared = SharedEncoder(branches, intent.tokenizer, max_length, depth=depth)
        try:
            worst = _check_shared(shared, intent, sentiment, query_encoder, entity)
        except ValueError as exc:
            log.warning("%s", exc)
            continue
        log.info(
            "%s share the embeddings and %d of %d layers: one forward per message "
            "(largest difference to their own forwards %.1e)%s%s",
            ", ".join(names),
            shared.depth,
            len(transformer_layers(intent.model.encoder) or []),
            worst,
            "".join(
                f"; {' and '.join(run)} have the same tuned layers (trained together): "
                "run once for both"
                for run in shared.passes
                if len(run) > 1
            ),
            "".join(f"; {name} runs its own" for name in models if name not in names),
        )
        return shared
    log.info("the models share no layers: each runs its own forward")
    return None


def _check_shared(
    shared: SharedEncoder,
    intent: TransformerClassifier,
    sentiment: TransformerClassifier,
    query_encoder: QueryEncoder | None,
    entity: TokenTagger | None = None,
    tolerance: float = 1e-3,
) -> float:
    """Largest difference between the shared forward and each model's own on PROBE_TEXTS.

    Raises:
        ValueError: above `tolerance` (e.g. different tokenizers).
    """
    texts = list(PROBE_TEXTS)
    pooled, tokens = shared.run(texts, frozenset({ENTITY_TASK}))
    pairs = [
        (model.head_logits(pooled[name]), model.logits(texts))
        for name, model in (("intent", intent), ("sentiment", sentiment))
        if name in pooled
    ]
    if "query" in pooled and query_encoder is not None:
        pairs.append(
            (
                torch.nn.functional.normalize(pooled["query"], dim=-1),
                torch.as_tensor(query_encoder(texts)).float(),
            )
        )
    if entity is not None and ENTITY_TASK in tokens:
        own = entity.token_logits(texts)
        for a, b in zip(entity.head_logits(tokens[ENTITY_TASK]), own, strict=True):
            if a.shape != b.shape:
                raise ValueError(
                    "the shared forward cuts texts into other word pieces than the entity "
                    "model; serving each model on its own"
                )
            pairs.append((a, b))
    worst = max(float((a - b).abs().max()) for a, b in pairs)
    if worst > tolerance:
        raise ValueError(
            f"the shared forward differs from the models' own by {worst:.2g} (> {tolerance}); "
            "serving each model on its own"
        )
    return worst


class TransformerUnderstander:
    """Serves the registry's live models; swaps in new versions without dropping requests.

    Requests from concurrent conversations are micro-batched and run in one worker thread.
    A background task watches the registry; a new live version is loaded beside the old one
    and swapped in with one reference assignment, so a batch in flight finishes on the models
    it started with and no request fails during a reload.

    Args:
        models_dir: the models root with `registry.json`.
        executor: the worker for model calls (shared with the answer index's encoder).
        max_batch / max_wait_ms: micro-batching bounds.
        quantized: int8 dynamic quantization on load.
        reload_interval_s: how often the registry is checked.
        bus: where model changes are announced (topic "models"): a notice from another
            replica or from `supportbot models promote` makes this one check the registry at
            once; polling stays the fallback for notices lost while the bus was away.
        query_encoder: the answer index's encoder; when it shares layers with the
            classifiers, one forward serves all three (see `ModelSet`).
    """

    def __init__(
        self,
        models_dir: Path,
        executor: ThreadPoolExecutor,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        quantized: bool = True,
        reload_interval_s: float = 2.0,
        bus: EventBus | None = None,
        query_encoder: QueryEncoder | None = None,
        when_idle: Callable[[], object] | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.query_encoder = query_encoder
        self.quantized = quantized
        self.reload_interval_s = reload_interval_s
        self._executor = executor
        self._models: ModelSet | None = None
        self._batcher: MicroBatcher[str, Understanding] = MicroBatcher(
            self._classify, executor, max_batch, max_wait_ms, name="nlu", when_idle=when_idle
        )
        self._watcher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._bus = bus
        self._nudge = asyncio.Event()
        self.reloads = 0

    @property
    def versions(self) -> dict[str, str]:
        return dict(self._models.versions) if self._models else {}

    def intent_labels(self) -> tuple[str, ...]:
        """The intents the live intent model knows (empty before `start`)."""
        return self._models.intent.labels if self._models else ()

    def entity_types(self) -> tuple[str, ...]:
        """The types the live learned entity model finds (empty: none is live)."""
        entity = self._models.entity if self._models else None
        return tuple(entity.meta.entities) if entity is not None else ()

    @property
    def oos_method(self) -> str | None:
        """The out-of-scope method served (None: no detector, or before `start`)."""
        oos = self._models.oos if self._models else None
        return oos.method if oos is not None else None

    def ready(self) -> bool:
        return self._models is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._models = await loop.run_in_executor(
            None, ModelSet.load, self.models_dir, self.quantized, self.query_encoder
        )
        log.info("serving models %s from %s", self._models.versions, self.models_dir)
        await self._batcher.start()
        if self._bus is not None:
            subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(subscribed), name="model-notices")
            await subscribed.wait()
        self._watcher = asyncio.create_task(self._watch(), name="model-watcher")

    async def stop(self) -> None:
        tasks, self._watcher, self._listener = (self._watcher, self._listener), None, None
        await cancel_and_wait(*tasks)
        await self._batcher.stop()

    def _classify(self, texts: Sequence[str]) -> list[Understanding]:
        models = self._models  # one read: a concurrent swap cannot split a batch
        assert models is not None
        return models.classify(texts)

    async def understand(self, text: str) -> Understanding:
        return await self._batcher.submit(text)

    async def reload_if_changed(self) -> bool:
        """Load the registry's live versions if they differ from the served ones."""
        live = read_live_versions(self.models_dir)
        if not live or all(live.get(t) == self.versions.get(t) for t in SERVED_TASKS):
            return False
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Loading happens beside serving (default executor), not in the inference worker.
        models = await loop.run_in_executor(
            None, ModelSet.load, self.models_dir, self.quantized, self.query_encoder
        )
        old = self.versions
        self._models = models
        self.reloads += 1
        log.info(
            "reloaded models %s -> %s in %.1f s",
            old,
            models.versions,
            time.perf_counter() - started,
        )
        if self._bus is not None:
            # Other replicas reload now instead of at their next poll (each one that swaps
            # announces it too; a replica already on these versions finds nothing to do).
            await self._bus.publish(MODELS_TOPIC, {"versions": models.versions})
        return True

    async def _listen(self, subscribed: asyncio.Event) -> None:
        assert self._bus is not None
        async with self._bus.subscribe(MODELS_TOPIC) as notices:
            subscribed.set()
            async for _ in notices:  # a notice, or "lagged": either way, look now
                self._nudge.set()

    async def _watch(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that arrives
            # as the nudge is set, and `stop` would then wait a whole interval, or for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reload_interval_s):
                    await self._nudge.wait()
            self._nudge.clear()
            try:
                await self.reload_if_changed()
            except ModelNotFoundError as exc:
                log.warning("model reload skipped: %s", exc)
            except (OSError, RuntimeError, ValueError) as exc:
                # A half-copied or broken model must not take the service down: keep serving.
                log.error("model reload failed, still serving %s: %s", self.versions, exc)

"""One forward for intent, sentiment and the answer index: weight comparison, freezing, and
the shared forward against every model's own, on the bundled backbone and real trained
models."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bot.nlu.artifacts import resolve_backbone
from bot.nlu.classifier import TransformerClassifier, load_model, mean_pool
from bot.nlu.shared_encoder import Branch, SharedEncoder, common_depth, freeze_lower_layers
from bot.nlu.understander import ModelSet
from bot.retrieval.embedder import SentenceEmbedder

TEXTS = [
    "hello",
    "where is my parcel, it should have arrived on monday",
    "I am really angry about the broken blender you sent me!!!",
    "can I pay with paypal?",
]


@pytest.fixture(scope="module")
def backbone() -> tuple[object, object]:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_backbone("bundled")
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def own_pooled(encoder: object, tokenizer: object, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # type: ignore[operator]
    return mean_pool(out.last_hidden_state, batch["attention_mask"])


def perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.01)


def test_common_depth_counts_equal_bottom_layers(backbone: tuple[object, object]) -> None:
    encoder, _ = backbone
    top_changed = copy.deepcopy(encoder)
    perturb(top_changed.encoder.layer[5])  # type: ignore[attr-defined]
    two_changed = copy.deepcopy(encoder)
    perturb(two_changed.encoder.layer[4])  # type: ignore[attr-defined]
    embeddings_changed = copy.deepcopy(encoder)
    perturb(embeddings_changed.embeddings)  # type: ignore[attr-defined]

    assert common_depth([encoder, copy.deepcopy(encoder)]) == 6
    assert common_depth([encoder, top_changed]) == 5
    assert common_depth([encoder, top_changed, two_changed]) == 4
    assert common_depth([encoder, embeddings_changed]) is None
    assert common_depth([encoder, torch.nn.Linear(2, 2)]) is None


def test_freeze_lower_layers_leaves_only_the_top_trainable(backbone: tuple[object, object]) -> None:
    encoder = copy.deepcopy(backbone[0])
    assert freeze_lower_layers(encoder, 2) == 4
    trainable = {
        name.split(".")[2]
        for name, parameter in encoder.named_parameters()  # type: ignore[attr-defined]
        if parameter.requires_grad and name.startswith("encoder.layer.")
    }
    assert trainable == {"4", "5"}
    assert not any(p.requires_grad for p in encoder.embeddings.parameters())  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="--tuned-layers all"):
        freeze_lower_layers(torch.nn.Linear(2, 2), 2)


def test_shared_forward_matches_each_models_own(backbone: tuple[object, object]) -> None:
    encoder, tokenizer = backbone
    tuned = copy.deepcopy(encoder)
    perturb(tuned.encoder.layer[4])  # type: ignore[attr-defined]
    perturb(tuned.encoder.layer[5])  # type: ignore[attr-defined]
    shared = SharedEncoder([Branch("a", encoder), Branch("b", tuned)], tokenizer, 64, batch_size=3)
    assert shared.depth == 4

    pooled = shared.pooled(TEXTS)

    for name, model in (("a", encoder), ("b", tuned)):
        # each text alone: no padding at all in the reference
        own = torch.cat([own_pooled(model, tokenizer, [t]) for t in TEXTS])
        assert torch.allclose(pooled[name], own, atol=1e-4), name
    assert not torch.allclose(pooled["a"], pooled["b"], atol=1e-3)  # the tops do differ
    assert shared.pooled([])["a"].shape == (0, 384)


def test_models_trained_with_frozen_layers_share_one_forward(
    runtime_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = SentenceEmbedder("bundled")
    with caplog.at_level(logging.INFO, logger="bot.nlu.understander"):
        shared = ModelSet.load(runtime_models, quantized=False, query_encoder=embedder)
    assert shared.shared is not None and shared.shared.depth == 3
    assert "intent, sentiment, query share the embeddings and 3 of 6 layers" in caplog.text
    alone = ModelSet.load(runtime_models, quantized=False)
    assert alone.shared is not None  # the two classifiers still share with each other

    texts = ["hi", "where is my order #123?", "this is useless, I want a human now"]
    together = shared.classify(texts)
    plain_intent = TransformerClassifier(runtime_models / "intent" / "v1").predict(texts)
    for understood, expected in zip(together, plain_intent, strict=True):
        assert understood.top_intents[0].label == expected.label
        assert understood.intent_confidence == pytest.approx(expected.confidence, abs=1e-4)
        assert understood.query_embedding is not None
    vectors = np.stack([u.query_embedding for u in together])
    assert np.allclose(vectors, embedder(texts), atol=1e-4)
    assert all(u.query_embedding is None for u in alone.classify(texts))


def test_the_shared_weights_are_held_once_and_every_forward_still_agrees(
    runtime_models: Path,
) -> None:
    """One copy of the shared embeddings and layers per process (issue 19), each branch's
    own layers the ones the shared forward runs; the single pass and each model's own
    forward (the answer index's encoder embedding a search) agree with separately loaded
    models within 1e-4 (float32) on probe texts."""
    embedder = SentenceEmbedder("bundled")
    models = ModelSet.load(runtime_models, quantized=False, query_encoder=embedder)
    assert models.shared is not None
    intent, sentiment = models.intent.model.encoder, models.sentiment.model.encoder
    query = embedder.shareable()
    assert query is not None
    for other in (sentiment, query[0]):
        assert other.embeddings is intent.embeddings
        assert all(
            a is b for a, b in zip(other.encoder.layer[:3], intent.encoder.layer[:3], strict=True)
        )
        assert other.pooler is None and other.encoder.layer[3] is not intent.encoder.layer[3]
    texts = ["hi", "where is my order #123?", "this is useless, I want a human now", "danke!"]
    fresh = SentenceEmbedder("bundled")
    np.testing.assert_allclose(embedder(texts), fresh(texts), atol=1e-5)
    understood = models.classify(texts)
    np.testing.assert_allclose(
        np.stack([u.query_embedding for u in understood]), fresh(texts), atol=1e-4
    )
    for name, separate in (("intent", "intent"), ("sentiment", "sentiment")):
        own = TransformerClassifier(runtime_models / separate / "v1").predict_proba(texts)
        model = getattr(models, name)
        np.testing.assert_allclose(model.predict_proba(texts), own, atol=1e-4)
    sentiment_scores = [{s.label: s.score for s in u.sentiment_scores} for u in understood]
    own = TransformerClassifier(runtime_models / "sentiment" / "v1")
    for scores, probs in zip(sentiment_scores, own.predict_proba(texts), strict=True):
        for label, p in zip(own.labels, probs, strict=True):
            assert scores[label] == pytest.approx(float(p), abs=1e-4)


def test_the_out_of_scope_detector_uses_the_query_embedding_of_the_same_forward(
    runtime_models: Path,
) -> None:
    """With the answer index's encoder in the shared forward, `sentence-knn` scores its query
    embedding (no second pass); without it, or with another encoder, the fallback fitted
    without `sentence-knn` is served. Both decline a clearly off-topic message."""
    embedder = SentenceEmbedder("bundled")
    shared = ModelSet.load(runtime_models, quantized=True, query_encoder=embedder)
    alone = ModelSet.load(runtime_models, quantized=True)
    assert shared.oos is not None and shared.oos.method == "knn+energy+sentence-knn"
    assert alone.oos is not None and alone.oos.method == "knn+energy"

    class Shifted:
        """Another encoder: the same model's vectors, moved."""

        def __call__(self, texts: list[str]) -> np.ndarray:
            return embedder(texts) + 0.01

        def shareable(self) -> tuple[Any, Any, int] | None:
            return embedder.shareable()

    other = ModelSet.load(runtime_models, quantized=True, query_encoder=Shifted())
    assert other.oos is not None and other.oos.method == "knn+energy"
    texts = ["where is my order", "what's the weather like in Paris tomorrow?"]
    for models in (shared, alone):
        understood = models.classify(texts)
        assert [u.out_of_scope for u in understood] == [False, True], models.oos.method


def test_quantized_shared_models_agree_with_float(runtime_models: Path) -> None:
    embedder = SentenceEmbedder("bundled")
    float_set = ModelSet.load(runtime_models, quantized=False, query_encoder=embedder)
    int8_set = ModelSet.load(runtime_models, quantized=True, query_encoder=embedder)
    texts = ["hello there", "my parcel never came", "can I return the shoes?", "you are awful"]
    a, b = float_set.classify(texts), int8_set.classify(texts)
    assert [u.top_intents[0].label for u in a] == [u.top_intents[0].label for u in b]
    # The shared layers and the answer index's keep float32 arithmetic on float16 weights:
    # the query embedding moves by float16 rounding only, far less than int8 moves it
    # (cosine 0.93-0.996 to float32, README), so it still matches an index embedded in
    # float32.
    qa = np.stack([u.query_embedding for u in a])
    qb = np.stack([u.query_embedding for u in b])
    assert not np.array_equal(qa, qb)  # the weights did change
    assert np.abs(qa - qb).max() < 1e-3
    assert (np.sum(qa * qb, axis=1) > 0.9999).all()
    shared = int8_set.shared
    assert shared is not None

    def weights(layers: list[torch.nn.Module]) -> set[str]:
        return {
            "float32" if isinstance(m, torch.nn.Linear) else str(m._packed_params.dtype)
            for layer in layers
            for m in layer.modules()
            if type(m).__name__ in ("Linear", "DynamicQuantizedLinear")
        }

    assert weights(shared._shared) == {"torch.float16"}
    assert weights(shared._tops["query"]) == {"torch.float16"}
    assert weights(shared._tops["intent"]) == {"torch.qint8"}  # the classifiers' own layers
    assert float_set.shared is not None
    assert all(
        isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32
        for layer in float_set.shared._shared
        for m in layer.modules()
        if "Linear" in type(m).__name__
    )


def test_a_fully_fine_tuned_model_runs_its_own_forward_beside_the_shared_one(
    runtime_models: Path, tmp_path: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(runtime_models, models)
    # As if sentiment was trained with --tuned-layers all: its embeddings moved too.
    sentiment, _, _ = load_model(models / "sentiment" / "v1")  # transformers' (it can save)
    perturb(sentiment.encoder.embeddings)
    sentiment.encoder.save_pretrained(models / "sentiment" / "v1")
    texts = ["hi", "this is useless, I want a human now"]

    loaded = ModelSet.load(models, quantized=False, query_encoder=SentenceEmbedder("bundled"))

    assert loaded.shared is not None and loaded.shared.names == {"intent", "query"}
    understood = loaded.classify(texts)
    own = TransformerClassifier(models / "sentiment" / "v1").predict_proba(texts)
    for u, probs in zip(understood, own, strict=True):
        assert u.query_embedding is not None
        assert dict((s.label, s.score) for s in u.sentiment_scores)[u.sentiment] == (
            pytest.approx(float(probs.max()), abs=1e-5)
        )
    # int8 for what runs on its own: sentiment as a whole, intent's own top layers.
    quantized = ModelSet.load(models, quantized=True, query_encoder=SentenceEmbedder("bundled"))
    assert [u.sentiment for u in quantized.classify(texts)] == [u.sentiment for u in understood]

    # Nothing in common at all (intent moved too, no index encoder): each on its own.
    intent, _, _ = load_model(models / "intent" / "v1")
    perturb(intent.encoder.embeddings)
    perturb(intent.encoder.embeddings)
    intent.encoder.save_pretrained(models / "intent" / "v1")
    alone = ModelSet.load(models, quantized=False)
    assert alone.shared is None
    assert alone.classify(["hi"])[0].query_embedding is None


def test_branches_with_equal_own_layers_run_them_once(backbone: tuple[object, object]) -> None:
    """Intent and sentiment trained together have the same tuned layers: the shared forward
    runs them once for both, and both still get what their own forward gives."""
    encoder, tokenizer = backbone
    tuned = copy.deepcopy(encoder)
    perturb(tuned.encoder.layer[5])  # type: ignore[attr-defined]
    twin = copy.deepcopy(tuned)
    shared = SharedEncoder(
        [Branch("a", encoder), Branch("b", tuned), Branch("c", twin)], tokenizer, 64
    )
    assert shared.depth == 5
    assert sorted(sorted(run) for run in shared.passes) == [["a"], ["b", "c"]]
    calls = {"b": 0, "c": 0}
    for name, model in (("b", tuned), ("c", twin)):
        model.encoder.layer[5].register_forward_hook(  # type: ignore[attr-defined]
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )

    pooled = shared.pooled(TEXTS)

    assert calls == {"b": 1, "c": 0}  # one chunk of four texts, one run of the twin layers
    assert torch.equal(pooled["b"], pooled["c"])
    own = torch.cat([own_pooled(twin, tokenizer, [t]) for t in TEXTS])
    assert torch.allclose(pooled["c"], own, atol=1e-4)
    # Quantized only when every model reading the run asked for it.
    shared.quantize_tops({"b"})
    assert torch.equal(shared.pooled(TEXTS)["c"], pooled["c"])
    shared.quantize_tops({"b", "c"})
    after = shared.pooled(TEXTS)
    assert torch.equal(after["b"], after["c"]) and not torch.equal(after["c"], pooled["c"])
    assert torch.nn.functional.cosine_similarity(after["c"], pooled["c"]).min() > 0.99


def test_jointly_trained_intent_and_sentiment_are_served_in_one_pass(
    joint_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`train intent+sentiment`: the bot runs the shared tuned layers once for both, and what
    it serves equals each model's own forward within 1e-4 (float32) on probe texts; int8
    gives the same labels."""
    embedder = SentenceEmbedder("bundled")
    with caplog.at_level(logging.INFO, logger="bot.nlu.understander"):
        models = ModelSet.load(joint_models, quantized=False, query_encoder=embedder)
    assert models.shared is not None and models.shared.depth == 3
    assert sorted(sorted(run) for run in models.shared.passes) == [
        ["intent", "sentiment"],
        ["query"],
    ]
    assert "intent and sentiment have the same tuned layers (trained together)" in caplog.text
    texts = ["hi", "where is my order #123?", "this is useless, I want a human now", "danke!"]
    understood = models.classify(texts)
    intent = TransformerClassifier(joint_models / "intent" / "v1")
    sentiment = TransformerClassifier(joint_models / "sentiment" / "v1")
    for u, i_probs, s_probs in zip(
        understood, intent.predict_proba(texts), sentiment.predict_proba(texts), strict=True
    ):
        scores = {s.label: s.score for s in u.sentiment_scores}
        for label, p in zip(sentiment.labels, s_probs, strict=True):
            assert scores[label] == pytest.approx(float(p), abs=1e-4)
        assert u.intent_confidence == pytest.approx(float(i_probs.max()), abs=1e-4)
    np.testing.assert_allclose(
        np.stack([u.query_embedding for u in understood]), embedder(texts), atol=1e-4
    )
    int8 = ModelSet.load(joint_models, quantized=True, query_encoder=embedder).classify(texts)
    assert [u.top_intents[0].label for u in int8] == [u.top_intents[0].label for u in understood]
    assert [u.sentiment for u in int8] == [u.sentiment for u in understood]

"""The learned entity model at run time: loaded next to intent and sentiment when the
registry has one, run in the same shared forward (equal to its own forward), its spans in
every `Understanding`, merged with the rule-based entities (a rule wins on overlap)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bot.core.entities import Entity, merge
from bot.nlu.entity_model import load_tagger
from bot.nlu.shared_encoder import PROBE_TEXTS
from bot.nlu.understander import ModelSet
from tests.conftest import write_tiny_csv
from tests.training.test_entity_training import one_thread, rasa_file
from training.arguments import TrainingArguments
from training.entities import train_entities
from training.pipeline import train_task

TEXTS = ["please ship my order to Madrid", "hello there", *PROBE_TEXTS]


@pytest.fixture(scope="module")
def plain_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Live intent and sentiment models (the default tuned layers), no entity model."""
    folder = tmp_path_factory.mktemp("entity-runtime")
    data = write_tiny_csv(folder / "tiny.csv")
    models = folder / "models"
    with one_thread():
        for task in ("intent", "sentiment"):
            args = TrainingArguments(epochs=2, batch_size=16, seed=3, oos_method="none")
            train_task(task, [data], models, args, progress=False)
    return models


@pytest.fixture(scope="module")
def models_with_entity(plain_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same models plus a live entity model trained with the default tuned layers."""
    folder = tmp_path_factory.mktemp("entity-runtime")
    models = folder / "models"
    shutil.copytree(plain_models, models)
    args = TrainingArguments(epochs=10, batch_size=8, seed=3, label_smoothing=0.0)
    with one_thread():
        run = train_entities([rasa_file(folder / "nlu.yml")], models, args, progress=False)
    assert run.version.live
    return models


@pytest.mark.slow
def test_entities_come_from_the_shared_forward(models_with_entity: Path) -> None:
    models = ModelSet.load(models_with_entity, quantized=False)
    assert models.entity is not None and models.versions["entity"] == "v1"
    assert models.shared is not None and "entity" in models.shared.names
    understood = models.classify(TEXTS)
    assert [(e.type, e.text) for e in understood[0].entities] == [("city", "Madrid")]
    assert understood[1].entities == ()
    # The shared pass gives what the model's own forward gives.
    _, tokens = models.shared.run(TEXTS, frozenset({"entity"}))
    shared = models.entity.head_logits(tokens["entity"])
    own = models.entity.token_logits(TEXTS)
    worst = max(float((a - b).abs().max()) for a, b in zip(shared, own, strict=True))
    assert worst < 1e-3
    assert models.entity.spans(TEXTS) == [list(u.entities) for u in understood]


@pytest.mark.slow
def test_quantized_serving_still_finds_the_city(models_with_entity: Path) -> None:
    models = ModelSet.load(models_with_entity, quantized=True)
    found = models.classify(["could you ship my order to Madrid"])[0].entities
    assert [(e.type, e.text) for e in found] == [("city", "Madrid")]


@pytest.mark.slow
def test_an_entity_model_that_shares_nothing_runs_its_own_forward(
    models_with_entity: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_with_entity, models)
    # Move the entity model's embeddings: nothing is shared with it any more.
    model, _, _ = load_tagger(models / "entity" / "v1")  # transformers' (it can save)
    with torch.no_grad():
        model.encoder.embeddings.word_embeddings.weight.mul_(1.001)
    model.encoder.save_pretrained(models / "entity" / "v1")
    loaded = ModelSet.load(models, quantized=False)
    assert loaded.shared is None or "entity" not in loaded.shared.names
    assert [(e.type, e.text) for e in loaded.classify(TEXTS[:1])[0].entities] == [
        ("city", "Madrid")
    ]


@pytest.mark.slow
def test_a_bot_without_an_entity_model_finds_no_learned_entities(plain_models: Path) -> None:
    models = ModelSet.load(plain_models, quantized=False)
    assert models.entity is None and "entity" not in models.versions
    assert all(u.entities == () for u in models.classify(TEXTS))


def test_rule_spans_win_over_overlapping_learned_ones() -> None:
    rules = [Entity("order_id", "BC-204719", "BC 204719", 10, 19)]
    learned = [
        Entity("product", "BC", "BC", 10, 12),  # overlaps the order number: dropped
        Entity("city", "Madrid", "Madrid", 23, 29),
        Entity("name", "Ana", "Ana", 0, 3),
    ]
    assert [e.type for e in merge(rules, learned)] == ["name", "order_id", "city"]
    assert merge(rules, ()) == tuple(rules)


async def test_the_service_stores_learned_entities_beside_the_rules() -> None:
    """On the in-memory fakes: the understander's learned spans are stored with the message,
    and a learned span overlapping a pattern's is dropped (the pattern wins)."""
    import dataclasses

    from bot.core.escalation import EscalationPolicy, EscalationSettings
    from bot.core.metrics import Metrics
    from bot.core.records import Message
    from bot.core.router import Router, RoutingConfig
    from bot.core.service import ConversationService
    from tests.bot.core.test_service_entities import ROUTING
    from tests.fakes.answers import InMemoryAnswerIndex
    from tests.fakes.clock import ManualClock
    from tests.fakes.nlu import ScriptedUnderstander, understanding
    from tests.fakes.store import InMemoryConversationStore

    text = "send BC 204719 to Madrid"
    learned = (
        Entity("product", "BC", "BC", 5, 7),  # inside the order number: the rule wins
        Entity("city", "Madrid", "Madrid", 18, 24),
    )
    understander = ScriptedUnderstander(
        {text: dataclasses.replace(understanding("change_order", 0.9), entities=learned)}
    )
    store = InMemoryConversationStore(ManualClock())
    service = ConversationService(
        store,
        understander,
        InMemoryAnswerIndex(),
        Router(RoutingConfig.parse(ROUTING, "test.yml")),
        EscalationPolicy(EscalationSettings()),
        Metrics(),
        0.5,
    )
    await store.start()
    try:
        await service.handle(Message("fake", "ada", text, sender_name="Ada"))
        conversation = await store.find_conversation("fake", "ada")
        assert conversation is not None
        (details,) = [
            m.details for m in await store.transcript(conversation.id) if m.role == "customer"
        ]
    finally:
        await store.stop()
    assert [(e["type"], e["value"], e["text"]) for e in details["entities"]] == [
        ("order_id", "BC-204719", "BC 204719"),
        ("city", "Madrid", "Madrid"),
    ]

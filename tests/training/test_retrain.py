"""`supportbot retrain`: the training-set builder and the gate on real SQLite, and the whole
operator loop against the real app in-process (conversations over REST, agent labels and an
approved answer through the console API, retrain, gate, promote, hot reload, rollback)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient
from safetensors.torch import load_file

from bot.app.cli import main
from bot.app.factory import RUNTIME, create_app
from bot.core.records import Feedback, Role
from bot.nlu.classifier import HEAD_FILE, read_meta
from bot.settings import ConsoleSettings
from bot.store.accounts import SqlAccountStore
from bot.store.conversations import SqlConversationStore
from tests.helpers import ClientFactory, runtime_settings
from training.data import Example
from training.feedback import StoredLabel, read_feedback
from training.retrain import (
    LOCK_FILE,
    RetrainBusyError,
    RetrainOptions,
    describe,
    gate,
    holdout_split,
    oversample_new_labels,
    replay_sample,
    retrain,
    retrain_lock,
)

PASSWORD = "correct horse battery"
# A new intent the runtime test models have never seen, as customers would ask it.
CANCEL = [
    "please cancel my order",
    "i want to cancel the order i just placed",
    "cancel order BC-104522 please",
    "how do i cancel my purchase",
    "can you cancel my order, i ordered the wrong size",
    "i changed my mind, cancel the order",
    "stop my order, i don't want it anymore",
    "cancel my order before it ships",
]
GREETINGS = ["hi", "hello there", "hey", "good morning", "hiya", "hello!", "morning", "hi team"]
CANCEL_ANSWER = (
    "To cancel, open My orders and click Cancel order; it works until the parcel ships, "
    "and the refund follows within 3 days."
)


# -- the training-set builder, on real SQLite ------------------------------------------


async def _customer_message(store: SqlConversationStore, sender: str, text: str) -> int:
    conversation = await store.conversation("rest", sender)
    message, _ = await store.add_customer_message(conversation.id, text)
    return message.id


async def test_feedback_reader_keeps_agent_labels_and_reports_bad_rows(sqlite_url: str) -> None:
    store = SqlConversationStore(sqlite_url)
    await store.start()
    try:
        accounts = SqlAccountStore(store, ConsoleSettings())
        await accounts.add("ana", "agent", PASSWORD)
        first = await _customer_message(store, "c1", "please cancel my order")
        second = await _customer_message(store, "c2", "where is my refund")
        third = await _customer_message(store, "c3", "hello")
        bot_reply = await store.add_message(
            (await store.conversation("rest", "c1")).id, Role.BOT, "Sure."
        )
        # An agent's label, then a newer one of the same message: the newer wins.
        await store.record_feedback(Feedback(first, corrected_intent="order_status", author="ana"))
        await store.record_feedback(Feedback(first, corrected_intent="cancel_order", author="ana"))
        await store.record_feedback(
            Feedback(
                second,
                corrected_intent="refund_status",
                corrected_sentiment="negative",
                author="ana",
            )
        )
        # A customer's "correction" is no label; a malformed name and a label on a bot
        # message are reported with their row id, never used silently.
        await store.record_feedback(Feedback(third, corrected_intent="complaint"))
        bad_name = await store.record_feedback(
            Feedback(third, corrected_intent="Cancel Order!", author="ana")
        )
        on_bot = await store.record_feedback(
            Feedback(bot_reply.id, corrected_intent="greeting", author="ana")
        )
        bad_sentiment = await store.record_feedback(
            Feedback(third, corrected_sentiment="furious", author="ana")
        )
        feedback = await read_feedback(store)
    finally:
        await store.stop()

    assert {(x.text, x.label) for x in feedback.intents} == {
        ("please cancel my order", "cancel_order"),
        ("where is my refund", "refund_status"),
    }
    assert [(x.text, x.label) for x in feedback.sentiments] == [("where is my refund", "negative")]
    assert feedback.superseded == 1
    assert feedback.ignored_customer_corrections == 1
    problems = {p.feedback_id: str(p) for p in feedback.problems}
    assert set(problems) == {bad_name, on_bot, bad_sentiment}
    assert "not a valid intent name" in problems[bad_name]
    assert f"feedback row {bad_name}" in problems[bad_name]
    assert "customer messages" in problems[on_bot]
    assert "furious" in problems[bad_sentiment]
    assert feedback.labels("intent")[0].example().source == "store:feedback:label"


def _label(message_id: int, label: str) -> StoredLabel:
    return StoredLabel(
        message_id,
        f"text {message_id}",
        label,
        message_id,
        "ana",
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=message_id),
    )


def test_holdout_is_stratified_and_stable_as_labels_arrive() -> None:
    labels = [_label(i, "cancel_order") for i in range(10)] + [
        _label(100 + i, "order_status") for i in range(2)
    ]
    train, heldout = holdout_split(labels, 0.2, seed=3)
    assert heldout and all(x.label == "cancel_order" for x in heldout)  # 2 labels: none held out
    assert len(train) + len(heldout) == 12 and len(train) >= 2
    # More labels later: what was held out before stays held out (never trained on).
    more = labels + [_label(i, "cancel_order") for i in range(10, 40)]
    _, heldout_later = holdout_split(more, 0.2, seed=3)
    assert {x.message_id for x in heldout} <= {x.message_id for x in heldout_later}


def test_replay_sample_keeps_every_label() -> None:
    pool = [Example(f"a{i}", "big", "f", i) for i in range(90)] + [
        Example(f"b{i}", "small", "f", i) for i in range(3)
    ]
    sample = replay_sample(pool, 20, seed=1)
    labels = [e.label for e in sample]
    assert labels.count("small") >= 1 and 15 <= labels.count("big") <= 20
    assert replay_sample(pool, 1000, seed=1) == pool
    assert replay_sample(pool, 20, seed=1) == sample  # seeded


def test_new_labels_are_repeated_up_to_an_average_old_label() -> None:
    train = (
        [Example(f"a{i}", "old_a", "f", i) for i in range(30)]
        + [Example(f"b{i}", "old_b", "f", i) for i in range(20)]
        + [Example(f"n{i}", "new", "f", i) for i in range(7)]
        + [Example(f"m{i}", "plenty", "f", i) for i in range(40)]
    )
    out = oversample_new_labels(train, ["new", "plenty"], seed=3)
    labels = [e.label for e in out]
    assert labels.count("new") == 25  # the old labels' mean
    assert {e.text for e in out if e.label == "new"} == {f"n{i}" for i in range(7)}
    assert all(out.count(e) in (3, 4) for e in train if e.label == "new")  # evenly repeated
    assert labels.count("plenty") == 40 and labels.count("old_a") == 30  # left as they were
    assert oversample_new_labels(train, ["new", "plenty"], seed=3) == out  # seeded
    assert sorted(oversample_new_labels(train, [], seed=3), key=str) == sorted(train, key=str)


def _comparison(live: float, candidate: float, per_label: dict[str, Any], n: int = 50) -> Any:
    return {
        "n": n,
        "live": {"accuracy": live, "macro_f1": live},
        "candidate": {"accuracy": candidate, "macro_f1": candidate},
        "per_label": per_label,
    }


def test_gate_rules() -> None:
    options = RetrainOptions(tolerance=1.0, max_intent_drop=10.0, min_label_support=5)
    steady = {"a": {"support": 20, "live_f1": 0.9, "candidate_f1": 0.88}}
    better_feedback = _comparison(0.0, 0.9, {}, n=10)
    assert all(c.passed for c in gate(_comparison(0.90, 0.895, steady), better_feedback, options))

    worse = gate(_comparison(0.90, 0.85, steady), better_feedback, options)
    assert [c.name for c in worse if not c.passed] == ["frozen_test_accuracy"]

    sharp = {"a": {"support": 20, "live_f1": 0.9, "candidate_f1": 0.6}}
    checks = gate(_comparison(0.90, 0.90, sharp), better_feedback, options)
    assert [c.name for c in checks if not c.passed] == ["no_sharp_label_drop"]
    # Two test examples cannot show a sharp drop: reported, not gated.
    tiny = {"a": {"support": 2, "live_f1": 1.0, "candidate_f1": 0.5}}
    checks = gate(_comparison(0.90, 0.90, tiny), better_feedback, options)
    assert all(c.passed for c in checks) and "not judged" in checks[1].detail

    same = gate(_comparison(0.9, 0.9, steady), _comparison(0.8, 0.8, {}, n=10), options)
    assert [c.name for c in same if not c.passed] == ["better_on_feedback"]
    empty = gate(_comparison(0.9, 0.9, steady), _comparison(0.0, 0.0, {}, n=0), options)
    assert "label more messages" in empty[2].detail and not empty[2].passed
    # Retrained on its replay alone (beside its partner): holding the frozen test set is
    # all it must do.
    kept = gate(_comparison(0.9, 0.9, steady), _comparison(0.0, 0.0, {}, n=0), options, True)
    assert [c.name for c in kept] == ["frozen_test_accuracy", "no_sharp_label_drop"]
    assert all(c.passed for c in kept)
    assert not gate(_comparison(0.9, 0.8, steady), _comparison(0, 0, {}, n=0), options, True)[
        0
    ].passed


def test_second_retrain_is_refused_while_one_runs(tmp_path: Path) -> None:
    with (
        retrain_lock(tmp_path),
        pytest.raises(RetrainBusyError, match="another retrain"),
        retrain_lock(tmp_path),
    ):
        pass
    with retrain_lock(tmp_path):  # released afterwards
        pass


# -- the whole loop ----------------------------------------------------------------------


def _hash_tree(root: Path) -> str:
    """Every path and file under `root`, except the retrain lock file (which stays)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.name == LOCK_FILE:
            continue
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _config(tmp_path: Path, models: Path, url: str) -> Path:
    config = tmp_path / "supportbot.yml"
    config.write_text(
        json.dumps(
            {
                "store": {"url": url},
                "models": {"dir": str(models), "train_if_missing": False},
                "retrieval": {"index_dir": str(models / "answers"), "build_if_missing": False},
                # The test models' frozen test set is their 10-example validation split, where
                # one example is 10 points: allow one.
                "retrain": {"tolerance": 10.0},
            }
        )
    )
    return config


async def _run_cli(*argv: str) -> int:
    # The CLI runs its own event loop (asyncio.run), so it goes to a thread, as a separate
    # process would run beside the bot.
    return await asyncio.to_thread(main, list(argv))


async def _wait_for(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_operator_loop_learns_a_new_intent_and_rolls_back(
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    shutil.copytree(runtime_models, models)
    config = _config(tmp_path, models, sqlite_url)
    settings = runtime_settings(models, sqlite_url)
    app = create_app(settings)
    client = await aiohttp_client(app)
    runtime = app[RUNTIME]

    # Nothing in the store yet: a clear refusal, and the live models are untouched.
    before = _hash_tree(models)
    assert await _run_cli("retrain", "--config", str(config)) == 2
    assert "nothing to retrain" in capsys.readouterr().err
    assert _hash_tree(models) == before

    # Customers ask about cancelling, which the bot has never heard of.
    message_ids = []
    for i, text in enumerate(CANCEL):
        response = await client.post(
            "/api/v1/messages", json={"sender": f"customer-{i}", "text": text}
        )
        assert response.status == 200, await response.text()
        message_ids.append((await response.json())["message_id"])
    asked = await client.post(
        "/api/v1/handoff",
        json={"sender": "customer-0", "text": "can a person help me", "channel": "rest"},
    )
    assert asked.status == 200, await asked.text()
    transcript = (await asked.json())["conversation_id"]

    # An agent account, as `supportbot agents add` makes it; the agent signs in to the console.
    await SqlAccountStore(runtime.store, settings.console).add("ana", "agent", PASSWORD)
    signed = await client.post("/console/api/session", json={"name": "ana", "password": PASSWORD})
    assert signed.status == 200, await signed.text()
    csrf = {"X-CSRF-Token": (await signed.json())["csrf_token"]}
    for message_id in message_ids:
        labelled = await client.post(
            f"/console/api/messages/{message_id}/labels",
            json={"intent": "cancel_order"},
            headers=csrf,
        )
        assert labelled.status == 201, await labelled.text()
    # The agent answers the first customer and approves the answer for the index.
    claimed = await client.post(f"/console/api/conversations/{transcript}/claim", headers=csrf)
    assert claimed.status == 200, await claimed.text()
    reply = await client.post(
        f"/console/api/conversations/{transcript}/reply",
        json={"text": CANCEL_ANSWER},
        headers=csrf,
    )
    assert reply.status == 201, await reply.text()
    approved = await client.post(
        "/console/api/approved-answers",
        json={
            "answer_message_id": (await reply.json())["message"]["id"],
            "question_message_id": message_ids[0],
            "intent": "cancel_order",
        },
        headers=csrf,
    )
    assert approved.status == 201, await approved.text()

    # While another retrain holds the models directory, a second one is refused.
    with retrain_lock(models):
        assert await _run_cli("retrain", "--config", str(config)) == 2
    assert "another retrain is running" in capsys.readouterr().err

    # A dry run says what it would do and changes nothing.
    before = _hash_tree(models)
    assert await _run_cli("retrain", "--config", str(config), "--dry-run", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and _hash_tree(models) == before
    intent_plan = next(t for t in plan["tasks"] if t["task"] == "intent")
    assert intent_plan["status"] == "planned"
    assert intent_plan["plan"]["new_labels"] == ["cancel_order"]
    assert intent_plan["plan"]["agent_labels"] == len(CANCEL)
    assert plan["index"]["status"] == "rebuild"

    # Retrain: the candidate learns the new intent, passes the gate and goes live.
    code, result = await _retrain_tiny(config, capsys)
    intent = next(t for t in result["tasks"] if t["task"] == "intent")
    assert code == 0, intent["reasons"]
    assert intent["status"] == "promoted" and intent["version"] == "v2" and intent["live"] == "v2"
    sentiment = next(t for t in result["tasks"] if t["task"] == "sentiment")
    assert (
        sentiment["status"] == "skipped" and "no agent sentiment labels" in sentiment["reasons"][0]
    )
    assert result["index"]["status"] == "rebuilt"
    report = json.loads((models / "intent" / "v2" / "retrain_report.json").read_text())
    assert report["comparison"]["feedback"]["candidate"]["accuracy"] >= 0.5
    assert report["comparison"]["feedback"]["live"]["accuracy"] == 0.0
    markdown = (models / "intent" / "v2" / "retrain_report.md").read_text()
    assert "| cancel_order |" in markdown
    # The new intent's head row was aligned to the old rows' average norm after training.
    before_norm, after_norm = report["training_set"]["aligned_rows"]["cancel_order"]
    assert before_norm > 0 and after_norm > 0
    assert f"cancel_order {before_norm:.3f} -> {after_norm:.3f}" in markdown
    norms = load_file(str(models / "intent" / "v2" / HEAD_FILE))["weight"].norm(dim=1)
    row = read_meta(models / "intent" / "v2").labels.index("cancel_order")
    others = torch.cat([norms[:row], norms[row + 1 :]])
    assert float(norms[row]) == pytest.approx(float(others.mean()), rel=1e-4)
    assert after_norm == pytest.approx(float(others.mean()), abs=1e-3)
    listing = await _models_json(capsys, models)
    assert listing["tasks"]["intent"]["live"] == "v2"

    # The running bot switches to the new model and index without a restart.
    await _wait_for(lambda: _live_intent_is(client, "v2"), "the intent model to reload")

    async def index_reloaded() -> bool:
        return runtime.answers.reloads > 0

    await _wait_for(index_reloaded, "the answer index to reload")
    answer = await client.post(
        "/api/v1/messages", json={"sender": "new-customer", "text": "how can i cancel my order?"}
    )
    body = await answer.json()
    understood = await _understand(client, "how can i cancel my order?")
    assert understood["top_intents"][0][0] == "cancel_order", understood
    assert body["replies"][0]["text"] == CANCEL_ANSWER, body

    # Nothing new since v2: a second retrain has nothing to learn (and says so).
    assert await _run_cli("retrain", "--config", str(config)) == 2
    assert "newer than the live model v2" in capsys.readouterr().err

    # Rollback restores the previous behaviour in the running bot.
    assert await _run_cli("models", "--out", str(models), "rollback", "intent") == 0
    await _wait_for(lambda: _live_intent_is(client, "v1"), "the rollback to reload")
    understood = await _understand(client, "how can i cancel my order?")
    assert understood["top_intents"][0][0] != "cancel_order", understood


async def _retrain_tiny(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """`supportbot retrain --json` for tiny data: few epochs at the training learning rate
    (the gentler retrain default is tuned for real data sets); (exit status, its JSON)."""
    code = await _run_cli(
        "retrain",
        "--config",
        str(config),
        "--epochs",
        "8",
        "--learning-rate",
        "1e-4",
        "--no-progress",
        "--json",
    )
    return code, json.loads(capsys.readouterr().out)


async def _understand(client: TestClient[Any, Any], text: str) -> dict[str, Any]:
    response = await client.post("/api/v1/understand", json={"text": text})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def _live_intent_is(client: TestClient[Any, Any], version: str) -> bool:
    understood = await _understand(client, "hi")
    return bool(understood["model_versions"]["intent"] == version)


async def _models_json(capsys: pytest.CaptureFixture[str], models: Path) -> dict[str, Any]:
    assert await _run_cli("models", "--out", str(models), "list", "--json") == 0
    return dict(json.loads(capsys.readouterr().out))


def test_an_interrupted_run_leaves_no_half_written_version(tmp_path: Path) -> None:
    from training.arguments import TrainingArguments
    from training.pipeline import VersionData, fit_classifier, register_version
    from training.registry import FileModelRegistry

    examples = [
        Example(text, intent, "tiny", i)
        for intent, texts in {"cancel_order": CANCEL, "greeting": GREETINGS}.items()
        for i, text in enumerate(texts)
    ]
    args = TrainingArguments(epochs=1, batch_size=16, seed=3)
    fitted = fit_classifier("intent", examples[::2], examples[1::2], args, progress=False)

    def interrupt(staging: Path) -> None:
        assert (staging / "model.safetensors").is_file()  # mid-way through writing
        raise KeyboardInterrupt

    data = VersionData(examples[1::2], examples[::2], "test", {}, len(examples) // 2)
    with pytest.raises(KeyboardInterrupt):
        register_version(tmp_path, fitted, data, 0.0, True, extra_files=interrupt)
    assert list((tmp_path / "intent").iterdir()) == []  # no version, no staging directory
    assert FileModelRegistry(tmp_path).live("intent") is None


@pytest.mark.slow
async def test_dry_run_plans_sentiment_from_agent_labels(
    runtime_models: Path, tmp_path: Path, sqlite_url: str
) -> None:
    models = tmp_path / "models"
    shutil.copytree(runtime_models, models)
    store = SqlConversationStore(sqlite_url)
    await store.start()
    try:
        await SqlAccountStore(store, ConsoleSettings()).add("ana", "operator", PASSWORD)
        labelled = {
            "this is fine i guess": "neutral",
            "thanks, that was quick!": "positive",
            "meh, whatever": "neutral",
            "ok noted": "neutral",
        }
        for i, (text, sentiment) in enumerate(labelled.items()):
            message_id = await _customer_message(store, f"s{i}", text)
            await store.record_feedback(
                Feedback(message_id, corrected_sentiment=sentiment, author="ana")
            )
    finally:
        await store.stop()
    before = _hash_tree(models)
    settings = runtime_settings(models, sqlite_url)
    result = await asyncio.to_thread(
        retrain, settings, RetrainOptions(dry_run=True, progress=False)
    )
    assert _hash_tree(models) == before and not (models / LOCK_FILE).exists()
    by_task = {t.task: t for t in result.tasks}
    assert by_task["intent"].status == "skipped"
    assert by_task["sentiment"].status == "planned"
    plan = by_task["sentiment"].plan
    assert plan["agent_labels"] == 4 and plan["feedback_heldout"] == 1  # 1 of the 3 neutral
    assert plan["frozen_test"] > 0 and 0 < plan["replayed"] <= plan["replay_pool"]
    assert any("sentiment: 4 agent label(s)" in line for line in describe(result))


async def test_rated_answers_give_weak_labels_only_when_asked(sqlite_url: str) -> None:
    from bot.core.records import Understanding

    store = SqlConversationStore(sqlite_url)
    await store.start()
    try:
        texts = {"where is my parcel": "order_status", "refund please": "refund_status"}
        for i, (text, predicted) in enumerate(texts.items()):
            question = await _customer_message(store, f"r{i}", text)
            understanding = Understanding(predicted, 0.9, (), "neutral", 0.0, (), {})
            await store.annotate(question, understanding, "answer", 5.0)
            conversation = (await store.conversation("rest", f"r{i}")).id
            answer = await store.add_message(conversation, Role.BOT, "Here.", reply_to=question)
            # The first answer ends up rated helpful, the second one not (the last rating wins).
            ratings = ["down", "up"] if i == 0 else ["up", "down"]
            for rating in ratings:
                await store.record_feedback(Feedback(answer.id, rating=rating))
        without = await read_feedback(store)
        weak = await read_feedback(store, include_rated=True)
    finally:
        await store.stop()
    assert without.weak_intents == []
    assert [(x.text, x.label, x.weak) for x in weak.weak_intents] == [
        ("where is my parcel", "order_status", True)
    ]
    assert weak.weak_intents[0].example().source == "store:feedback:rating"


# What customers of a shop's bot ask that no intent covers; agents label them out of scope.
OFF_TOPIC = [
    "what's the weather like in paris",
    "can you recommend a good lasagne recipe",
    "who won the football world cup in 1998",
    "tell me a joke about cats",
    "what is the capital of australia",
    "how tall is mount everest",
    "which movie should i watch tonight",
    "what time is it in tokyo right now",
]


async def _agent_labels(
    aiohttp_client: ClientFactory, settings: Any, texts: Sequence[str], intent: str
) -> None:
    """Customers send `texts` over REST; an agent labels each `intent` in the console."""
    app = create_app(settings)
    client = await aiohttp_client(app)
    message_ids = []
    for i, text in enumerate(texts):
        response = await client.post("/api/v1/messages", json={"sender": f"c-{i}", "text": text})
        assert response.status == 200, await response.text()
        message_ids.append((await response.json())["message_id"])
    await SqlAccountStore(app[RUNTIME].store, settings.console).add("ana", "agent", PASSWORD)
    signed = await client.post("/console/api/session", json={"name": "ana", "password": PASSWORD})
    csrf = {"X-CSRF-Token": (await signed.json())["csrf_token"]}
    for message_id in message_ids:
        labelled = await client.post(
            f"/console/api/messages/{message_id}/labels", json={"intent": intent}, headers=csrf
        )
        assert labelled.status == 201, await labelled.text()


async def test_agents_out_of_scope_labels_are_learned_by_retrain(
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 13: "out of scope" in the console is a label like any other; the retrained
    model trains it and its detector uses it (a prediction of it is out of scope)."""
    models = tmp_path / "models"
    shutil.copytree(runtime_models, models)
    config = _config(tmp_path, models, sqlite_url)
    await _agent_labels(
        aiohttp_client, runtime_settings(models, sqlite_url), OFF_TOPIC, "out_of_scope"
    )

    code, result = await _retrain_tiny(config, capsys)
    intent = next(t for t in result["tasks"] if t["task"] == "intent")
    assert intent["version"] == "v2", intent
    version = models / "intent" / "v2"
    assert "out_of_scope" in read_meta(version).labels
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["out_of_scope"]["label"] == "out_of_scope"
    detector = json.loads((version / "oos_detector.json").read_text())
    column = read_meta(version).labels.index("out_of_scope")
    assert column in detector["softmax_columns"] and column not in detector["columns"]
    # Promoted, or kept back by the gate (exit 1): either way v2 learned the label.
    assert code in (0, 1), intent


async def test_a_pair_trained_together_is_retrained_together(
    aiohttp_client: ClientFactory,
    joint_models: Path,
    runtime_models: Path,
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Intent and sentiment trained together (one encoder, one pass in the bot): agents
    label a new intent only, and the retrain trains both from the live pair, sentiment on
    its replay alone, so the candidates keep one encoder; sentiment never goes live on its
    own."""
    from training.registry import FileModelRegistry
    from training.retrain import trained_together

    models = tmp_path / "models"
    shutil.copytree(joint_models, models)
    shutil.copytree(runtime_models / "answers", models / "answers")
    assert trained_together(FileModelRegistry(models))
    config = _config(tmp_path, models, sqlite_url)
    await _agent_labels(
        aiohttp_client, runtime_settings(models, sqlite_url), CANCEL, "cancel_order"
    )

    assert await _run_cli("retrain", "--config", str(config), "--dry-run") == 0
    assert "sentiment: nothing new to learn; trained on its replay" in capsys.readouterr().out
    code, result = await _retrain_tiny(config, capsys)

    tasks = {t["task"]: t for t in result["tasks"]}
    assert tasks["intent"]["version"] == "v2" and tasks["sentiment"]["version"] == "v2", tasks
    assert tasks["sentiment"]["plan"]["replay_only"] is True
    assert tasks["sentiment"]["plan"]["feedback_train"] == 0
    intent, sentiment = (load_file(models / t / "v2" / "model.safetensors") for t in tasks)
    assert intent.keys() == sentiment.keys()
    assert all(torch.equal(intent[k], sentiment[k]) for k in intent)
    assert "cancel_order" in read_meta(models / "intent" / "v2").labels
    live = FileModelRegistry(models)
    if live.live("sentiment") == "v2":
        assert live.live("intent") == "v2"  # never live on its own
    assert code in (0, 1), tasks

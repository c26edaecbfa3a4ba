"""The answer index: search, the directory format, the real encoder, reloading."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bot.core.errors import BadRequestError, ConfigurationError, ModelNotFoundError
from bot.retrieval.embedder import Vectors
from bot.retrieval.index import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    PAIRS_FILE,
    AnswerIndexError,
    EmbeddingAnswerIndex,
    ReloadingAnswerIndex,
)
from bot.retrieval.sources import AnswerPair, merge_pairs

# -- search (hand-made vectors: the ranking logic without a model) -----------------------

WORDS = ("refund", "parcel", "password", "klarna", "invoice")


def keyword_embed(texts: Sequence[str]) -> Vectors:
    """A tiny real embedding: counts of a few keywords, plus a constant so none is zero."""
    rows = [[t.lower().count(w) for w in WORDS] + [0.1] for t in texts]
    return np.asarray(rows, dtype=np.float32)


def keyword_pairs() -> list[AnswerPair]:
    return [
        AnswerPair("where is my refund", "Refund answer.", "refund_status", "a:1", "faq"),
        AnswerPair("refund refund", "Refund answer.", "refund_status", "a:2", "conversation"),
        AnswerPair("refund for the parcel", "Parcel refund.", "refund_status", "a:3", "faq"),
        AnswerPair("my parcel is late", "Parcel answer.", "delivery", "a:4", "faq"),
        AnswerPair("reset my password", "Password answer.", None, "a:5", "faq"),
        AnswerPair("pay with klarna", "Klarna answer.", "payment", "a:6", "faq"),
    ]


def keyword_index() -> EmbeddingAnswerIndex:
    return EmbeddingAnswerIndex.build(keyword_pairs(), model="keywords", embed=keyword_embed)


def test_search_embedding_ranks_by_cosine_and_collapses_repeated_answers() -> None:
    index = keyword_index()
    query = keyword_embed(["refund refund"])[0]
    hits = index.search_embedding(query, k=3)
    # "refund refund" and "where is my refund" share one answer: it is listed once, under
    # the better-matching question.
    assert [h.source for h in hits] == ["a:2", "a:3", "a:4"]
    assert hits[0].text == "Refund answer." and hits[0].question == "refund refund"
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert hits[0].score > hits[1].score > hits[2].score
    assert len(index.search_embedding(query, k=10)) == 5


def test_many_repeats_of_one_answer_do_not_crowd_out_the_others() -> None:
    # 15 phrasings of one answer outscore everything; k=3 still gives 3 different answers.
    pairs = [AnswerPair(f"refund {i}", "Same.", None, f"r:{i}", "faq") for i in range(15)]
    pairs += [AnswerPair(f"parcel {i}", f"Parcel {i}.", None, f"p:{i}", "faq") for i in range(5)]
    vectors = np.asarray([[1.0, 0.01 * i] for i in range(15)] + [[0.5, 1.0]] * 5)
    index = EmbeddingAnswerIndex(pairs, vectors, keyword_embed)
    hits = index.search_embedding(np.asarray([1.0, 0.0]), k=3)
    assert [h.source for h in hits] == ["r:0", "p:0", "p:1"]


def test_an_answer_of_another_intent_is_never_returned_for_an_intent() -> None:
    index = keyword_index()
    parcel = keyword_embed(["parcel"])[0]
    # refund_status's own pairs, then the one without an intent; never delivery's a:4.
    assert [h.source for h in index.search_embedding(parcel, k=3, intent="refund_status")] == [
        "a:3",
        "a:1",
        "a:5",
    ]
    # An intent without pairs of its own gets only pairs without an intent, not delivery's.
    assert [h.source for h in index.search_embedding(parcel, k=3, intent="unknown")] == ["a:5"]
    assert index.search_embedding(parcel, k=1)[0].source == "a:4"  # no intent: all
    assert index.intents == {"refund_status", "delivery", "payment"}


def test_bad_queries_are_explained() -> None:
    index = keyword_index()
    with pytest.raises(BadRequestError, match="k must be at least 1"):
        index.search_embedding(keyword_embed(["x"])[0], k=0)
    with pytest.raises(AnswerIndexError, match="has 3 dimensions but the index holds 6"):
        index.search_embedding(np.ones(3, dtype=np.float32))
    assert index.search_embedding(np.zeros(6, dtype=np.float32)) == []


async def test_search_embeds_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def recording_embed(texts: Sequence[str]) -> Vectors:
        threads.append(threading.get_ident())
        return keyword_embed(texts)

    index = EmbeddingAnswerIndex(
        keyword_pairs(), keyword_embed([p.question for p in keyword_pairs()]), recording_embed
    )
    hits = await index.search("klarna please", k=1)
    assert hits[0].source == "a:6"
    assert threads and loop_thread not in threads
    assert await index.search("   ") == []


async def test_an_async_embedder_replaces_the_worker_thread() -> None:
    queries: list[str] = []

    async def batched(text: str) -> Vectors:
        queries.append(text)
        await asyncio.sleep(0)
        return keyword_embed([text])[0]

    pairs = keyword_pairs()
    index = EmbeddingAnswerIndex(
        pairs, keyword_embed([p.question for p in pairs]), keyword_embed, embed_async=batched
    )
    assert (await index.search("password help", k=1))[0].source == "a:5"
    assert queries == ["password help"]


# -- the directory format ----------------------------------------------------------------


def test_save_load_round_trip_and_damage_detection(tmp_path: Path) -> None:
    index = keyword_index()
    directory = index.save(tmp_path / "answers")
    meta = json.loads((directory / INDEX_FILE).read_text())
    assert (meta["model"], meta["dimension"], meta["count"]) == ("keywords", 6, 6)
    assert meta["fingerprint"] == index.fingerprint and meta["built_at"]
    loaded = EmbeddingAnswerIndex.load(directory, embed=keyword_embed)
    assert loaded.pairs == index.pairs and loaded.model == "keywords"
    query = keyword_embed(["parcel refund"])[0]
    assert loaded.search_embedding(query) == index.search_embedding(query)

    index.save(directory)  # rebuilding over an index replaces it, leaving no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers"]

    lines = (directory / PAIRS_FILE).read_text().splitlines()
    (directory / PAIRS_FILE).write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(AnswerIndexError, match="does not match the fingerprint"):
        EmbeddingAnswerIndex.load(directory, embed=keyword_embed)
    np.save(directory / EMBEDDINGS_FILE, np.zeros((2, 6), dtype=np.float32))
    with pytest.raises(AnswerIndexError, match=r"says 6 pairs .* found embeddings of shape"):
        EmbeddingAnswerIndex.load(directory, embed=keyword_embed)


def test_not_an_index_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="index.json is missing"):
        EmbeddingAnswerIndex.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="is not an answer index"):
        keyword_index().save(tmp_path)
    with pytest.raises(AnswerIndexError, match="one embedding row per pair"):
        EmbeddingAnswerIndex(keyword_pairs(), np.zeros((2, 6), dtype=np.float32), keyword_embed)
    with pytest.raises(AnswerIndexError, match="no question/answer pairs to index"):
        EmbeddingAnswerIndex.build([], embed=keyword_embed)


# -- the real bundled encoder ------------------------------------------------------------

SHOP = [
    ("When will I get my refund?", "Refunds arrive within 5-7 business days.", "refund_status"),
    ("How much does shipping cost?", "Shipping is free over EUR 40.", "shipping_info"),
    ("How do I reset my password?", "Use 'Forgot password' on the login page.", "password"),
    ("Can I pay with Klarna?", "Yes, Klarna pay-later is available.", "payment_methods"),
    ("How do I return an item?", "Go to My orders -> Return an item.", "return_item"),
    ("Where is my parcel?", "The tracking link is in your shipping email.", "order_status"),
    ("Can I cancel my order?", "Yes, while it says Processing.", "cancel_order"),
    ("Do you price match?", "No, but we refund price drops within 7 days.", "price_match"),
    ("How do I delete my account?", "Write to privacy@brightcart.example.", "delete_account"),
    ("Can I get an invoice?", "Invoices are under My orders -> Invoice.", "invoice_request"),
]


@pytest.fixture(scope="module")
def shop_index() -> EmbeddingAnswerIndex:
    pairs = [AnswerPair(q, a, i, f"shop.csv:{n}", "faq") for n, (q, a, i) in enumerate(SHOP, 2)]
    return EmbeddingAnswerIndex.build(pairs, model="bundled")


@pytest.mark.slow
async def test_a_paraphrase_finds_the_right_answer(shop_index: EmbeddingAnswerIndex) -> None:
    assert shop_index.dimension == 384
    hits = await shop_index.search("how long until my money comes back", k=3)
    assert len(hits) == 3
    assert hits[0].text == "Refunds arrive within 5-7 business days."
    assert hits[0].source == "shop.csv:2" and hits[0].question == "When will I get my refund?"
    unrelated = await shop_index.search("what is the capital of Mongolia", k=1)
    assert hits[0].score > unrelated[0].score + 0.2
    password = await shop_index.search("i forgot my login password", k=1)
    assert password[0].text.startswith("Use 'Forgot password'")


@pytest.mark.slow
async def test_intent_filter_and_k_with_the_real_encoder(
    shop_index: EmbeddingAnswerIndex,
) -> None:
    filtered = await shop_index.search("money back", k=3, intent="price_match")
    assert [h.question for h in filtered] == ["Do you price match?"]
    assert len(await shop_index.search("money back", k=5)) == 5
    assert len(await shop_index.search("money back", k=50)) == len(SHOP)


@pytest.mark.slow
async def test_saved_and_loaded_index_answers_identically(
    shop_index: EmbeddingAnswerIndex, tmp_path: Path
) -> None:
    loaded = EmbeddingAnswerIndex.load(shop_index.save(tmp_path / "answers"))
    for query in ("where's my package", "can i get a receipt for my order", "klarna?"):
        assert await loaded.search(query, k=3) == await shop_index.search(query, k=3)


# -- serving a rebuilt index without a restart --------------------------------------------


async def test_reloading_index_swaps_in_a_rebuilt_index_and_survives_a_broken_one(
    tmp_path: Path,
) -> None:
    directory = keyword_index().save(tmp_path / "answers")
    served = ReloadingAnswerIndex(
        directory, lambda d: EmbeddingAnswerIndex.load(d, embed=keyword_embed), interval_s=0.05
    )
    assert not await served.reload_if_changed()  # nothing changed
    assert (await served.search("klarna"))[0].text == "Klarna answer."

    extra = AnswerPair("klarna invoice klarna", "Invoice via Klarna.", None, "s:2", "approved")
    EmbeddingAnswerIndex.build(
        merge_pairs([*keyword_pairs(), extra]), model="keywords", embed=keyword_embed
    ).save(directory)
    await served.start()
    try:
        for _ in range(100):
            if served.reloads:
                break
            await asyncio.sleep(0.05)
        assert served.reloads == 1 and len(served) == 7
        assert (await served.search("klarna invoice klarna"))[0].text == "Invoice via Klarna."

        (directory / INDEX_FILE).write_text("{broken")  # a damaged copy: keep serving
        await asyncio.sleep(0.2)
        assert served.reloads == 1 and len(served) == 7
    finally:
        await served.stop()

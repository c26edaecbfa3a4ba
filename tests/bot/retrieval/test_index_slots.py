"""Answer templates in the index (bot/retrieval/index.py): a pair needing slots is skipped
when the query's conversation lacks one, filled in otherwise, and its slots survive a save."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bot.retrieval.index import EmbeddingAnswerIndex, ReloadingAnswerIndex
from bot.retrieval.sources import AnswerPair
from tests.bot.retrieval.test_index import keyword_embed

TEMPLATE = "Hi {name}, the refund for {order_id} is on its way."


def pairs() -> list[AnswerPair]:
    return [
        AnswerPair(
            "refund refund refund",
            TEMPLATE,
            "refund_status",
            "a:1",
            "conversation",
            ("name", "order_id"),
        ),
        AnswerPair("where is my refund", "Refunds take 5 days.", "refund_status", "a:2", "faq"),
        AnswerPair("reset my password", "Password answer.", None, "a:3", "faq"),
    ]


def index() -> EmbeddingAnswerIndex:
    return EmbeddingAnswerIndex.build(pairs(), model="keywords", embed=keyword_embed)


def query(text: str) -> np.ndarray:
    return keyword_embed([text])[0]


def test_a_template_without_its_slot_is_skipped_for_the_next_answer() -> None:
    found = index().search_embedding(query("refund refund refund"), k=2)
    assert [a.text for a in found] == ["Refunds take 5 days.", "Password answer."]
    found = index().search_embedding(query("refund"), k=3, slots={"name": "Ada"})
    assert "{" not in " ".join(a.text for a in found) and len(found) == 2


def test_a_template_with_its_slots_is_filled_in() -> None:
    found = index().search_embedding(
        query("refund refund refund"), k=2, slots={"order_id": "BC-204719", "name": "Ada"}
    )
    assert [a.text for a in found] == [
        "Hi Ada, the refund for BC-204719 is on its way.",
        "Refunds take 5 days.",
    ]
    # An unknown name is dropped; the order number is what the answer cannot do without.
    (best, _) = index().search_embedding(
        query("refund refund refund"), k=2, slots={"order_id": "BC-204719"}
    )
    assert best.text == "Hi, the refund for BC-204719 is on its way."


def test_the_intent_filter_and_the_slots_combine() -> None:
    # The template lacks its order number; the unlabelled pair may still come, after.
    found = index().search_embedding(query("refund"), k=3, intent="refund_status")
    assert [a.text for a in found] == ["Refunds take 5 days.", "Password answer."]


async def test_slots_survive_save_load_and_the_reloading_index(tmp_path: Path) -> None:
    index().save(tmp_path / "answers")
    loaded = EmbeddingAnswerIndex.load(tmp_path / "answers", embed=keyword_embed)
    assert loaded.pairs[0].slots == ("name", "order_id")
    served = ReloadingAnswerIndex(
        tmp_path / "answers", lambda d: EmbeddingAnswerIndex.load(d, embed=keyword_embed)
    )
    (best,) = await served.search("refund refund refund", k=1, slots={"order_id": "BC-1"})
    assert best.text == "Hi, the refund for BC-1 is on its way."
    (best,) = await served.search("refund refund refund", k=1)
    assert best.text == "Refunds take 5 days."


def test_a_pair_without_slots_keeps_the_old_stored_form() -> None:
    plain = AnswerPair("q", "a", None, "s:1", "faq")
    assert "slots" not in plain.to_dict()
    assert AnswerPair.from_dict(plain.to_dict()) == plain
    templated = pairs()[0]
    assert AnswerPair.from_dict(templated.to_dict()) == templated


def test_an_answer_repeating_its_questions_words_goes_only_to_a_question_naming_them() -> None:
    """A pair with `echoes` ("klarna": the answer was about what that customer asked) is
    skipped for a query that does not name each word, and never found by a vector alone."""
    echoing = AnswerPair(
        "pay with klarna", "Klarna is fine.", None, "a:1", "conversation", echoes=("klarna",)
    )
    general = AnswerPair("pay with card", "Cards are fine.", None, "a:2", "faq")
    index = EmbeddingAnswerIndex.build([echoing, general], model="keywords", embed=keyword_embed)
    vector = query("pay with klarna")
    best = index.search_embedding(vector, k=1, text="can I pay with Klarna?")
    assert [a.text for a in best] == ["Klarna is fine."]
    for text in ("can I pay with paypal?", "klarnas", ""):
        assert [a.text for a in index.search_embedding(vector, k=2, text=text)] == [
            "Cards are fine."
        ]

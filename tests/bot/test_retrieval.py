"""The answer index: pairs from logs and FAQs, validation, de-duplication, search."""

from __future__ import annotations

import asyncio
import csv
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bot.errors import BadRequestError, ConfigurationError, ModelNotFoundError
from bot.retrieval import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    PAIRS_FILE,
    AnswerDataError,
    AnswerIndexError,
    AnswerPair,
    EmbeddingAnswerIndex,
    PairReport,
    Vectors,
    build_answer_pairs,
)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def customer(text: str, intent: str | None = None) -> dict[str, str]:
    message = {"role": "customer", "text": text}
    if intent:
        message["intent"] = intent
    return message


def agent(text: str) -> dict[str, str]:
    return {"role": "agent", "text": text}


REFUND_ANSWER = "Refunds reach your card within 5-7 business days after the return is scanned."


def conversations(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {  # line 1: greeting first, then the real question with its own intent
                "intent": "refund_status",
                "resolved": True,
                "messages": [
                    customer("hi there", "greeting"),
                    agent("Hello! How can I help?"),
                    customer("when do i get my refund for the kettle?", "refund_status"),
                    agent(REFUND_ANSWER),
                    customer("ok thanks a lot", "thanks"),
                ],
            },
            {  # line 2: not resolved -> no pair
                "intent": "order_status",
                "resolved": False,
                "messages": [customer("where is my parcel BC-100200"), agent("Let me check.")],
            },
            {  # line 3: unlabelled turn, conversation intent carried; "human pls" is too short
                "intent": "order_status",
                "resolved": True,
                "messages": [
                    customer("human pls"),
                    agent("Our team works Monday to Saturday."),
                    customer("has my order BC-100300 shipped yet?"),
                    agent("Yes, it shipped this morning with ParcelPro."),
                ],
            },
            {  # line 4: small talk only
                "intent": "thanks",
                "resolved": True,
                "messages": [customer("thank you so much for yesterday"), agent("Anytime!")],
            },
            {  # line 5: a question nobody answered
                "intent": "payment_failed",
                "resolved": True,
                "messages": [customer("my card payment failed twice now")],
            },
            {  # line 6: small-talk conversation label is not carried to a later question
                "intent": "greeting",
                "resolved": True,
                "messages": [
                    customer("hello"),
                    agent("Hi! What can I do for you?"),
                    customer("do you ship to Austria as well?"),
                    agent("Yes, we ship to Austria; delivery takes 3-5 business days."),
                ],
            },
        ],
    )


# -- pairs from conversations ------------------------------------------------------------


def test_resolved_conversations_give_question_and_answer(tmp_path: Path) -> None:
    path = conversations(tmp_path)
    report = PairReport()
    pairs = build_answer_pairs([path], report)
    assert pairs == [
        AnswerPair(
            "when do i get my refund for the kettle?",
            REFUND_ANSWER,
            "refund_status",
            f"{path}:1",
            "conversation",
        ),
        AnswerPair(
            "has my order BC-100300 shipped yet?",
            "Yes, it shipped this morning with ParcelPro.",
            "order_status",
            f"{path}:3",
            "conversation",
        ),
        AnswerPair(
            "do you ship to Austria as well?",
            "Yes, we ship to Austria; delivery takes 3-5 business days.",
            None,
            f"{path}:6",
            "conversation",
        ),
    ]
    assert (report.conversations, report.unresolved, report.without_pair) == (6, 1, 2)
    assert report.read["conversation"] == 3
    assert "pairs: 3 from conversations, 0 from FAQ, 0 approved" in report.lines()


def test_approved_pairs_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "approved.jsonl",
        [{"question": "Do you sell gift cards?", "answer": "Yes, from EUR 10.", "intent": "gift"}],
    )
    [pair] = build_answer_pairs([path])
    assert pair == AnswerPair(
        "Do you sell gift cards?", "Yes, from EUR 10.", "gift", f"{path}:1", "approved"
    )


# -- FAQ files ---------------------------------------------------------------------------


def test_faq_csv_with_multiline_answer_and_optional_intent(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "faq.csv",
        ["Question", "answer", "intent"],
        [
            ["How long does delivery take?", "3-5 business days.\nExpress: 1-2.", "shipping"],
            ["Can I pay with PayPal?", "Yes.", ""],
        ],
    )
    pairs = build_answer_pairs([path])
    assert pairs == [
        AnswerPair(
            "How long does delivery take?",
            "3-5 business days.\nExpress: 1-2.",
            "shipping",
            f"{path}:2",
            "faq",
        ),
        # The first row spans lines 2-3, so the second starts on line 4.
        AnswerPair("Can I pay with PayPal?", "Yes.", None, f"{path}:4", "faq"),
    ]


def test_faq_markdown_headings_and_q_a_lines(tmp_path: Path) -> None:
    path = tmp_path / "faq.md"
    path.write_text(
        "# Brightcart FAQ\n"  # 1: a title, not a question
        "Everything customers ask us.\n"  # 2: introduction, ignored
        "\n"
        "## How do I return an item?\n"  # 4
        "Go to My orders -> Return an item.\n"
        "\n"
        "\n"
        "\n"
        "You have 30 days.\n"
        "### Exceptions\n"  # 10: part of the answer
        "Final-sale items.\n"
        "```\n"
        "## not a heading inside code\n"
        "```\n"
        "**Q:** Do you ship to\n"  # 15: a question over two lines
        "Switzerland?\n"
        "**A:** Not yet.\n"
        "We are working on it.\n",
        encoding="utf-8",
    )
    pairs = build_answer_pairs([path])
    assert [(p.question, p.source, p.kind) for p in pairs] == [
        ("How do I return an item?", f"{path}:4", "faq"),
        ("Do you ship to Switzerland?", f"{path}:15", "faq"),
    ]
    assert pairs[0].answer == (
        "Go to My orders -> Return an item.\n\nYou have 30 days.\n### Exceptions\n"
        "Final-sale items.\n```\n## not a heading inside code\n```"
    )
    assert pairs[1].answer == "Not yet.\nWe are working on it."


def test_a_directory_skips_files_that_are_not_pairs(tmp_path: Path) -> None:
    conversations(tmp_path)
    write_csv(tmp_path / "faq.csv", ["question", "answer"], [["Do you sell gift cards?", "Yes."]])
    write_csv(tmp_path / "utterances.csv", ["text", "intent"], [["where is my order", "x"]])
    report = PairReport()
    pairs = build_answer_pairs([tmp_path, tmp_path / "faq.csv"], report)  # faq.csv read once
    assert report.skipped == [
        f"{tmp_path / 'utterances.csv'} (neither conversations nor question/answer pairs)"
    ]
    assert report.read["faq"] == 1 and len(pairs) == 4
    with pytest.raises(AnswerDataError, match=r'utterances.csv line 1: field "question"'):
        build_answer_pairs([tmp_path / "utterances.csv"])  # named explicitly: an error


# -- validation ------------------------------------------------------------------------


def test_all_problems_name_file_line_and_field(tmp_path: Path) -> None:
    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"resolved": "yes", "messages": [customer("where is my order please")]},
            {"resolved": True, "messages": [{"role": "bot", "text": "hi"}]},
            {"resolved": True, "started_at": "yesterday", "messages": [{"role": "agent"}]},
            {
                "resolved": True,
                "messages": [customer("can i change my address?"), agent("   ")],
            },
        ],
    )
    with chats.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    faq = write_csv(tmp_path / "faq.csv", ["question", "answer"], [["How?", ""], ["", "x"]])
    markdown = tmp_path / "faq.md"
    markdown.write_text("**A:** orphan\n## A question without answer?\n\n## Next?\nAnswer.\n")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(AnswerDataError) as excinfo:
        build_answer_pairs([chats, faq, markdown, missing])
    shown = [str(p) for p in excinfo.value.problems]
    assert shown == [
        f"{missing}: does not exist; check the path",  # paths are checked before reading
        f"{chats} line 1: field \"resolved\": must be true or false, found 'yes'; only "
        "resolved conversations become answers",
        f'{chats} line 2: field "messages[0].role": must be "customer" or "agent"',
        f'{chats} line 3: field "started_at": must be an ISO 8601 time such as '
        "2026-01-04T10:03:00Z, found 'yesterday'",
        f'{chats} line 3: field "messages[0].text": must be a string (the message as '
        "written), found None",
        f'{chats} line 4: field "messages[1].text": is empty, but it is the agent answer of a '
        "resolved conversation; fill in the reply or mark the conversation unresolved",
        f"{chats} line 5: is not valid JSON (Expecting property name enclosed in double quotes "
        "at column 2); write one JSON object per line",
        f'{faq} line 2: field "answer": is empty; every FAQ row needs its answer',
        f'{faq} line 3: field "question": is empty; every FAQ row needs its question',
        f'{markdown} line 1: field "answer": **A:** has no question before it; put a **Q:** '
        "line or a ## heading above it",
        f"{markdown} line 2: field \"answer\": question 'A question without answer?' has no "
        "answer; write it in the paragraphs below the question",
    ]
    assert str(excinfo.value).startswith("11 problems in the answer data; no index was built:")


def test_undecodable_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_bytes(b"question,answer\nWo ist mein Paket?,Gr\xfc\xdfe\n")
    with pytest.raises(AnswerDataError, match=r"faq.csv line 2: bytes .* are not valid UTF-8"):
        build_answer_pairs([path])


def test_no_pairs_at_all_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [{"resolved": False, "messages": [customer("where is my order?"), agent("Shipped.")]}],
    )
    with pytest.raises(AnswerDataError, match="no question/answer pairs were found"):
        build_answer_pairs([path])


# -- de-duplication ----------------------------------------------------------------------


def test_duplicate_questions_keep_faq_then_recent_then_longest(tmp_path: Path) -> None:
    def chat(started_at: str | None, question: str, answer: str) -> dict[str, object]:
        record: dict[str, object] = {
            "resolved": True,
            "messages": [customer(question), agent(answer)],
        }
        if started_at:
            record["started_at"] = started_at
        return record

    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            chat("2026-01-02T10:00:00Z", "Can I pay with Klarna?", "Old answer."),
            chat("2026-03-01T10:00:00Z", "can I pay  with KLARNA?", "Newer answer."),
            chat(None, "Can i pay with klarna?", "Undated, but the longest answer of all."),
            chat("2026-02-01T10:00:00", "Do you sell gift cards online?", "Yes."),
            chat("2026-02-01T10:00:00", "do you sell gift cards online?", "Yes, from EUR 10."),
            chat(None, "Which cards do you take?", "Same answer for many questions."),
            chat(None, "Do you accept Visa cards?", "Same answer for many questions."),
        ],
    )
    faq = write_csv(
        tmp_path / "faq.csv",
        ["question", "answer"],
        [["Which cards do you take?", "Visa, Mastercard and Amex."]],
    )
    report = PairReport()
    pairs = build_answer_pairs([chats, faq], report)
    assert [(p.question, p.answer) for p in pairs] == [
        ("can I pay  with KLARNA?", "Newer answer."),  # most recent beats longest
        ("do you sell gift cards online?", "Yes, from EUR 10."),  # same time: longest
        ("Do you accept Visa cards?", "Same answer for many questions."),  # answers may repeat
        ("Which cards do you take?", "Visa, Mastercard and Amex."),  # the FAQ wins
    ]
    assert report.duplicates_dropped == 4


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


def test_intent_filter_restricts_when_the_intent_exists() -> None:
    index = keyword_index()
    parcel = keyword_embed(["parcel"])[0]
    assert [h.source for h in index.search_embedding(parcel, k=2, intent="refund_status")] == [
        "a:3",
        "a:1",
    ]
    assert index.search_embedding(parcel, k=1, intent="unknown")[0].source == "a:4"
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
    from bot.retrieval import ReloadingAnswerIndex, merge_pairs

    directory = keyword_index().save(tmp_path / "answers")
    served = ReloadingAnswerIndex(
        directory, lambda d: EmbeddingAnswerIndex.load(d, embed=keyword_embed), interval_s=0.05
    )
    assert not await served.reload_if_changed()  # nothing changed
    assert (await served.search("klarna"))[0].text == "Klarna answer."

    approved = AnswerPair(
        "pay with klarna", "Approved Klarna answer.", "payment", "s:1", "approved"
    )
    merged = merge_pairs([*keyword_pairs(), approved])
    # Same question: the FAQ keeps its place over an approved answer; new questions join.
    assert [p.answer for p in merged if p.question == "pay with klarna"] == ["Klarna answer."]
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

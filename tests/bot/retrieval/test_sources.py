"""Reading answer sources: pairs from logs and FAQs, validation, de-duplication."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bot.retrieval.sources import (
    AnswerDataError,
    AnswerPair,
    PairReport,
    build_answer_pairs,
    merge_pairs,
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
                    agent("The tracking link for every order is under My orders."),
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
            "The tracking link for every order is under My orders.",
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
            echoes=("austria",),  # served only to a question naming Austria
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


def test_merge_pairs_keeps_the_faq_over_an_approved_answer() -> None:
    faq = AnswerPair("pay with klarna", "Klarna answer.", "payment", "a:6", "faq")
    other = AnswerPair("reset my password", "Password answer.", None, "a:5", "faq")
    approved = AnswerPair(
        "pay with klarna", "Approved Klarna answer.", "payment", "s:1", "approved"
    )
    new = AnswerPair("klarna invoice klarna", "Invoice via Klarna.", None, "s:2", "approved")
    # Same question: the FAQ keeps its place over an approved answer; new questions join.
    assert merge_pairs([faq, other, approved, new]) == [faq, other, new]


# -- input limits -------------------------------------------------------------------------


def test_texts_over_the_limit_are_located_in_every_kind_of_source(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    long = "why" + "y" * 117  # 120 characters
    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [{"resolved": True, "messages": [customer(long), agent("Because.")]}],
    )
    approved = write_jsonl(
        tmp_path / "approved.jsonl", [{"question": "how do refunds work?", "answer": long}]
    )
    faq = write_csv(tmp_path / "faq.csv", ["question", "answer"], [[long, "An answer."]])
    markdown = tmp_path / "faq.md"
    markdown.write_text(f"## How long does delivery take?\n\n{long}\n")

    with pytest.raises(AnswerDataError) as excinfo:
        build_answer_pairs([chats, approved, faq, markdown], limits=InputLimits(100))

    located = [(Path(p.file).name, p.line, p.field) for p in excinfo.value.problems]
    assert located == [
        ("chats.jsonl", 1, "messages[0].text"),
        ("approved.jsonl", 1, "answer"),
        ("faq.csv", 2, "question"),
        ("faq.md", 1, "answer"),
    ]
    assert all("120 characters" in p.message for p in excinfo.value.problems)
    assert all("split or shorten it" in p.message for p in excinfo.value.problems)


def test_an_oversized_line_or_file_is_refused(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    chats = conversations(tmp_path)
    faq = write_csv(tmp_path / "faq.csv", ["question", "answer"], [["Do you ship abroad?", "Yes."]])

    with pytest.raises(AnswerDataError) as excinfo:
        build_answer_pairs([chats, faq], limits=InputLimits(max_line_bytes=400))
    [problem] = excinfo.value.problems  # only line 1 is longer (453 bytes)
    assert (Path(problem.file).name, problem.line) == ("chats.jsonl", 1)
    assert "longer than 400 bytes" in problem.message

    with pytest.raises(AnswerDataError) as excinfo:
        build_answer_pairs([chats, faq], limits=InputLimits(max_file_bytes=50))
    assert [Path(p.file).name for p in excinfo.value.problems] == ["chats.jsonl"]
    assert "--max-file-mb" in excinfo.value.problems[0].message

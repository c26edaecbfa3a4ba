"""Loading and validating labelled data: every input shape, every problem a user can make."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bot.core.errors import SupportbotError
from training.data import (
    Columns,
    DataValidationError,
    Example,
    LoadReport,
    Problem,
    drop_overlap,
    load_examples,
    normalize,
)

ORDER = ["where is my order", "has my parcel shipped", "track my package", "order status please"]
REFUND = ["where is my refund", "money back please", "refund not received", "refund status"]


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def labelled_rows() -> list[list[str]]:
    return [[t, "order_status"] for t in ORDER] + [[t, "refund_status"] for t in REFUND]


def problems_of(excinfo: pytest.ExceptionInfo[DataValidationError]) -> list[Problem]:
    return excinfo.value.problems


def pairs(examples: list[Example]) -> list[tuple[str, str]]:
    return [(e.text, e.label) for e in examples]


# -- input shapes ------------------------------------------------------------------------


def test_conversations_jsonl_reads_labelled_customer_turns_only(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "intent": "order_status",  # conversation level: labels the first customer turn
                "messages": [
                    {"role": "agent", "text": "Hi, how can I help?", "intent": "greeting"},
                    {"role": "customer", "text": "where is my order", "sentiment": "neutral"},
                    {"role": "agent", "text": "Let me check."},
                    {"role": "customer", "text": "thanks"},  # unlabelled: skipped
                    {
                        "role": "customer",
                        "text": "this is taking forever",
                        "intent": "complaint",
                        "sentiment": "negative",
                    },
                ],
            },
            {
                "messages": [
                    {"role": "customer", "text": "I want a refund", "intent": "refund_request"},
                ],
            },
        ],
    )

    intents = load_examples([path], "intent", min_examples=1)
    sentiments = load_examples([path], "sentiment", min_examples=1)

    assert pairs(intents) == [
        ("where is my order", "order_status"),
        ("this is taking forever", "complaint"),
        ("I want a refund", "refund_request"),
    ]
    assert [e.line for e in intents] == [1, 1, 2]
    # The conversation-level field is an intent: it never labels sentiment.
    assert pairs(sentiments) == [
        ("where is my order", "neutral"),
        ("this is taking forever", "negative"),
    ]


def test_message_intent_wins_over_conversation_intent(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "intent": "order_status",
                "messages": [
                    {"role": "customer", "text": "hello there", "intent": "greeting"},
                    {"role": "customer", "text": "where is my order"},
                ],
            }
        ],
    )

    assert pairs(load_examples([path], "intent", min_examples=1)) == [("hello there", "greeting")]


def test_flat_csv_with_default_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], labelled_rows())

    examples = load_examples([path], "intent", min_examples=4)

    assert pairs(examples) == [(r[0], r[1]) for r in labelled_rows()]
    assert [e.line for e in examples] == list(range(2, 10))
    assert all(e.source == str(path) for e in examples)


def test_flat_csv_label_column_falls_back_to_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ["utterance", "label"], labelled_rows())

    assert len(load_examples([path], "intent", min_examples=4)) == 8


def test_flat_csv_with_named_columns(tmp_path: Path) -> None:
    rows = [["x", text, label, "y"] for text, label in labelled_rows()]
    path = write_csv(tmp_path / "export.csv", ["id", "customer_said", "topic", "agent"], rows)

    examples = load_examples(
        [path], "intent", Columns(text="customer_said", label="topic"), min_examples=4
    )

    assert pairs(examples) == [(r[0], r[1]) for r in labelled_rows()]


def test_tsv_with_commas_in_text(tmp_path: Path) -> None:
    rows = [[f"{t}, thanks", label] for t, label in labelled_rows()]
    path = write_csv(tmp_path / "data.tsv", ["text", "intent"], rows, delimiter="\t")

    examples = load_examples([path], "intent", min_examples=4)

    assert pairs(examples) == [(r[0], r[1]) for r in rows]


def test_flat_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "flat.jsonl", [{"text": t, "intent": label} for t, label in labelled_rows()]
    )

    examples = load_examples([path], "intent", min_examples=4)

    assert pairs(examples) == [(r[0], r[1]) for r in labelled_rows()]
    assert [e.line for e in examples] == list(range(1, 9))


def test_flat_jsonl_with_named_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "flat.jsonl", [{"q": t, "cls": label} for t, label in labelled_rows()]
    )

    examples = load_examples([path], "intent", Columns(text="q", label="cls"), min_examples=4)

    assert len(examples) == 8


RASA_NLU = """\
version: "3.1"
nlu:
- intent: book_trip
  examples: |
    - I want to fly to [Berlin](city)
    - book a trip to [Paris]{"entity": "city"} please
    - get me to Rome
- synonym: Berlin
  examples: |
    - BER
- intent: greet
  examples: |
    - hello
    - hi there
    - good morning
"""


def test_rasa_nlu_yaml_strips_entity_markup(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(RASA_NLU)

    examples = load_examples([path], "intent", min_examples=3)

    assert pairs(examples) == [
        ("I want to fly to Berlin", "book_trip"),
        ("book a trip to Paris please", "book_trip"),
        ("get me to Rome", "book_trip"),
        ("hello", "greet"),
        ("hi there", "greet"),
        ("good morning", "greet"),
    ]
    assert [e.line for e in examples] == [5, 6, 7, 13, 14, 15]


def test_rasa_file_named_for_sentiment_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(RASA_NLU)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "sentiment", min_examples=1)

    [problem] = problems_of(excinfo)
    assert problem.file == str(path)
    assert "intents only" in problem.message
    assert "CSV" in problem.message  # says where sentiment labels can go instead


def test_rasa_examples_not_a_block_string_points_at_the_intent_line(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(
        "nlu:\n"
        "- intent: greet\n"
        "  examples: |\n"
        "    - hello\n"
        "- intent: bye\n"
        "  examples:\n"
        "    - goodbye\n"
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert problem.field == "examples"
    assert "examples: |" in problem.message
    assert problem.line == 5  # the `- intent: bye` line, so the user can find the block


def test_unknown_task_is_refused() -> None:
    with pytest.raises(SupportbotError, match="intent, sentiment"):
        load_examples([Path("whatever.csv")], "topic")


# -- validation problems -----------------------------------------------------------------


def test_empty_text_names_file_line_and_field(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "data.csv", ["text", "intent"], [*labelled_rows(), ["  ", "refund_status"]]
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f'{path} line 10: field "text": ')
    assert "empty" in problem.message and "needs its text" in problem.message
    assert str(problem) in str(excinfo.value)


def test_missing_label_names_file_line_and_field(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], [*labelled_rows(), ["hello?", ""]])

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f'{path} line 10: field "intent": ')
    assert "label the row or remove it" in problem.message


def test_empty_text_and_missing_label_in_conversation_messages(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "messages": [
                    {"role": "customer", "text": "", "intent": "greeting"},
                    {"role": "agent", "text": "Hello?"},
                    {"role": "customer", "text": "where is my order", "intent": " "},
                ]
            }
        ],
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=0)

    assert [(p.line, p.field) for p in problems_of(excinfo)] == [
        (1, "messages[0].text"),
        (1, "messages[2].intent"),
    ]


def test_unknown_column_lists_the_available_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], labelled_rows())

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", Columns(label="topic"), min_examples=1)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f'{path} line 1: field "topic": unknown column')
    assert "text, intent" in problem.message
    assert "--label-column" in problem.message


def test_unknown_field_in_flat_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "flat.jsonl", [{"text": "hi", "intent": "greeting"}])

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", Columns(text="message"), min_examples=1)

    [problem] = problems_of(excinfo)
    assert problem.field == "message"
    assert "intent, text" in problem.message and "--text-column" in problem.message


def test_label_with_too_few_examples(tmp_path: Path) -> None:
    rows = [*labelled_rows(), ["hi", "greeting"], ["hello", "greeting"]]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=3)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f'{path} line 10: field "intent": ')
    assert '"greeting" has 2 distinct example(s)' in problem.message
    assert "at least 3" in problem.message and "--min-examples" in problem.message


def test_min_examples_counts_distinct_texts(tmp_path: Path) -> None:
    rows = [*labelled_rows(), ["hi", "greeting"], ["HI ", "greeting"], ["hi", "greeting"]]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)

    with pytest.raises(DataValidationError, match='"greeting" has 1 distinct'):
        load_examples([path], "intent", min_examples=2)


def test_conflicting_labels_mention_both_lines(tmp_path: Path) -> None:
    rows = [*labelled_rows(), ["Where is my  ORDER", "refund_status"]]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert (problem.file, problem.line, problem.field) == (str(path), 2, "text")
    assert f"{path} line 2 says 'order_status'" in problem.message
    assert f"{path} line 10 says 'refund_status'" in problem.message
    assert "keep one label" in problem.message


def test_conflicting_labels_across_files(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", ["text", "intent"], labelled_rows())
    second = write_csv(tmp_path / "b.csv", ["text", "intent"], [["refund status", "order_status"]])

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([first, second], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert f"{first} line 9" in problem.message and f"{second} line 2" in problem.message


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(
        b"text,intent\n"
        b"where is my order,order_status\n"
        b"caf\xe9 order,order_status\n"
        b"refund please,refund_status\n"
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert (problem.file, problem.line) == (str(path), 3)
    assert str(problem).startswith(f"{path} line 3: ")
    assert "UTF-8" in problem.message and "iconv" in problem.message


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbftext,intent\r\ncaf\xc3\xa9 order,order_status\r\n")

    assert pairs(load_examples([path], "intent", min_examples=1)) == [
        ("café order", "order_status")
    ]


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "flat.jsonl"
    path.write_text(
        '{"text": "where is my order", "intent": "order_status"}\n'
        "\n"
        '{"text": "refund?", "intent": \n'
        "[1, 2]\n"
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    bad_json, not_object = problems_of(excinfo)
    assert bad_json.line == 3 and "is not valid JSON" in bad_json.message
    assert "one JSON object per line" in bad_json.message
    assert not_object.line == 4 and "not a JSON object" in not_object.message


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "text,intent\nwhere is my order,order_status\nhi, is my refund done,refund_status\n"
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f"{path} line 3: has 3 fields but the header has 2")
    assert "quote" in problem.message


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([missing], "intent")

    [problem] = problems_of(excinfo)
    assert str(problem) == f"{missing}: does not exist; check the path"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("where is my order\torder_status\n")

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent")

    [problem] = problems_of(excinfo)
    assert problem.file == str(path)
    assert "'.txt'" in problem.message and ".csv" in problem.message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(
        b"text,intent\n"
        + "".join(f"{t},{label}\n" for t, label in labelled_rows()).encode()
        + b",order_status\n"  # line 10: empty text
        + b"hello,\n"  # line 11: missing label
        + b"a,b,c\n"  # line 12: wrong field count
        + b"caf\xe9,order_status\n"  # line 13: not UTF-8
        + b"WHERE IS MY ORDER,refund_status\n"  # line 14: conflicts with line 2
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path, tmp_path / "missing.csv"], "intent", min_examples=1)

    problems = problems_of(excinfo)
    lines = sorted(p.line for p in problems if p.line is not None)
    assert lines == [2, 10, 11, 12, 13]
    assert any(p.file == str(tmp_path / "missing.csv") for p in problems)
    message = str(excinfo.value)
    assert message.startswith("6 problems in the training data; nothing was trained")
    assert all(str(p) in message for p in problems)


def test_long_problem_lists_are_truncated_in_the_message(tmp_path: Path) -> None:
    rows = [[f"text {i}", ""] for i in range(DataValidationError.MAX_SHOWN + 5)]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    assert len(excinfo.value.problems) == DataValidationError.MAX_SHOWN + 5
    assert "... and 5 more problems" in str(excinfo.value)


# -- directories -------------------------------------------------------------------------


def test_directory_skips_files_without_labels_for_the_task(tmp_path: Path) -> None:
    write_csv(tmp_path / "faq.csv", ["question", "answer"], [["how to pay?", "by card"]])
    write_csv(tmp_path / "intents.csv", ["text", "intent"], labelled_rows())
    (tmp_path / "notes.md").write_text("not data")
    report = LoadReport()

    examples = load_examples([tmp_path], "intent", min_examples=4, report=report)

    assert len(examples) == 8
    assert report.files == [str(tmp_path / "intents.csv")]
    assert report.skipped == [f"{tmp_path / 'faq.csv'} (no intent labels)"]
    assert f"skipped {tmp_path / 'faq.csv'} (no intent labels)" in report.lines()


def test_directory_skips_rasa_file_for_sentiment(tmp_path: Path) -> None:
    (tmp_path / "nlu.yml").write_text(RASA_NLU)
    write_csv(tmp_path / "sentiment.csv", ["text", "sentiment"], [["great", "positive"]])
    report = LoadReport()

    examples = load_examples([tmp_path], "sentiment", min_examples=1, report=report)

    assert pairs(examples) == [("great", "positive")]
    assert report.skipped == [f"{tmp_path / 'nlu.yml'} (no sentiment labels)"]


def test_explicitly_named_file_without_labels_is_an_error(tmp_path: Path) -> None:
    faq = write_csv(tmp_path / "faq.csv", ["question", "answer"], [["how to pay?", "by card"]])

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([faq], "intent", min_examples=1)

    problems = problems_of(excinfo)
    assert {p.file for p in problems} == {str(faq)}
    assert any("--text-column" in p.message for p in problems)
    assert any("--label-column" in p.message for p in problems)
    assert all("question, answer" in p.message for p in problems)


def test_directory_with_nothing_labelled_is_an_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "faq.csv", ["question", "answer"], [["how to pay?", "by card"]])

    with pytest.raises(DataValidationError, match="no labelled examples for intent"):
        load_examples([tmp_path], "intent")


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"holds no .*\.jsonl"):
        load_examples([tmp_path], "intent")


# -- duplicates and overlap --------------------------------------------------------------


def test_normalize_ignores_case_and_spacing() -> None:
    assert normalize("  Where IS\tmy\n order ") == normalize("where is my order")
    assert normalize("where is my order") != normalize("where is my orders")


def test_exact_duplicates_with_the_same_label_are_merged(tmp_path: Path) -> None:
    rows = [
        *labelled_rows(),
        ["WHERE is my   order", "order_status"],
        [" refund status ", "refund_status"],
    ]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)
    report = LoadReport()

    examples = load_examples([path], "intent", min_examples=4, report=report)

    assert pairs(examples) == [(r[0], r[1]) for r in labelled_rows()]  # first spelling kept
    assert report.duplicates_merged == 2
    assert "merged 2 exact duplicate text(s) with the same label" in report.lines()


def test_drop_overlap_removes_training_texts_in_the_test_set() -> None:
    train = [Example(t, "order_status", "train.csv", i) for i, t in enumerate(ORDER, start=2)]
    test = [
        Example("Where is my ORDER ", "order_status", "test.csv", 2),
        Example("something else", "order_status", "test.csv", 3),
    ]
    report = LoadReport()

    kept = drop_overlap(train, test, report)

    assert [e.text for e in kept] == ORDER[1:]
    assert report.removed_overlapping_test == 1
    assert any("1 training text(s) that also appear in the test set" in x for x in report.lines())


def test_a_quoted_text_over_several_lines_keeps_the_line_numbers_right(tmp_path: Path) -> None:
    from training.data import DataValidationError, load_examples

    path = tmp_path / "multiline.csv"
    path.write_text('text,intent\n"where is\nmy order",order_status\n,order_status\n')
    with pytest.raises(DataValidationError) as info:
        load_examples([path], "intent", min_examples=0)
    [problem] = info.value.problems
    assert problem.line == 4 and problem.field == "text"


# -- input limits and label names ---------------------------------------------------------


def test_a_text_over_the_limit_names_file_line_and_field(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    rows = [*labelled_rows(), ["x" * 10_000, "order_status"], ["y" * 10_001, "order_status"]]
    path = write_csv(tmp_path / "data.csv", ["text", "intent"], rows)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert str(problem).startswith(f'{path} line 11: field "text": is 10,001 characters long')
    assert "split or shorten it" in problem.message and "--max-text-chars" in problem.message
    assert len(str(excinfo.value)) < 500  # the text itself is not repeated
    # A higher limit takes it.
    examples = load_examples([path], "intent", min_examples=1, limits=InputLimits(20_000))
    assert len(examples) == 10


def test_a_long_text_in_a_conversation_names_the_message(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "messages": [
                    {"role": "customer", "text": "where is it " * 5, "intent": "order_status"}
                ]
            }
        ],
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=0, limits=InputLimits(max_text_chars=20))

    [problem] = problems_of(excinfo)
    assert (problem.line, problem.field) == (1, "messages[0].text")


def test_an_oversized_line_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    path = tmp_path / "flat.jsonl"
    records = [{"text": t, "intent": label} for t, label in labelled_rows()]
    records.insert(2, {"text": "z" * 5000, "intent": "order_status"})
    write_jsonl(path, records)

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1, limits=InputLimits(max_line_bytes=1000))

    [problem] = problems_of(excinfo)
    assert (problem.file, problem.line) == (str(path), 3)
    assert "longer than 1,000 bytes" in problem.message


def test_a_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    from bot.core.datafiles import InputLimits

    path = write_csv(tmp_path / "data.csv", ["text", "intent"], labelled_rows())

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1, limits=InputLimits(max_file_bytes=100))

    [problem] = problems_of(excinfo)
    assert problem.file == str(path) and "--max-file-mb" in problem.message


@pytest.mark.parametrize("label", ["../../evil", "nul\x00byte", "a" * 5000, "a/b", ".env"])
def test_labels_that_are_no_names_are_refused_with_file_line_and_label(
    tmp_path: Path, label: str
) -> None:
    path = write_jsonl(
        tmp_path / "flat.jsonl",
        [
            *({"text": t, "intent": lb} for t, lb in labelled_rows()),
            {"text": "hm", "intent": label},
        ],
    )

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert (problem.file, problem.line, problem.field) == (str(path), 9, "intent")
    assert repr(label[:20])[1:-1] in problem.message  # the label, shown (abbreviated)
    assert "\x00" not in str(problem) and len(str(problem)) < 400


def test_labels_of_public_data_sets_load(tmp_path: Path) -> None:
    labels = ["reverted_card_payment?", "AddToPlaylist", "Late Flight", "Can't Tell", "oos"]
    rows = [[f"example {i} for {label}", label] for label in labels for i in range(2)]
    path = write_csv(tmp_path / "data.csv", ["text", "category"], rows)

    examples = load_examples([path], "intent", min_examples=2)

    assert sorted({e.label for e in examples}) == sorted(labels)


def test_a_label_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "flat.jsonl", [{"text": "hello", "intent": {"name": "greet"}}])

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert problem.field == "intent" and "string" in problem.message


def test_rasa_yaml_aliases_are_refused_so_a_small_file_cannot_expand(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    examples = "".join(f"    - {t}\n" for t in ORDER)
    blocks = "".join(f"- intent: i{n}\n  examples: *e\n" for n in range(1000))
    path.write_text(f"nlu:\n- intent: order_status\n  examples: &e |\n{examples}{blocks}")

    with pytest.raises(DataValidationError) as excinfo:
        load_examples([path], "intent", min_examples=1)

    [problem] = problems_of(excinfo)
    assert problem.line == 9  # the first `examples: *e`
    assert "alias" in problem.message and "write the examples out" in problem.message


# -- --on-conflict (issue 18): noisy logs with a few texts under two labels -----------------


def _noisy(tmp_path: Path) -> Path:
    rows = [
        *labelled_rows(),
        ["where is my order", "order_status"],  # a plain duplicate: merged, not a conflict
        ["Where is my  ORDER", "refund_status"],  # 2 x order_status vs 1: majority keeps it
        ["cancel it", "order_status"],
        ["cancel it", "refund_status"],  # a tie: majority drops it too
    ]
    return write_csv(tmp_path / "noisy.csv", ["text", "intent"], rows)


def test_on_conflict_error_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as excinfo:
        load_examples([_noisy(tmp_path)], "intent", min_examples=1)
    messages = [p.message for p in problems_of(excinfo)]
    assert len(messages) == 2
    assert all("--on-conflict majority" in m and "--on-conflict drop" in m for m in messages)


def test_on_conflict_majority_keeps_the_most_frequent_label_and_drops_ties(
    tmp_path: Path,
) -> None:
    report = LoadReport()
    examples = load_examples(
        [_noisy(tmp_path)], "intent", min_examples=1, report=report, on_conflict="majority"
    )
    by_text = {e.text.casefold(): e.label for e in examples}
    assert by_text["where is my order"] == "order_status"
    assert "cancel it" not in by_text
    assert (report.conflicts_majority, report.conflicts_dropped) == (1, 1)
    lines = report.lines()
    assert any(line.startswith("kept 1 text(s) with conflicting labels") for line in lines)
    assert any(line.startswith("dropped 1 text(s) with conflicting labels") for line in lines)


def test_on_conflict_drop_leaves_out_every_copy(tmp_path: Path) -> None:
    report = LoadReport()
    examples = load_examples(
        [_noisy(tmp_path)], "intent", min_examples=1, report=report, on_conflict="drop"
    )
    texts = {e.text.casefold() for e in examples}
    assert "where is my order" not in texts and "cancel it" not in texts
    assert len(examples) == len(labelled_rows()) - 1
    assert (report.conflicts_majority, report.conflicts_dropped) == (0, 2)

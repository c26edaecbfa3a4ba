"""Out-of-scope detection as `supportbot train` and `supportbot evaluate` give it: the detector
fitted with every intent model, saved beside it, reported, and evaluated on out-of-scope texts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bot.core.errors import ConfigurationError
from bot.nlu.oos import ARRAYS_FILE, DETECTOR_FILE, OosDetector
from tests.conftest import TINY_INTENTS
from training.arguments import TrainingArguments
from training.data import EvaluationDataError, load_texts
from training.ood import OosOptions, backbone_sentences, fit_for_model
from training.pipeline import TrainingRun, train_task

OFF_TOPIC = [
    "what is the capital of australia",
    "recommend a vegan lasagne recipe",
    "my cat is sick, what should i do",
    "who won the football world cup in 1998",
]


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"oos_method": "cosine"}, "oos_method must be none, one of"),
        ({"oos_method": "knn+energy+msp+mahalanobis"}, "oos_method must be none, one of"),
        ({"oos_method": "knn+knn"}, "oos_method must be none, one of"),
        ({"oos_keep_recall": 1.0}, "oos_keep_recall must be in [0.5, 1)"),
        ({"oos_keep_recall": 0.2}, "oos_keep_recall must be in [0.5, 1)"),
        ({"oos_label": " "}, "oos_label must be a label name"),
    ],
)
def test_bad_out_of_scope_arguments_are_refused(changes: dict, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrainingArguments(**changes)
    assert problem in str(caught.value)


def test_out_of_scope_arguments_round_trip_and_older_versions_get_the_defaults() -> None:
    args = TrainingArguments(oos_method="mahalanobis+msp", oos_keep_recall=0.95, oos_label="oos")
    assert TrainingArguments.from_dict(args.to_dict()) == args
    older = {k: v for k, v in args.to_dict().items() if not k.startswith("oos_")}
    assert TrainingArguments.from_dict(older).oos_method == "knn+energy+sentence-knn"
    assert TrainingArguments(oos_method="none").oos_method == "none"


def test_a_configured_out_of_scope_label_missing_from_the_data_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'chit_chat' is not a label"):
        fit_for_model(
            None,  # type: ignore[arg-type]  (refused before the model is used)
            None,
            ("greeting", "order_status"),
            [],
            [],
            1.0,
            64,
            OosOptions(),
            3,
            oos_label="chit_chat",
        )


# -- out-of-scope texts for `evaluate --oos-data` -----------------------------------------------


def test_out_of_scope_texts_are_read_from_text_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("what is the capital of australia\n\n  Weather today?  \n")
    with (tmp_path / "b.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [["query", "label"], ["weather today?", "oos"], ["a joke", ""]]
        )
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "sing me a song", "intent": "x"}) + "\n")
    texts = load_texts([tmp_path / "a.txt", tmp_path / "b.csv", tmp_path / "c.jsonl"])
    # Repeats (case and spacing aside) are kept once; labels are ignored.
    assert texts == [
        "what is the capital of australia",
        "Weather today?",
        "a joke",
        "sing me a song",
    ]


def test_out_of_scope_texts_without_a_text_column_are_refused_naming_file_and_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "b.csv").write_text("question,label\nweather?,oos\n")
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(EvaluationDataError) as caught:
        load_texts([tmp_path / "b.csv", tmp_path / "c.jsonl"])
    message = str(caught.value)
    assert "b.csv" in message and "--text-column" in message
    assert "c.jsonl" in message and "line 2" in message


def test_an_empty_out_of_scope_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(EvaluationDataError, match="holds no texts"):
        load_texts([tmp_path / "empty.txt"])


# -- through real training ----------------------------------------------------------------------


@pytest.mark.slow
def test_training_saves_and_reports_a_detector_that_declines_off_topic_messages(
    trained_intent: TrainingRun,
) -> None:
    from bot.nlu.classifier import TransformerClassifier

    path = trained_intent.version.path
    assert (path / DETECTOR_FILE).is_file() and (path / ARRAYS_FILE).is_file()
    summary = trained_intent.metrics["out_of_scope"]
    assert summary["method"] == "knn+energy+sentence-knn" and summary["keep_recall"] == 0.98
    assert summary["leave_intents_out"]["auroc"] > 0.5
    assert "out of scope: knn+energy+sentence-knn, keeping 98% of right in-scope answers" in (
        trained_intent.report
    )
    assert "served as knn+energy where the answer index embeds with another" in (
        trained_intent.report
    )
    assert "of in-scope messages declined" in trained_intent.report
    detector = OosDetector.load_if_present(path)
    assert detector is not None and detector.oos_column is None
    assert detector.fallback is not None and detector.fallback.method == "knn+energy"
    classifier = TransformerClassifier(path)
    in_scope = ["where is my parcel, it has not arrived", "i forgot my password, help", "hiya!"]
    texts = in_scope + OFF_TOPIC
    pooled, logits = classifier.pooled_and_logits(texts)
    sentences = backbone_sentences("bundled").embed(texts)
    _, declined = detector.decide(pooled.numpy(), logits.numpy(), sentences)
    assert declined.tolist() == [False] * 3 + [True] * 4
    _, declined = detector.fallback.decide(pooled.numpy(), logits.numpy())
    assert declined.tolist() == [False] * 3 + [True] * 4


@pytest.mark.slow
def test_evaluate_oos_data_reports_recall_accuracy_auroc_and_fpr(
    trained_intent: TrainingRun, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.app.cli import main

    off_topic = tmp_path / "off_topic.txt"
    off_topic.write_text("\n".join(OFF_TOPIC) + "\n")
    path = str(trained_intent.version.path)
    assert main(["evaluate", path, "--data", str(tiny_csv), "--oos-data", str(off_topic)]) == 0
    out = capsys.readouterr().out
    assert "out of scope (knn+energy" in out and "declined (recall)     100.0%" in out
    assert "answering all" in out and "AUROC" in out and "FPR at 95% in-scope" in out
    assert (
        main(["evaluate", path, "--data", str(tiny_csv), "--oos-data", str(off_topic), "--json"])
        == 0
    )
    figures = json.loads(capsys.readouterr().out)["out_of_scope"]
    assert figures["n_oos"] == len(OFF_TOPIC) and figures["oos_recall"] == 1.0
    assert figures["n_in_scope"] == sum(len(t) for t in TINY_INTENTS.values())
    assert figures["accuracy_with_declines"] <= figures["accuracy"]
    assert 0.5 < figures["auroc"] <= 1.0


@pytest.mark.slow
def test_evaluate_oos_data_on_a_model_without_a_detector_says_what_to_do(
    trained_intent: TrainingRun, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from bot.app.cli import main

    copy = tmp_path / "v1"
    shutil.copytree(trained_intent.version.path, copy)
    (copy / DETECTOR_FILE).unlink()
    (tmp_path / "off.txt").write_text("weather?\n")
    status = main(
        ["evaluate", str(copy), "--data", str(tiny_csv), "--oos-data", str(tmp_path / "off.txt")]
    )
    err = capsys.readouterr().err
    assert status == 2 and "has no out-of-scope detector" in err and "train" in err


@pytest.mark.slow
def test_an_out_of_scope_label_is_trained_on_and_sets_the_threshold(tmp_path: Path) -> None:
    """Rasa's `nlu_fallback` convention: its examples are a label the head learns, no
    neighbour of the detector, and real out-of-scope messages for the threshold."""
    data = tmp_path / "shop.csv"
    chit_chat = [
        "what's the weather like today",
        "tell me a joke",
        "who is the president of france",
        "what's your favourite colour",
        "sing me a song",
        "how tall is mount everest",
        "recommend a good movie",
        "what time is it in tokyo",
        "do you like pizza",
        "what is the meaning of life",
    ]
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent"])
        for intent, texts in TINY_INTENTS.items():
            writer.writerows([text, intent] for text in texts)
        writer.writerows([text, "nlu_fallback"] for text in chit_chat)
    args = TrainingArguments(epochs=4, batch_size=8, seed=7, validation_fraction=0.2)
    run = train_task("intent", [data], tmp_path / "models", args, progress=False)
    detector = OosDetector.load_if_present(run.version.path)
    assert detector is not None
    assert run.metrics["out_of_scope"]["label"] == "nlu_fallback"
    assert "label 'nlu_fallback' trained as out of scope" in run.report
    column = detector.oos_column
    assert column is not None and column not in detector.columns
    estimate = detector.estimate
    assert estimate is not None and estimate.real_oos >= 1
    # Neither neighbour bank holds an out-of-scope example: 40 in-scope training rows at most.
    assert len(detector.bank) <= sum(len(t) for t in TINY_INTENTS.values())
    assert len(detector.sentence_bank) == len(detector.bank)
    # Predicting the label itself is out of scope, whatever the score.
    logits = np.zeros((1, len(detector.softmax_columns)), dtype=np.float32)
    logits[0, column] = 10.0
    embedding, sentence = detector.bank[:1], detector.sentence_bank[:1]
    assert detector.decide(embedding, logits, sentence)[1].tolist() == [True]
    assert detector.fallback is not None
    assert detector.fallback.decide(embedding, logits)[1].tolist() == [True]

"""Learned entities: annotated data (Rasa markup, JSONL spans) with located errors, span
metrics, and a real fine-tune of the bundled backbone that finds a city it never saw."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot.app.cli import main
from bot.nlu.entity_model import (
    TokenTagger,
    best_tags,
    bio_tags,
    decode_spans,
    encode_with_offsets,
    is_entity_model_dir,
)
from training.data import load_examples
from training.entities import (
    MIN_VALIDATION,
    EntityDataError,
    Span,
    crf_nll,
    load_annotated,
    parse_markup,
    piece_targets,
    span_metrics,
    word_tags,
)

TEMPLATES = (
    "I live in [{city}](city)",
    "please ship my order to [{city}](city)",
    "do you deliver to [{city}](city)?",
    "my parcel is stuck in [{city}](city) since monday",
    "is there a pickup point in [{city}](city)",
)
CITIES = ("Berlin", "Paris", "London", "Rome", "Vienna", "Lisbon", "Oslo", "Dublin")
NEGATIVES = ("where is my order", "I want a refund", "hello there", "thanks a lot")


@contextmanager
def one_thread() -> Iterator[None]:
    """Train on one torch thread: two on a busy two-core machine made a step 5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rasa_file(path: Path) -> Path:
    lines = ["version: '3.1'", "nlu:", "- intent: delivery", "  examples: |"]
    for i, template in enumerate(TEMPLATES):
        for city in CITIES[i % 3 :: 1][:7]:
            lines.append(f"    - {template.format(city=city)}")
    lines.append('    - ship it to [NYC]{"entity": "city", "value": "New York"}')
    lines += ["- intent: other", "  examples: |", *(f"    - {t}" for t in NEGATIVES)]
    path.write_text("\n".join(lines) + "\n")
    return path


def jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_markup_gives_plain_text_spans_and_synonym_values() -> None:
    text, spans, problems = parse_markup(
        'fly to [Berlin](city) from [NYC](city:New York) on [monday]{"entity": "day"}'
    )
    assert problems == []
    assert text == "fly to Berlin from NYC on monday"
    assert [(s.entity, text[s.start : s.end], s.value) for s in spans] == [
        ("city", "Berlin", None),
        ("city", "NYC", "New York"),
        ("day", "monday", None),
    ]


def test_rasa_entities_are_loaded_and_intent_loading_still_strips_the_markup(
    tmp_path: Path,
) -> None:
    path = rasa_file(tmp_path / "nlu.yml")
    data = load_annotated([path])
    assert data.entities == ("city",)
    nyc = next(e for e in data.examples if "NYC" in e.text)
    assert nyc.text == "ship it to NYC"
    assert data.synonyms == {"city": {"nyc": "New York"}}
    assert any(not e.spans for e in data.examples)  # sentences with no entity are kept
    intents = load_examples([path], "intent", min_examples=0)
    assert "ship it to NYC" in {e.text for e in intents}
    assert not any("[" in e.text for e in intents)


def test_rasa_synonym_blocks_give_values(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(
        "nlu:\n- intent: travel\n  examples: |\n    - go to [Big Apple](city)\n"
        "- synonym: New York\n  examples: |\n    - big apple\n"
    )
    assert load_annotated([path]).synonyms == {"city": {"big apple": "New York"}}


def test_bad_spans_are_reported_with_file_line_and_field(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "spans.jsonl",
        [
            {"text": "to Berlin", "entities": [{"start": 3, "end": 9, "entity": "city"}]},
            {"text": "to Berlin", "entities": [{"start": 3, "end": 30, "entity": "city"}]},
            {
                "text": "New York City",
                "entities": [
                    {"start": 0, "end": 8, "entity": "city"},
                    {"start": 4, "end": 13, "entity": "city"},
                ],
            },
            {"text": "to Rome", "entities": [{"start": 3, "end": 7, "entity": " "}]},
            {"text": "", "entities": []},
        ],
    )
    with pytest.raises(EntityDataError) as caught:
        load_annotated([path])
    message = str(caught.value)
    assert "4 problems" in message
    assert f'{path} line 2: field "entities[0].end": 30 is beyond the text (9 characters)' in (
        message
    )
    assert f'{path} line 3: field "entities": spans overlap: city 0:8 and city 4:13' in message
    assert f'{path} line 4: field "entities[0].entity": is missing or empty' in message
    assert f'{path} line 5: field "text": is missing or empty' in message


def test_bad_markup_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(
        "nlu:\n- intent: travel\n  examples: |\n    - go to [Berlin](city)\n"
        "    - go to [Paris]()\n    - go to [Rome]{entity: city}\n"
    )
    with pytest.raises(EntityDataError) as caught:
        load_annotated([path])
    message = str(caught.value)
    assert f'{path} line 5: field "examples": [Paris](): the entity name is empty' in message
    assert f"{path} line 6" in message and "is not valid JSON" in message


def test_data_without_any_entity_is_refused(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "plain.jsonl", [{"text": "hello"}])
    with pytest.raises(EntityDataError, match="holds no annotated entity"):
        load_annotated([path])


def test_span_metrics_count_exact_spans_per_entity() -> None:
    gold = [[("city", 0, 6), ("day", 10, 16)], [("city", 3, 8)]]
    predicted = [[("city", 0, 6), ("day", 10, 15)], [("city", 3, 8), ("day", 0, 2)]]
    metrics = span_metrics(gold, predicted)
    assert metrics["per_entity"]["city"]["f1"] == 1.0
    assert metrics["per_entity"]["day"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 2,
    }
    assert metrics["micro_f1"] == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3), abs=1e-4)
    assert metrics["macro_f1"] == 0.5
    assert metrics["exact_match"] == 0.0


def test_bio_targets_and_constrained_decoding_round_trip() -> None:
    import torch
    from transformers import AutoTokenizer

    from bot.nlu.artifacts import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("bundled"))
    text = "ship to Los Angeles tomorrow"
    spans = [Span("city", 8, 19)]
    tags = bio_tags(["city", "state"])
    encoded = encode_with_offsets(tokenizer, [text], 32)
    index = {t: i for i, t in enumerate(tags)}
    targets = piece_targets(spans, encoded.offsets[0], encoded.words[0], index, "all")
    named = [tags[t] if t >= 0 else None for t in targets]
    assert named == [None, "O", "O", "B-city", "I-city", "O", None]
    # "Angeles" scored as the inside of a state, after the beginning of a city: argmax gives
    # two fragments; the BIO-constrained best path keeps one city.
    logits = torch.full((len(targets), len(tags)), -5.0)
    for position, tag in enumerate(["O", "O", "O", "B-city", "I-state", "O", "O"]):
        logits[position, index[tag]] = 5.0
    logits[4, index["I-city"]] = 4.0
    predicted = best_tags(logits, encoded.words[0], tags)
    assert decode_spans(text, predicted, encoded.offsets[0], encoded.words[0]) == [("city", 8, 19)]
    argmax = [tags[int(k)] for k in logits.argmax(-1)]
    assert len(decode_spans(text, argmax, encoded.offsets[0], encoded.words[0])) == 2

    # Learned transitions (a CRF layer's) count in the path: "Angeles" alone reads as outside,
    # but a city's beginning is strongly followed by its inside.
    logits[4] = -5.0
    logits[4, index["O"]], logits[4, index["I-city"]] = 1.0, 0.5
    plain = best_tags(logits, encoded.words[0], tags)
    assert decode_spans(text, plain, encoded.offsets[0], encoded.words[0]) == [("city", 8, 11)]
    transitions = torch.zeros(len(tags) + 1, len(tags))
    transitions[index["B-city"], index["I-city"]] = 2.0
    steered = best_tags(logits, encoded.words[0], tags, transitions)
    assert decode_spans(text, steered, encoded.offsets[0], encoded.words[0]) == [("city", 8, 19)]


def test_the_crf_loss_is_minus_the_log_share_of_the_gold_path_among_all_paths() -> None:
    import itertools

    import torch

    torch.manual_seed(0)
    batch, words, n_tags = 3, 4, 3
    emissions = torch.randn(batch, words, n_tags)
    transitions = torch.randn(n_tags + 1, n_tags)
    gold = torch.randint(0, n_tags, (batch, words))
    lengths = [4, 2, 1]
    mask = torch.tensor([[i < n for i in range(words)] for n in lengths])

    def score(b: int, path: tuple[int, ...]) -> torch.Tensor:
        total = transitions[n_tags, path[0]] + emissions[b, 0, path[0]]
        for i in range(1, len(path)):
            total = total + transitions[path[i - 1], path[i]] + emissions[b, i, path[i]]
        return total

    nll = crf_nll(emissions, gold, mask, transitions)
    for b, n in enumerate(lengths):
        every = [score(b, p) for p in itertools.product(range(n_tags), repeat=n)]
        expected = torch.logsumexp(torch.stack(every), 0) - score(b, tuple(gold[b, :n].tolist()))
        assert float(nll[b]) == pytest.approx(float(expected), abs=1e-4)
    # The gold path is valid BIO: a span that began inside the previous word begins here.
    tags = bio_tags(["city"])
    assert word_tags([0, 2, 2, -100, 1, 2], tags) == [0, 1, 2, 0, 1, 2]
    # Padding words change nothing.
    longer = crf_nll(
        torch.cat([emissions, torch.randn(batch, 2, n_tags)], 1),
        torch.cat([gold, torch.zeros(batch, 2, dtype=torch.long)], 1),
        torch.cat([mask, torch.zeros(batch, 2, dtype=torch.bool)], 1),
        transitions,
    )
    assert torch.allclose(longer, nll, atol=1e-5)


def test_learned_transitions_are_saved_with_the_model_and_checked_when_loaded(
    tmp_path: Path,
) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bot.core.errors import ModelNotFoundError
    from bot.nlu.artifacts import resolve_backbone
    from bot.nlu.entity_model import EntityMeta, TokenTaggerModule, load_tagger, save_tagger

    source = resolve_backbone("bundled")
    meta = EntityMeta(entities=("city",), max_length=32)
    model = TokenTaggerModule(AutoModel.from_pretrained(source), len(meta.tags))
    tokenizer = AutoTokenizer.from_pretrained(source)
    save_tagger(model, tokenizer, meta, tmp_path / "plain")
    assert "transitions" not in json.loads((tmp_path / "plain" / "entity.json").read_text())
    assert TokenTagger(tmp_path / "plain")._transitions is None  # decoded as before
    learned = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
    model.transitions.data.copy_(learned)
    save_tagger(model, tokenizer, meta, tmp_path / "crf")
    loaded, _, loaded_meta = load_tagger(tmp_path / "crf")
    assert torch.equal(loaded.transitions.detach(), learned)
    assert loaded_meta.transitions is not None and len(loaded_meta.transitions) == 4
    stored = json.loads((tmp_path / "crf" / "entity.json").read_text())
    stored["transitions"] = stored["transitions"][:2]
    (tmp_path / "crf" / "entity.json").write_text(json.dumps(stored))
    with pytest.raises(ModelNotFoundError, match=r"\(2, 3\) transition scores for 3 tags"):
        load_tagger(tmp_path / "crf")


@pytest.mark.slow
def test_train_entity_finds_an_unseen_city_and_the_artifact_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = rasa_file(tmp_path / "nlu.yml")
    models = tmp_path / "models"
    with one_thread():
        status = main(
            [
                "train",
                "entity",
                "--data",
                str(data),
                "--models",
                str(models),
                "--epochs",
                "15",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
    assert status == 0
    out = capsys.readouterr().out
    assert "entity v1 is live" in out
    assert f"fewer than {MIN_VALIDATION}" in out  # the tiny set trained without early stopping
    version = models / "entity" / "v1"
    assert is_entity_model_dir(version)
    meta = json.loads((version / "entity.json").read_text())
    assert meta["tags"] == ["O", "B-city", "I-city"] and meta["tuned_layers"] == 3
    metrics = json.loads((version / "metrics.json").read_text())
    assert set(metrics["per_entity"]) == {"city"}
    # The CRF layer (the default) learned its transitions: a move the data makes scores above
    # one it never makes (a city is followed by "since monday", never by another city).
    transitions = meta["transitions"]
    assert metrics["training"]["crf"] is True and len(transitions) == 4
    assert transitions[1][0] > transitions[1][1]  # B-city -> O over B-city -> B-city
    assert (version / "test_set.jsonl").is_file()
    # Loaded again from disk: Madrid and Amsterdam were never in the training data.
    tagger = TokenTagger(version)
    texts = ["please ship my order to Madrid", "hello there", "is there a pickup point in NYC"]
    found = tagger.spans(texts)
    assert [(e.type, e.text, texts[0][e.start : e.end]) for e in found[0]] == [
        ("city", "Madrid", "Madrid")
    ]
    assert found[1] == []
    assert [(e.text, e.value) for e in found[2]] == [("NYC", "New York")]  # the synonym
    listing = main(["models", "--models", str(models), "list"])
    assert listing == 0 and "entity:" in capsys.readouterr().out
    unseen = jsonl(
        tmp_path / "unseen.jsonl",
        [
            {"text": "ship it to Madrid", "entities": [{"start": 11, "end": 17, "entity": "city"}]},
            {"text": "hello there"},
        ],
    )
    assert main(["evaluate", str(version), "--data", str(unseen), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["per_entity"]["city"]["support"] == 1 and evaluated["n"] == 2

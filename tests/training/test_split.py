"""Stratified, seeded splits: reproducible, proportional, and no label left untrained."""

from __future__ import annotations

from collections import Counter

import pytest

from training.data import Example, normalize
from training.split import Split, split_like, stratified_split


def make_examples(sizes: dict[str, int]) -> list[Example]:
    examples = []
    line = 1
    for label, n in sizes.items():
        for i in range(n):
            line += 1
            examples.append(Example(f"{label} text {i}", label, "data.csv", line))
    return examples


def texts(part: list[Example]) -> list[str]:
    return [e.text for e in part]


def test_same_seed_gives_the_same_split() -> None:
    examples = make_examples({"a": 40, "b": 25, "c": 10})

    first = stratified_split(examples, 0.1, 0.1, seed=3)
    # Input order must not matter either: the loader's file order is not a seed.
    second = stratified_split(list(reversed(examples)), 0.1, 0.1, seed=3)

    assert texts(first.train) == texts(second.train)
    assert texts(first.validation) == texts(second.validation)
    assert texts(first.test) == texts(second.test)


def test_different_seed_gives_a_different_split() -> None:
    examples = make_examples({"a": 40, "b": 25, "c": 10})

    first = stratified_split(examples, 0.1, 0.1, seed=3)
    second = stratified_split(examples, 0.1, 0.1, seed=4)

    assert set(texts(first.test)) != set(texts(second.test))


def test_each_label_is_split_in_the_requested_proportions() -> None:
    examples = make_examples({"big": 100, "mid": 50, "small": 20})

    split = stratified_split(examples, validation_fraction=0.1, test_fraction=0.2, seed=0)

    def count(part: list[Example]) -> Counter[str]:
        return Counter(e.label for e in part)

    assert count(split.validation) == {"big": 10, "mid": 5, "small": 2}
    assert count(split.test) == {"big": 20, "mid": 10, "small": 4}
    assert count(split.train) == {"big": 70, "mid": 35, "small": 14}


def test_a_label_with_ten_examples_is_measured() -> None:
    examples = make_examples({"big": 200, "new_intent": 10})

    split = stratified_split(examples, 0.1, 0.1, seed=1)

    assert [e.label for e in split.validation].count("new_intent") >= 1
    assert [e.label for e in split.test].count("new_intent") >= 1
    assert [e.label for e in split.train].count("new_intent") >= 1


@pytest.mark.parametrize(
    ("validation_fraction", "test_fraction"),
    [(0.1, 0.1), (0.3, 0.3), (0.4, 0.4), (0.49, 0.49), (0.49, 0.0), (0.0, 0.49)],
)
def test_every_label_keeps_a_training_example(
    validation_fraction: float, test_fraction: float
) -> None:
    # Fractions within what TrainingArguments accepts (each < 0.5), labels of every small size.
    examples = make_examples({f"label{n}": n for n in range(1, 13)})

    split = stratified_split(examples, validation_fraction, test_fraction, seed=5)

    trained = Counter(e.label for e in split.train)
    assert set(trained) == {f"label{n}" for n in range(1, 13)}


def test_no_text_is_in_two_parts_and_none_is_lost() -> None:
    examples = make_examples({"a": 33, "b": 17, "c": 4, "d": 1})

    split = stratified_split(examples, 0.15, 0.15, seed=9)

    parts = [set(texts(split.train)), set(texts(split.validation)), set(texts(split.test))]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sum(len(p) for p in parts) == len(examples)
    assert parts[0] | parts[1] | parts[2] == set(texts(examples))


def test_zero_test_fraction_gives_an_empty_test_set() -> None:
    examples = make_examples({"a": 30, "b": 12})

    split = stratified_split(examples, 0.2, 0.0, seed=2)

    assert split == Split(train=split.train, validation=split.validation, test=[])
    assert len(split.validation) == 6 + 2
    assert len(split.train) == 24 + 10


def test_zero_fractions_keep_everything_for_training() -> None:
    examples = make_examples({"a": 5, "b": 3})

    split = stratified_split(examples, 0.0, 0.0, seed=2)

    assert sorted(texts(split.train)) == sorted(texts(examples))
    assert split.validation == [] and split.test == []


def test_a_second_task_is_split_text_by_text_like_the_first() -> None:
    """Joint training: a text held out for one task is held out for the other (the shared
    encoder must not have trained on it), whatever its case or spacing; texts only the
    second task has are split stratified, and nothing is lost."""
    intents = make_examples({"order": 20, "refund": 20})
    first = stratified_split(intents, 0.2, 0.2, seed=3)
    mood = {"order": "neutral", "refund": "negative"}
    second = [Example(f"  {e.text.upper()} ", mood[e.label], e.source, e.line) for e in intents]
    extra = [Example(f"thanks a lot {i}", "positive", "more.csv", i) for i in range(10)]

    split = split_like([*second, *extra], first, normalize, 0.2, 0.2, seed=3)

    for mine, reference in (
        (split.train, first.train),
        (split.validation, first.validation),
        (split.test, first.test),
    ):
        shared = {normalize(e.text) for e in mine if not e.text.startswith("thanks")}
        assert shared == {normalize(e.text) for e in reference}
    parts = (split.train, split.validation, split.test)
    positives = [[e for e in part if e.label == "positive"] for part in parts]
    assert [len(p) for p in positives] == [6, 2, 2]
    assert sorted(texts([*split.train, *split.validation, *split.test])) == sorted(
        texts([*second, *extra])
    )

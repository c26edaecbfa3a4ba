"""Seeded, stratified train / validation / test splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from training.data import Example

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Split:
    """The three parts of a data set; `test` may be empty when a test file is given."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]


def shuffled_groups(
    items: Iterable[T],
    label_of: Callable[[T], str],
    rng: random.Random,
    order: Callable[[T], Any] | None = None,
) -> Iterator[list[T]]:
    """Each label's items, labels in sorted order, every group shuffled by `rng`: the groups a
    stratified split cuts.

    Args:
        label_of: the label an item is grouped by.
        order: sorts each group before it is shuffled, so that the input's order does not
            change the split; None keeps the input's order.
    """
    by_label: dict[str, list[T]] = defaultdict(list)
    for item in items:
        by_label[label_of(item)].append(item)
    for label in sorted(by_label):
        group = by_label[label][:] if order is None else sorted(by_label[label], key=order)
        rng.shuffle(group)
        yield group


def stratified_split(
    examples: Sequence[Example],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> Split:
    """Split each label's examples in the same proportions, reproducibly.

    Every label keeps at least one training example; a label with three or more examples gets
    at least one validation (and, when asked, one test) example, so new intents with ~10
    examples are still measured. `load_examples` has already merged exact duplicates, so a
    text can never sit on both sides of a split.

    Args:
        examples: de-duplicated examples.
        validation_fraction: share of each label for validation (0 for none).
        test_fraction: share of each label for test (0 when a separate test set is given).
        seed: the same seed and input give the same split.
    """
    rng = random.Random(seed)
    train: list[Example] = []
    validation: list[Example] = []
    test: list[Example] = []
    groups = shuffled_groups(
        examples, lambda e: e.label, rng, order=lambda e: (e.text, e.source, e.line)
    )
    for group in groups:
        n = len(group)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
        n_test = min(n_test, n - 1)
        n_val = (
            max(1, round(n * validation_fraction))
            if validation_fraction > 0 and n - n_test >= 2
            else 0
        )
        n_val = min(n_val, n - n_test - 1)  # a label always keeps a training example
        test += group[:n_test]
        validation += group[n_test : n_test + n_val]
        train += group[n_test + n_val :]
    rng.shuffle(train)
    return Split(train=train, validation=validation, test=test)


def split_like(
    examples: Sequence[Example],
    reference: Split,
    key: Callable[[str], str],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> Split:
    """Split a second task's examples the way `reference` split the first task's: a text on
    one side of the reference split is on the same side here (when both tasks train one
    encoder, a test text of one task must not have been trained on as the other's), and the
    texts the reference does not have are split stratified as usual.

    Args:
        key: what makes two texts the same (the loaders' normalisation).
    """
    side: dict[str, int] = {}
    for number, part in enumerate((reference.train, reference.validation, reference.test)):
        for e in part:
            side[key(e.text)] = number
    parts: list[list[Example]] = [[], [], []]
    rest: list[Example] = []
    for e in examples:
        found = side.get(key(e.text))
        if found is None:
            rest.append(e)
        else:
            parts[found].append(e)
    more = stratified_split(rest, validation_fraction, test_fraction, seed)
    train = parts[0] + more.train
    random.Random(seed).shuffle(train)
    return Split(train=train, validation=parts[1] + more.validation, test=parts[2] + more.test)

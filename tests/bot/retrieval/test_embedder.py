"""Sentence embeddings: unit-length rows, from the real bundled encoder and from any matrix."""

from __future__ import annotations

import numpy as np
import pytest

from bot.retrieval.embedder import SentenceEmbedder, normalized_rows


def test_normalized_rows_scales_to_unit_length_and_keeps_zero_rows_zero() -> None:
    rows = normalized_rows(np.asarray([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.dtype == np.float32
    assert rows.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)], [0.0, 0.0]]


def test_normalized_rows_leaves_unit_rows_untouched() -> None:
    # A loaded index must score exactly like the one saved: no second division.
    unit = np.asarray([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    assert normalized_rows(unit) is unit


@pytest.mark.slow
def test_the_bundled_encoder_gives_one_unit_row_per_text() -> None:
    vectors = SentenceEmbedder("bundled")(["where is my parcel?", "hello", "refund please"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)

"""Sentence embeddings: unit-length rows, from the real bundled encoder and from any matrix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bot.nlu.artifacts import resolve_backbone
from bot.retrieval.embedder import MeanPoolingEncoder, SentenceEmbedder, normalized_rows


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


TEXTS = [
    "hi",
    "Where is my order? It was due last Tuesday and the tracking page still says pending.",
    "I want a REFUND now!!",
    "word " * 400,  # beyond the 256 tokens: truncated the same way
    "",
    "ünïcödé café 😄",
]


def test_a_plain_mean_pooling_model_is_run_without_sentence_transformers() -> None:
    """The bundled model is a transformer + mean pooling + normalization: it is run with
    transformers alone (sentence-transformers' imports cost ~300 MB per replica), and the
    vectors are the ones sentence-transformers computes."""
    code = (
        "import sys; from bot.retrieval.embedder import SentenceEmbedder, MeanPoolingEncoder\n"
        "e = SentenceEmbedder('bundled'); v = e(['where is my order'])\n"
        "assert isinstance(e._load(), MeanPoolingEncoder), type(e._load())\n"
        "assert v.shape == (1, 384)\n"
        "print('sentence_transformers' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

    from sentence_transformers import SentenceTransformer

    ours = SentenceEmbedder("bundled", batch_size=4)(TEXTS)
    theirs = SentenceTransformer(resolve_backbone("bundled"), device="cpu").encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_any_other_pipeline_is_left_to_sentence_transformers(tmp_path: Path) -> None:
    """CLS pooling (or a dense layer, lower-casing, ...) is not what MeanPoolingEncoder
    computes: such a model loads with sentence-transformers."""
    source = Path(resolve_backbone("bundled"))
    copy = tmp_path / "cls-pooled"
    shutil.copytree(source, copy)
    config = json.loads((copy / "1_Pooling" / "config.json").read_text())
    config |= {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert MeanPoolingEncoder.load_if_plain(str(copy)) is None
    assert MeanPoolingEncoder.load_if_plain(str(source)) is not None
    embedder = SentenceEmbedder(str(copy))
    assert type(embedder._load()).__name__ == "SentenceTransformer"
    assert embedder.shareable() is None  # CLS pooling cannot share the mean-pooled forward
    assert embedder(["hi"]).shape == (1, 384)

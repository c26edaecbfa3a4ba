"""BERT encoders on plain torch (serving without transformers' model code, issue 19): the
same token ids, offsets and hidden states as transformers, and what is not a plain BERT
encoder is left to transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bot.nlu.artifacts import resolve_backbone
from bot.nlu.classifier import TransformerClassifier, length_chunks, mean_pool
from bot.nlu.plain_bert import SHARED_WEIGHTS, PlainBert, PlainTokenizer, load_plain

TEXTS = [
    "hi",
    "Where is my order? It was due last Tuesday and the tracking page still says pending.",
    "I want a REFUND now!!",
    "Ünïcödé café, naïve 😀 emoji",
    "",
    "x " * 300,
    "中文字符 mixed with English",
    "  spaces   and\ttabs\n",
]


def reference(directory: Path) -> tuple[object, object]:
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(directory)).eval(), AutoTokenizer.from_pretrained(
        str(directory)
    )


def assert_same_as_transformers(directory: Path, atol: float = 1e-5) -> None:
    loaded = load_plain(directory)
    assert loaded is not None
    encoder, tokenizer = loaded
    model, ref_tokenizer = reference(directory)
    for max_length in (16, 64, 256):
        ours = tokenizer(TEXTS, truncation=True, max_length=max_length, return_offsets_mapping=True)
        theirs = ref_tokenizer(  # type: ignore[operator]
            TEXTS, truncation=True, max_length=max_length, return_offsets_mapping=True
        )
        assert ours["input_ids"] == theirs["input_ids"], max_length
        assert [list(map(tuple, row)) for row in ours["offset_mapping"]] == [
            list(map(tuple, row)) for row in theirs["offset_mapping"]
        ]
        assert all(ours.word_ids(i) == theirs.word_ids(i) for i in range(len(TEXTS)))
    assert tokenizer.pad_token_id == ref_tokenizer.pad_token_id  # type: ignore[attr-defined]
    with torch.inference_mode():
        for chunk, ids, mask in length_chunks(tokenizer, TEXTS, 256, 3):
            ours_h = encoder(ids, mask).last_hidden_state
            theirs_h = model(input_ids=ids, attention_mask=mask).last_hidden_state  # type: ignore[operator]
            real = mask.bool()
            assert torch.allclose(ours_h[real], theirs_h[real], atol=atol), chunk
            assert torch.allclose(mean_pool(ours_h, mask), mean_pool(theirs_h, mask), atol=atol)


def test_the_bundled_encoder_matches_transformers() -> None:
    assert_same_as_transformers(Path(resolve_backbone("bundled")))


def test_a_trained_classifier_matches_transformers_and_serves_plain(runtime_models: Path) -> None:
    directory = runtime_models / "intent" / "v1"
    assert_same_as_transformers(directory)
    served = TransformerClassifier(directory)
    assert isinstance(served.model.encoder, PlainBert)
    assert isinstance(served.tokenizer, PlainTokenizer)


def test_encoders_loaded_in_one_process_hold_equal_weights_once(runtime_models: Path) -> None:
    """A trained model's embeddings and untuned layers are the backbone's, so loaded after
    it they are the same tensors, not a copy (the peak while starting, issue 19); its tuned
    layers are its own; a second load of one model holds nothing new; unloaded models take
    their weights with them."""
    import gc

    gc.collect()
    before = len(SHARED_WEIGHTS)
    backbone = PlainBert.load(Path(resolve_backbone("bundled")))
    trained = PlainBert.load(runtime_models / "intent" / "v1")
    again = PlainBert.load(runtime_models / "intent" / "v1")
    assert backbone is not None and trained is not None and again is not None
    assert trained.embeddings.word_embeddings.weight is backbone.embeddings.word_embeddings.weight
    layers = list(zip(backbone.encoder.layer, trained.encoder.layer, strict=True))
    shared = [
        all(a is b for a, b in zip(x.parameters(), y.parameters(), strict=True)) for x, y in layers
    ]
    assert shared == [True, True, True, False, False, False]  # three tuned layers
    assert all(a is b for a, b in zip(trained.parameters(), again.parameters(), strict=True))
    assert not any(p.requires_grad for p in trained.parameters())
    ids = torch.tensor([[101, 2073, 2003, 2026, 2344, 102]])
    with torch.inference_mode():
        expected = trained(ids, torch.ones_like(ids)).last_hidden_state
        del backbone, again, layers
        gc.collect()
        assert len(SHARED_WEIGHTS) > before
        assert torch.equal(trained(ids, torch.ones_like(ids)).last_hidden_state, expected)
    del trained
    gc.collect()
    assert len(SHARED_WEIGHTS) == before


def test_another_bert_shape_matches_and_other_models_are_left_to_transformers(
    tmp_path: Path,
) -> None:
    """A BERT of other dimensions (random weights) runs plain; a model this does not cover
    (another architecture, another activation, relative positions, a tokenizer whose
    settings transformers would rewrite) gets None, and transformers loads it."""
    from transformers import BertConfig, BertModel

    bundled = Path(resolve_backbone("bundled"))
    torch.manual_seed(3)
    small = tmp_path / "small"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        layer_norm_eps=1e-7,
    )
    BertModel(config).save_pretrained(small)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(bundled / name, small / name)
    assert_same_as_transformers(small, atol=1e-4)

    def variant(name: str, change: dict[str, object], file: str = "config.json") -> Path:
        folder = tmp_path / name
        shutil.copytree(small, folder)
        data = json.loads((folder / file).read_text())
        data.update(change)
        (folder / file).write_text(json.dumps(data))
        return folder

    assert load_plain(variant("gelu_new", {"hidden_act": "gelu_new"})) is None
    assert load_plain(variant("relative", {"position_embedding_type": "relative_key"})) is None
    assert load_plain(variant("roberta", {"model_type": "roberta"})) is None
    assert load_plain(variant("cased", {"do_lower_case": False}, "tokenizer_config.json")) is None
    extra = tmp_path / "extra"
    shutil.copytree(small, extra)
    (extra / "model.safetensors").unlink()
    assert load_plain(extra) is None


def test_serving_imports_no_transformers_model_code(runtime_models: Path) -> None:
    """The models and the answer index's encoder load without `transformers.modeling_utils`
    (and the sympy, scipy and accelerate it pulls in: ~100 MB per replica)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bot.nlu.understander import ModelSet\n"
        "from bot.retrieval.embedder import SentenceEmbedder\n"
        f"models = ModelSet.load(Path({str(runtime_models)!r}), True, SentenceEmbedder())\n"
        "models.classify(['where is my order'])\n"
        "assert models.shared is not None\n"
        "print(sorted(m for m in ('transformers.modeling_utils', 'sympy', 'scipy', "
        "'accelerate') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_callers_with_other_lengths_do_not_truncate_each_other() -> None:
    """The shared forward and a model's own forward tokenize with one tokenizer at different
    lengths, from different threads: each call gets its own truncation."""
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = PlainTokenizer.load(Path(resolve_backbone("bundled")))
    assert tokenizer is not None
    long_texts = ["word " * 100] * 8

    def lengths(max_length: int) -> set[int]:
        found: set[int] = set()
        for _ in range(200):
            found |= {len(ids) for ids in tokenizer(long_texts, max_length=max_length)["input_ids"]}
        return found

    with ThreadPoolExecutor(2) as pool:
        short, wide = pool.submit(lengths, 16), pool.submit(lengths, 64)
        assert short.result() == {16} and wide.result() == {64}

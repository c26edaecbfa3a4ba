"""One encoder pass per message for intent, sentiment, entities and the answer index.

Every message needs three encodings: the intent classifier, the sentiment classifier and the
answer index's sentence encoder. All three start from the same backbone, and training
fine-tunes only the top layers of the classifiers (`TrainingArguments.tuned_layers`), so the
embeddings and the lower layers of all three are the same weights. `SharedEncoder` runs
those common layers once per batch and only the differing top layers per model: with the
default three tuned layers of a six-layer MiniLM that is 3 + 3 x 3 = 12 layer passes per
message instead of 18, and one model call per message instead of two. Intent and sentiment
trained together (`supportbot train intent+sentiment`, a head each on one encoder) have the
same tuned layers as well, run once for both: 3 + 3 + 3 = 9.

Texts are truncated at the longest max length of the models sharing the pass (the answer
index's encoder takes 256 tokens, the classifiers were trained on 64): a very long message is
classified on more of its text than the classifier saw in training, which mean pooling
tolerates, rather than searched on less than the index was embedded with.

The learned entity model (`bot/nlu/entity_model.py`, when one is live) is one more branch: it
needs every word piece's last state, not their mean, so `run` hands those back for it and
only its tagging head runs on them.

The common part is found by comparing weights when the models are loaded, never assumed from
metadata, and the shared computation is checked against each model's own forward on probe
texts before it is used; a model set that shares nothing (a fully fine-tuned model, another
backbone, LoRA) is served by each model's own forward, as before.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bot.nlu.classifier import length_chunks, mean_pool

log = logging.getLogger(__name__)

PROBE_TEXTS = (
    "hi",
    "Where is my order? It was due last Tuesday and the tracking page still says pending.",
    "I want a REFUND now!!",
)


def transformer_layers(encoder: Any) -> nn.ModuleList | None:
    """The stack of transformer layers of a BERT-style encoder (BERT, RoBERTa, ...), or None."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    embeddings = getattr(encoder, "embeddings", None)
    if isinstance(stack, nn.ModuleList) and isinstance(embeddings, nn.Module):
        return stack
    return None


def freeze_lower_layers(encoder: Any, tuned_layers: int) -> int:
    """Freeze the embeddings and all but the top `tuned_layers` layers; return how many froze.

    Raises:
        ValueError: the encoder is not BERT-style, so its layers cannot be told apart.
    """
    layers = transformer_layers(encoder)
    if layers is None:
        raise ValueError(
            f"{type(encoder).__name__} is not a BERT-style encoder (no embeddings and "
            "encoder.layer); fine-tune all of it with `--tuned-layers all`"
        )
    frozen = max(0, len(layers) - tuned_layers)
    if frozen == 0:
        return 0
    for module in (encoder.embeddings, *layers[:frozen]):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return frozen


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        return False
    return all(
        state_a[key].shape == state_b[key].shape and torch.equal(state_a[key], state_b[key])
        for key in state_a
    )


def common_depth(encoders: Sequence[Any]) -> int | None:
    """How many bottom layers all `encoders` share (weights equal), or None if not even the
    embeddings (or the architecture) are the same."""
    stacks = [transformer_layers(e) for e in encoders]
    if any(s is None for s in stacks) or len({type(e) for e in encoders}) != 1:
        return None
    first = encoders[0]
    if not all(_same_weights(first.embeddings, other.embeddings) for other in encoders[1:]):
        return None
    depth = 0
    limit = min(len(s) for s in stacks if s is not None)
    while (
        depth < limit
        and all(
            _same_weights(stacks[0][depth], s[depth])  # type: ignore[index]
            for s in stacks[1:]
        )
    ):
        depth += 1
    return depth


@dataclass(frozen=True)
class Branch:
    """One model on top of the shared layers: its own encoder, whose top layers are run."""

    name: str
    encoder: Any


class SharedEncoder:
    """Runs the shared bottom of several encoders once, then each encoder's own top layers.

    Args:
        branches: the models, each a BERT-style encoder; `common_depth` of them must not be
            None.
        tokenizer: the tokenizer all of them use.
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass; a batch is sorted by length and run in chunks of
            similar length, so one long message does not make the rest pay for its padding.
        depth: `common_depth` of the branches when the caller already compared their weights.
    """

    def __init__(
        self,
        branches: Sequence[Branch],
        tokenizer: Any,
        max_length: int,
        batch_size: int = 16,
        depth: int | None = None,
    ) -> None:
        if depth is None:
            depth = common_depth([b.encoder for b in branches])
        if depth is None:
            raise ValueError("these encoders share no layers")
        self.depth = depth
        self.branches = tuple(branches)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        trunk = branches[0].encoder
        self._embeddings = trunk.embeddings
        self._config = trunk.config
        self._shared = list(transformer_layers(trunk) or [])[:depth]
        # Branches whose own layers are equal too (intent and sentiment trained together,
        # `supportbot train intent+sentiment`) run them once: `_runs` maps the branch whose
        # layers run to every branch that reads its output.
        self._tops: dict[str, list[nn.Module]] = {}
        self._runs: dict[str, list[str]] = {}
        self._int8: set[str] = set()  # the runs `quantize_tops` made int8
        for branch in self.branches:
            top = list(transformer_layers(branch.encoder) or [])[depth:]
            same = next(
                (
                    name
                    for name, other in self._tops.items()
                    if len(other) == len(top)
                    and all(_same_weights(a, b) for a, b in zip(other, top, strict=True))
                ),
                None,
            )
            if same is None:
                self._tops[branch.name], self._runs[branch.name] = top, [branch.name]
            else:
                self._runs[same].append(branch.name)

    @property
    def names(self) -> set[str]:
        """The models this forward serves."""
        return {b.name for b in self.branches}

    @property
    def passes(self) -> list[list[str]]:
        """The branches' own layers as run: each entry the models reading one run's output
        (e.g. `[["intent", "sentiment"], ["query"]]` for a jointly trained pair)."""
        return [list(names) for names in self._runs.values()]

    def _runner(self, name: str) -> str:
        return next(run for run, names in self._runs.items() if name in names)

    def release_duplicates(self) -> None:
        """Hold one copy of what the branches share, and nothing the forward does not use.

        Loaded through transformers, each model holds its own embeddings and layers, as
        views of its weights file (counted in the process's resident memory once pages are
        touched); loaded on plain torch they are already one copy (`SharedWeights`). After
        this, every branch's embeddings and shared layers are the first branch's (equal: that
        is how `common_depth` found them), its own layers are the ones this forward runs
        (int8 after `quantize_tops`), the unused poolers are gone, and what is kept is copied
        out of any file's storage so the mappings are released. Each model's own forward, still used
        for texts outside a shared batch (the answer index's encoder embedding a search), then
        computes what the shared forward does. Measured on the sample models (intent,
        sentiment and the index's encoder, loaded in one process): 838 -> 660 MB resident
        (issue 19). Call it after `quantize_tops` and `half_weights`.
        """
        trunk = self.branches[0].encoder
        for branch in self.branches:
            encoder, layers = branch.encoder, transformer_layers(branch.encoder)
            assert layers is not None
            encoder.embeddings = trunk.embeddings
            for i in range(self.depth):
                layers[i] = self._shared[i]
            for i, layer in enumerate(self._tops[self._runner(branch.name)]):
                layers[self.depth + i] = layer
            if getattr(encoder, "pooler", None) is not None:
                encoder.pooler = None  # mean pooling never reads it
        copied: set[int] = set()
        for branch in self.branches:
            for parameter in branch.encoder.parameters():
                data = parameter.data
                if id(parameter) not in copied and data.untyped_storage().nbytes() > data.nbytes:
                    copied.add(id(parameter))  # a view into a whole file's storage
                    parameter.data = data.clone()

    def quantize_tops(self, names: set[str]) -> None:
        """int8 dynamic quantization of the named branches' own layers (not the shared ones;
        layers run for several branches only when all of them are named)."""
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, readers in self._runs.items():
                if not set(readers) <= names:
                    continue
                self._tops[name] = [
                    quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)
                    for layer in self._tops[name]
                ]
                self._int8.add(name)

    def half_weights(self) -> bool:
        """float16 weights for every linear layer left in float32: the shared layers and the
        tops `quantize_tops` did not make int8 (the answer index's). The arithmetic stays
        float32 (fbgemm converts the weights as it multiplies), so outputs move by float16
        rounding only: on the sample index (1,002 utterances) and 2,000 Bitext questions (1,000
        queries), top-1 retrieval agreed with float32 on every query (cosine 1.0000; int8 for
        the same layers: 77-96 %, `benchmarks/precision_benchmark.py --int8`). A lone message
        is faster (the weights are read from memory once per message: 9.7 -> 6.3 ms for a
        six-layer MiniLM), batches of 16 run as fast as float32, and those layers take half
        the memory. False (nothing changed) where the
        quantized engine has no float16 kernels (fbgemm is x86's). Call before
        `release_duplicates`.
        """
        if torch.backends.quantized.engine not in ("fbgemm", "x86"):
            return False
        from torch.ao.quantization import float16_dynamic_qconfig, quantize_dynamic

        spec = {nn.Linear: float16_dynamic_qconfig}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._shared = [quantize_dynamic(layer, spec) for layer in self._shared]
            for name in self._tops:
                if name not in self._int8:
                    self._tops[name] = [quantize_dynamic(layer, spec) for layer in self._tops[name]]
        return True

    def _mask(self, embedded: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        from bot.nlu.plain_bert import PlainBert, attention_mask_for

        if isinstance(self.branches[0].encoder, PlainBert):
            return attention_mask_for(attention_mask)
        # The mask format the layers expect (additive 4-d for eager attention, boolean or None
        # for SDPA): built by transformers itself, as the model's own forward does.
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self._config, inputs_embeds=embedded, attention_mask=attention_mask
        )

    def pooled(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Mean-pooled last states of every branch, shape (len(texts), hidden), input order."""
        return self.run(texts)[0]

    def run(
        self, texts: Sequence[str], token_branches: frozenset[str] = frozenset()
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Mean-pooled last states of every branch and, for `token_branches` (a token
        tagger such as the entity model), each text's last states per word piece, shape
        (pieces, hidden), without padding; both in input order."""
        hidden_size = int(self._config.hidden_size)
        out = {b.name: torch.empty(len(texts), hidden_size) for b in self.branches}
        tokens: dict[str, list[torch.Tensor]] = {
            name: [torch.empty(0)] * len(texts) for name in token_branches & self.names
        }
        if not texts:
            return out, tokens
        with torch.inference_mode():
            for chunk, input_ids, mask in length_chunks(
                self.tokenizer, texts, self.max_length, self.batch_size
            ):
                hidden = self._embeddings(input_ids=input_ids)
                layer_mask = self._mask(hidden, mask)
                for layer in self._shared:
                    hidden = layer(hidden, layer_mask)
                lengths = mask.sum(dim=1).tolist()
                for run, top in self._tops.items():
                    states = hidden
                    for layer in top:
                        states = layer(states, layer_mask)
                    pooled = mean_pool(states, mask).float()
                    for name in self._runs[run]:
                        out[name][chunk] = pooled
                        if name in tokens:
                            for row, i in enumerate(chunk):
                                tokens[name][i] = states[row, : int(lengths[row])].float()
        return out, tokens

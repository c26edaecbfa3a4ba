"""Escalation benchmark on the NTCIR-14 STC-3 customer-helpdesk dialogues.

Reads the data set where it lies (default ../shared/datasets, or --datasets PATH); never
copies it into the project. Ground truth per dialogue: unhappy when the mean customer
Satisfaction ("S", -2..2) over its annotators is <= -1.

Replays each dialogue the way the runtime would see it: the customer turns (a turn's
utterances joined with a space; empty turns skipped, as connectors reject empty text) go
through the live models' `ModelSet.classify` (all texts of the run in one call, sorted by
length to save padding, answers put back in order), then through
`EscalationPolicy.assess(understanding, earlier_negativity)` turn by turn, where
`earlier_negativity` is the negativity of the dialogue's previous customer turns. The first
escalation ends the replay, as a hand-off silences the bot; the dialogue is then flagged and
the reason of that escalation recorded. Not replayed: the routing table's own hand-off
routes (counted separately, for talk_to_human predicted below `handoff_min_confidence`) and
the fallback ladder (`after_fallbacks`), which depends on retrieval and the bot's replies,
not on what the customer wrote.

Figures (printed only, no assertions), per threshold configuration: flagged dialogues,
precision, recall and F1 against the unhappy label, and flags by reason. Two AUROCs:

- peak score: per dialogue, the max over its customer turns of max(negativity, trend mean),
  the trend mean taken like the policy does, over the last `trend_window` turns once that
  many exist. It does not depend on the thresholds, so it is printed once. A mean never
  exceeds its largest element, so this is the dialogue's peak negativity; the trend term is
  kept so the score follows the policy's two signals should either change.
- margin score, per configuration: the max over turns of max(negativity - negative_message,
  trend mean - negative_trend). The sentiment rules fire on some turn exactly when it is
  >= 0, so it ranks dialogues by that configuration's own decision variable.

For context, two baselines with no model: flag every dialogue with >= 3 customer turns, and
flag any dialogue whose customer turns contain a word of a small fixed lexicon of angry words
(chosen up front, not tuned on this data).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/escalation_benchmark.py --models models
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import roc_auc_score

from bot.core.errors import ModelNotFoundError
from bot.core.escalation import EscalationPolicy, EscalationSettings
from bot.core.records import Understanding
from bot.nlu.understander import ModelSet

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
STC3 = Path("stc3_helpdesk") / "train_data_en.json"
UNHAPPY_AT = -1.0  # mean satisfaction at or below this is "unhappy"
MIN_TURNS = 3  # the turn-count baseline
ANGRY_WORDS = re.compile(
    r"\b(angry|annoy\w*|furious|terrible|horrible|awful|worst|ridiculous|unacceptable|"
    r"disappoint\w*|disgust\w*|useless|rubbish|complain\w*|cheat\w*|scam\w*|fraud\w*|"
    r"liars?|hate|shit\w*|damn\w*|fuck\w*|hell)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Dialogue:
    """One STC-3 dialogue: its customer turns and the annotators' mean satisfaction."""

    id: str
    customer_turns: tuple[str, ...]
    satisfaction: float

    @property
    def unhappy(self) -> bool:
        return self.satisfaction <= UNHAPPY_AT


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the policy did with one dialogue.

    Attributes:
        reason: the first escalation's reason, or None when the bot never escalated.
        turn: the customer turn (1-based) of that escalation.
        margin: max over turns of the sentiment rules' distance to their thresholds.
    """

    reason: str | None
    turn: int | None
    margin: float


@dataclass(frozen=True, slots=True)
class Figures:
    flagged: int
    precision: float
    recall: float
    f1: float
    auroc: float


def read_dialogues(path: Path, limit: int | None) -> list[Dialogue]:
    """Dialogues with at least one non-empty customer turn, in file order."""
    if not path.is_file():
        sys.exit(f"{path} does not exist; pass the folder holding {STC3.parent} with --datasets")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        sys.exit(f"{path}: not a JSON file ({exc}); expected the STC-3 train_data_en.json")
    if not isinstance(records, list):
        sys.exit(f"{path}: expected a list of dialogues, found {type(records).__name__}")
    dialogues = []
    for n, record in enumerate(records):
        where = f"{path} dialogue {n} (id {record.get('id', '?')})"
        try:
            turns = tuple(
                " ".join(u.strip() for u in turn["utterances"] if u.strip())
                for turn in record["turns"]
                if turn["sender"] == "customer"
            )
            ratings = [a["quality"]["S"] for a in record["annotations"]]
        except (KeyError, TypeError) as exc:
            sys.exit(
                f"{where}: field {exc} missing; every dialogue needs turns[].sender/utterances "
                "and annotations[].quality.S"
            )
        if not ratings:
            sys.exit(f"{where}: no annotations; the unlabelled test file cannot be scored")
        turns = tuple(t for t in turns if t)
        if turns:
            dialogues.append(Dialogue(str(record["id"]), turns, statistics.fmean(ratings)))
        if limit is not None and len(dialogues) >= limit:
            break
    return dialogues


def classify_all(models: ModelSet, texts: Sequence[str]) -> list[Understanding]:
    """`models.classify` over all texts at once, shortest first, answers in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers = models.classify([texts[i] for i in order])
    out: list[Understanding | None] = [None] * len(texts)
    for i, answer in zip(order, answers, strict=True):
        out[i] = answer
    return [u for u in out if u is not None]


def trend_means(negativity: Sequence[float], window: int) -> list[float | None]:
    """Per turn, the policy's trend mean over the last `window` turns, None until full."""
    return [
        statistics.fmean(negativity[i + 1 - window : i + 1]) if i + 1 >= window else None
        for i in range(len(negativity))
    ]


def peak_score(negativity: Sequence[float], window: int) -> float:
    """Max over turns of max(negativity, trend mean); see the module docstring."""
    means = trend_means(negativity, window)
    return max(max(n, m if m is not None else n) for n, m in zip(negativity, means, strict=True))


def replay(policy: EscalationPolicy, understandings: Sequence[Understanding]) -> Outcome:
    """Run one dialogue's customer turns through the policy until it first escalates."""
    s = policy.settings
    negativity = [u.negativity for u in understandings]
    margin = max(
        max(n - s.negative_message, m - s.negative_trend if m is not None else float("-inf"))
        for n, m in zip(negativity, trend_means(negativity, s.trend_window), strict=True)
    )
    earlier: list[float] = []
    for turn, understanding in enumerate(understandings, start=1):
        escalation = policy.assess(understanding, earlier)
        if escalation is not None:
            return Outcome(escalation.reason, turn, margin)
        earlier.append(understanding.negativity)
    return Outcome(None, None, margin)


def figures(truth: Sequence[bool], flags: Sequence[bool], scores: Sequence[float]) -> Figures:
    tp = sum(t and f for t, f in zip(truth, flags, strict=True))
    flagged = sum(flags)
    positives = sum(truth)
    precision = tp / flagged if flagged else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Figures(flagged, precision, recall, f1, auroc(truth, scores))


def auroc(truth: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC AUC, or NaN when the run holds only one class (a short --limit)."""
    if len(set(truth)) < 2:
        return float("nan")
    return float(roc_auc_score(truth, scores))


def row(name: str, f: Figures, total: int, extra: str = "") -> str:
    return (
        f"{name:<34} {f.flagged:>5} {f.flagged / total:>6.1%} {f.precision:>6.3f} "
        f"{f.recall:>6.3f} {f.f1:>6.3f} {f.auroc:>7.3f}  {extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--models", type=Path, default=Path("models"), help="models root")
    parser.add_argument("--limit", type=int, default=None, help="first N dialogues only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--no-quantize", dest="quantize", action="store_false", help="skip int8 quantization"
    )
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(ns.threads)
    path = ns.datasets / STC3
    dialogues = read_dialogues(path, ns.limit)
    if not dialogues:
        sys.exit(f"{path}: no dialogue with a customer turn to score")
    texts = [t for d in dialogues for t in d.customer_turns]

    started = time.perf_counter()
    try:
        models = ModelSet.load(ns.models, quantized=ns.quantize)
    except ModelNotFoundError as exc:
        sys.exit(f"{exc}; or point --models at a models root with both live models")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    understood = classify_all(models, texts)
    classify_s = time.perf_counter() - started
    per_dialogue: list[list[Understanding]] = []
    start = 0
    for d in dialogues:
        per_dialogue.append(understood[start : start + len(d.customer_turns)])
        start += len(d.customer_turns)

    default = EscalationSettings()
    # "strictest" is the best F1 of a coarse sweep over this same file with the sample-shop
    # models: its figures are in-sample, so read them as an upper bound, not a promise.
    configurations = {
        "default": default,
        "looser": default.model_copy(update={"negative_message": 0.6, "negative_trend": 0.2}),
        "stricter": default.model_copy(update={"negative_message": 0.9, "negative_trend": 0.6}),
        "strictest": default.model_copy(update={"negative_message": 0.97, "negative_trend": 0.7}),
    }
    truth = [d.unhappy for d in dialogues]
    total = len(dialogues)
    window = default.trend_window

    print(f"escalation benchmark: {path}")
    print(
        f"models {models.versions} from {ns.models} (quantized: {ns.quantize}), torch threads "
        f"{torch.get_num_threads()}; loaded in {load_s:.1f} s, {len(texts)} customer turns "
        f"classified in {classify_s:.1f} s"
    )
    print(
        f"dialogues {total}, unhappy (mean S <= {UNHAPPY_AT:g} over annotators) {sum(truth)}: "
        f"base rate {sum(truth) / total:.3f}"
    )
    peak = [peak_score([u.negativity for u in us], window) for us in per_dialogue]
    print(
        f"AUROC of the peak score (max over turns of max(negativity, trend mean over "
        f"{window})): {auroc(truth, peak):.3f}"
    )
    print()
    print(
        f"{'configuration':<34} {'flag':>5} {'share':>6} {'prec':>6} {'recall':>6} "
        f"{'F1':>6} {'AUROC':>7}  flagged by reason; AUROC of the margin score"
    )
    unflagged: list[list[Understanding]] = []
    for name, settings in configurations.items():
        policy = EscalationPolicy(settings)
        outcomes = [replay(policy, us) for us in per_dialogue]
        if name == "default":
            unflagged = [us for us, o in zip(per_dialogue, outcomes, strict=True) if not o.reason]
        flags = [o.reason is not None for o in outcomes]
        reasons = Counter(o.reason for o in outcomes if o.reason is not None)
        by_reason = ", ".join(f"{r} {c}" for r, c in reasons.most_common()) or "none"
        label = f"{name} (msg {settings.negative_message:.2f}, trend {settings.negative_trend:.2f})"
        f = figures(truth, flags, [o.margin for o in outcomes])
        print(row(label, f, total, by_reason))
    long = [len(d.customer_turns) >= MIN_TURNS for d in dialogues]
    turns = [float(len(d.customer_turns)) for d in dialogues]
    print(row(f"baseline: >= {MIN_TURNS} customer turns", figures(truth, long, turns), total))
    hits = [float(sum(len(ANGRY_WORDS.findall(t)) for t in d.customer_turns)) for d in dialogues]
    print(row("baseline: angry-word lexicon", figures(truth, [h > 0 for h in hits], hits), total))
    print("(baseline AUROC: customer-turn count; lexicon hit count)")

    sentiments = Counter(u.sentiment for u in understood)
    deciles = statistics.quantiles([u.negativity for u in understood], n=10)
    print()
    print(
        "sentiment per customer turn: "
        + ", ".join(f"{label} {n / len(understood):.1%}" for label, n in sentiments.most_common())
        + f"; negativity p50 {deciles[4]:.2f}, p90 {deciles[8]:.2f}, "
        f"max {max(u.negativity for u in understood):.2f}"
    )
    # The packaged routing table hands talk_to_human off at any confidence above the intent
    # model's abstain threshold; the policy's own rule needs handoff_min_confidence.
    routed = sum(
        any(
            u.intent in default.handoff_intents
            and u.intent_confidence < default.handoff_min_confidence
            for u in us
        )
        for us in unflagged
    )
    print(
        f"not replayed: {routed} of the {len(unflagged)} dialogues the default policy leaves "
        f"alone have a turn predicted {'/'.join(default.handoff_intents)} below "
        f"{default.handoff_min_confidence:.2f} confidence, which the packaged routing table "
        "would hand off"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

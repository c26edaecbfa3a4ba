"""`supportbot retrain`: learn from what agents said in the store, without forgetting.

One run, per task (intent, then sentiment):

1. Read the agent labels (see `training/feedback.py` for what counts and what "since the last
   model" means), hold out a seeded slice of them per label for evaluation, and mix the rest
   with a stratified replay sample of the live model's replay pool (everything its lineage
   learned from), so old intents are not forgotten.
2. Fine-tune starting from the live model; the head grows a row per new intent, started
   at the intent's prototype (`training.trainer.init_new_rows`), and the new intents' examples
   are repeated up to an average old intent's count (`oversample_new_labels`); after
   training each new row gets the old rows' average norm (`training.trainer.align_new_rows`).
3. Evaluate live and candidate side by side on the live model's frozen test set and on the
   held-out feedback slice; write `retrain_report.md` / `retrain_report.json` into the
   candidate's version directory.
4. Gate: promote only when the candidate is not worse on the frozen test set beyond
   `tolerance` points, no intent with enough test examples loses more than
   `max_intent_drop` points of F1, and it is better on the feedback slice. Otherwise the
   candidate is registered but not live, with the reasons in its report.

Then the answer index is rebuilt with the agents' approved answers, and swapped atomically.

Safety: one retrain per models directory at a time (an `flock` on `.retrain.lock`); every
version is written to a staging directory and renamed only when complete (the registry's
stage/commit), so an interrupted run leaves no half-written version; `dry_run` writes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.core.datafiles import DEFAULT_LIMITS, InputLimits, normalize
from bot.core.errors import SupportbotError
from bot.retrieval.sources import AnswerPair
from bot.settings import Settings
from training.arguments import TrainingArguments
from training.data import Example
from training.feedback import SENTIMENTS, FeedbackSet, StoredLabel, label_counts, read_feedback
from training.registry import FileModelRegistry, trained_together

if TYPE_CHECKING:
    from training.pipeline import FittedClassifier

LOCK_FILE = ".retrain.lock"
REPORT_MD = "retrain_report.md"
REPORT_JSON = "retrain_report.json"
TASK_ORDER = ("intent", "sentiment")


class RetrainError(SupportbotError):
    """Retraining cannot run; nothing was changed."""


class RetrainBusyError(RetrainError):
    """Another retrain holds the models directory."""


@dataclass(frozen=True, slots=True)
class RetrainOptions:
    """How a retrain samples, trains and judges (defaults: the `retrain` settings).

    Attributes:
        dry_run: print the training-set summary and the plan; write nothing.
        include_rated: add weak intent labels from bot answers customers rated "up".
        tolerance: points of frozen-test accuracy the candidate may lose.
        max_intent_drop: points of F1 any one label may lose on the frozen test set.
        min_label_support: labels with fewer frozen-test examples are reported, not gated
            (one example more or less would decide).
        replay: examples sampled (stratified) from the live model's replay pool.
        holdout_fraction: share of each label's agent labels held out for evaluation.
        min_new_label_examples: a new intent needs this many labelled messages.
        epochs: passes over the retraining set (None: the training default).
        learning_rate: encoder learning rate (None: the live model's; the head learns at the
            same multiple of it as in training). Lower than training's 1e-4: on Banking77 it
            cut the old intents' loss from 1.8 to 0.6 points (benchmarks/retrain_benchmark.py).
        oversample_new_labels: repeat the training examples of new labels until each has as
            many as an average old label in the replay sample (see `oversample_new_labels`).
        align_new_rows: after training, give each new label's head row the old rows'
            average norm (`training.trainer.align_new_rows`).
        seed: sampling, hold-out and training seed.
        progress: show fine-tuning progress on stderr.
        limits: input limits for the answer sources read when the index is rebuilt.
    """

    dry_run: bool = False
    include_rated: bool = False
    tolerance: float = 1.0
    max_intent_drop: float = 10.0
    min_label_support: int = 5
    replay: int = 8000
    holdout_fraction: float = 0.2
    min_new_label_examples: int = 5
    epochs: int | None = None
    learning_rate: float | None = 5e-5
    oversample_new_labels: bool = True
    align_new_rows: bool = True
    seed: int = 42
    progress: bool = True
    limits: InputLimits = DEFAULT_LIMITS


@dataclass
class TaskPlan:
    """What a retrain of one task would train on and how it would be judged."""

    task: str
    live_version: str | None
    live_created_at: str = ""
    live_labels: tuple[str, ...] = ()
    labels: list[StoredLabel] = field(default_factory=list)
    weak: list[StoredLabel] = field(default_factory=list)
    heldout: list[StoredLabel] = field(default_factory=list)
    train_feedback: list[Example] = field(default_factory=list)
    replay: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    pool: list[Example] = field(default_factory=list)
    new_labels: list[str] = field(default_factory=list)
    too_few: dict[str, int] = field(default_factory=dict)
    new_since_live: int = 0
    skip: str | None = None
    # Nothing new to learn, but retrained on its replay beside its partner of a pair trained
    # together, so the two keep one encoder (`train_candidates_together`).
    replay_only: bool = False

    @property
    def train_size(self) -> int:
        return len(self.replay) + len(self.train_feedback)

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "live": self.live_version,
            "live_created_at": self.live_created_at,
            "agent_labels": len(self.labels),
            "new_since_live": self.new_since_live,
            "labels_per_class": label_counts(self.labels),
            "weak_labels": len(self.weak),
            "feedback_train": len(self.train_feedback),
            "feedback_heldout": len(self.heldout),
            "replayed": len(self.replay),
            "replay_pool": len(self.pool),
            "frozen_test": len(self.test),
            "new_labels": self.new_labels,
            "too_few_examples": self.too_few,
            "skip": self.skip,
            "replay_only": self.replay_only,
        }


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One rule of the promotion gate and how the candidate fared."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What happened to one task."""

    task: str
    status: str  # "promoted" | "kept" | "skipped" | "planned"
    version: str | None
    live: str | None
    reasons: tuple[str, ...]
    plan: dict[str, Any]
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "status": self.status,
            "version": self.version,
            "live": self.live,
            "reasons": list(self.reasons),
            "plan": self.plan,
            "comparison": None if self.report is None else self.report.get("comparison"),
        }


@dataclass
class RetrainResult:
    """Everything one retrain did (or, in a dry run, would do)."""

    dry_run: bool
    feedback: dict[str, int]
    problems: list[str]
    tasks: list[TaskOutcome]
    index: dict[str, Any]
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every trained candidate went live, 1 when one was kept back by the gate."""
        return 1 if any(t.status == "kept" for t in self.tasks) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "feedback": self.feedback,
            "problems": self.problems,
            "tasks": [t.to_dict() for t in self.tasks],
            "index": self.index,
            "seconds": round(self.seconds, 1),
        }


# -- locking -----------------------------------------------------------------------------


@contextmanager
def retrain_lock(models_dir: Path) -> Iterator[None]:
    """Hold the models directory's retrain lock, or refuse at once.

    Raises:
        RetrainBusyError: another retrain holds it.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RetrainBusyError(
                f"another retrain is running on {models_dir} ({holder}); wait for it to "
                "finish (the lock is released when that process ends), then run again"
            ) from exc
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}\n"
            )
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- planning ----------------------------------------------------------------------------


def _stable_share(seed: int, message_id: int) -> float:
    """A number in [0, 1) fixed by the seed and the message: the same across retrains."""
    digest = hashlib.sha256(f"{seed}:{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_split(
    labels: Sequence[StoredLabel], fraction: float, seed: int
) -> tuple[list[StoredLabel], list[StoredLabel]]:
    """Split agent labels into (train, held out), stratified by label, stable over time.

    A message is held out when its seeded hash falls below `fraction`, so a later retrain
    (with more labels) holds out the same messages, and candidates are not judged on what
    their predecessors trained on. Per label: with 3 or more labelled messages at least one
    is held out and at least two are trained on (this clamping can move a message of a
    small label across as the label grows); with fewer, none is held out.
    """
    by_label: dict[str, list[StoredLabel]] = defaultdict(list)
    for label in labels:
        by_label[label.label].append(label)
    train: list[StoredLabel] = []
    heldout: list[StoredLabel] = []
    for name in sorted(by_label):
        group = sorted(by_label[name], key=lambda x: _stable_share(seed, x.message_id))
        n = len(group)
        if n < 3 or fraction <= 0:
            train += group
            continue
        k = sum(1 for x in group if _stable_share(seed, x.message_id) < fraction)
        k = min(max(k, 1), n - 2)
        heldout += group[:k]
        train += group[k:]
    return train, heldout


def replay_sample(pool: Sequence[Example], n: int, seed: int) -> list[Example]:
    """A stratified random sample of `n` examples (all when the pool is smaller).

    Every label keeps at least one example, so no old intent disappears from training.
    """
    if n >= len(pool):
        return list(pool)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in pool:
        by_label[e.label].append(e)
    rng = random.Random(seed)
    out: list[Example] = []
    for name in sorted(by_label):
        group = sorted(by_label[name], key=lambda e: (e.text, e.source, e.line))
        rng.shuffle(group)
        out += group[: max(1, math.floor(n * len(group) / len(pool)))]
    rng.shuffle(out)
    return out


def oversample_new_labels(
    train: Sequence[Example], new_labels: Sequence[str], seed: int
) -> list[Example]:
    """Repeat the examples of new labels until each has as many as an average old label.

    A new intent has a dozen or so agent labels against ~120 replayed examples of each old
    intent (replay 8000 over Banking77's 67), so per epoch it is seen a tenth as often and
    learned slowly. Whole copies of each example, then a seeded sample of them for the
    remainder, bring it level; labels already at the old average are left as they are.
    Call this after the validation split, so no copy of a validation example is trained on.
    """
    new = set(new_labels)
    counts = Counter(e.label for e in train)
    old_counts = [n for label, n in counts.items() if label not in new]
    if not new or not old_counts:
        return list(train)
    target = round(sum(old_counts) / len(old_counts))
    rng = random.Random(seed)
    extra: list[Example] = []
    for label in sorted(new & set(counts)):
        group = [e for e in train if e.label == label]
        missing = target - len(group)
        if missing <= 0:
            continue
        extra += group * (missing // len(group)) + rng.sample(group, missing % len(group))
    out = [*train, *extra]
    rng.shuffle(out)
    return out


def _live_info(registry: FileModelRegistry, task: str) -> tuple[str | None, str, Path | None]:
    live = registry.live(task)
    if live is None:
        return None, "", None
    version = next((v for v in registry.versions(task) if v.version == live), None)
    return live, version.created_at if version else "", registry.root / task / live


def plan_task(
    task: str,
    registry: FileModelRegistry,
    feedback: FeedbackSet,
    options: RetrainOptions,
) -> TaskPlan:
    """Work out the training set and the evaluation sets of one task (reads, never writes)."""
    from bot.nlu.classifier import read_meta
    from training.pipeline import frozen_data

    live, created_at, path = _live_info(registry, task)
    plan = TaskPlan(task, live, created_at)
    plan.labels = list(feedback.labels(task))
    if task == "intent" and options.include_rated:
        plan.weak = list(feedback.weak_intents)
    if path is None:
        plan.skip = (
            f"no live {task} model in {registry.root}; train one first with "
            f"`supportbot train {task} --data data/ --models {registry.root}`"
        )
        return plan
    plan.live_labels = read_meta(path).labels
    since = datetime.fromisoformat(created_at) if created_at else datetime.min.replace(tzinfo=UTC)
    plan.new_since_live = sum(1 for x in plan.labels if x.created_at >= since)
    if not plan.labels and not plan.weak:
        plan.skip = f"no agent {task} labels in the store"
        return plan
    new_weak = sum(1 for x in plan.weak if x.created_at >= since)
    if plan.new_since_live == 0 and new_weak == 0:
        plan.skip = (
            f"no agent {task} labels newer than the live model {live} ({created_at}); "
            "nothing new to learn"
        )
        return plan
    plan.test, plan.pool = frozen_data(path)

    counts = Counter(x.label for x in plan.labels)
    known = set(plan.live_labels)
    plan.too_few = {
        name: count
        for name, count in sorted(counts.items())
        if name not in known and count < options.min_new_label_examples
    }
    usable = [x for x in plan.labels if x.label not in plan.too_few]
    plan.new_labels = sorted({x.label for x in usable} - known)
    train_labels, plan.heldout = holdout_split(usable, options.holdout_fraction, options.seed)

    test_keys = {normalize(e.text) for e in plan.test}
    heldout_keys = {normalize(x.text) for x in plan.heldout}
    labelled_keys = {normalize(x.text) for x in usable}
    # An agent's label of a text beats what the old data said about the same text.
    plan.train_feedback = [
        x.example() for x in train_labels if normalize(x.text) not in test_keys
    ] + [
        x.example()
        for x in plan.weak
        if normalize(x.text) not in test_keys | heldout_keys | labelled_keys and x.label in known
    ]
    base_pool = [e for e in plan.pool if normalize(e.text) not in labelled_keys | heldout_keys]
    plan.replay = replay_sample(base_pool, options.replay, options.seed)
    if not plan.train_feedback:
        plan.skip = (
            f"every agent {task} label is held out for evaluation or too few for a new "
            "label; label more messages"
        )
    return plan


# -- gate and report ---------------------------------------------------------------------


def _side_by_side(live: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    labels = sorted(set(live.get("per_class", {})) | set(candidate.get("per_class", {})))
    per_label = {}
    for name in labels:
        before = live.get("per_class", {}).get(name, {})
        after = candidate.get("per_class", {}).get(name, {})
        support = max(int(before.get("support", 0)), int(after.get("support", 0)))
        if support == 0:
            continue
        per_label[name] = {
            "support": support,
            "live_f1": round(float(before.get("f1", 0.0)), 4),
            "candidate_f1": round(float(after.get("f1", 0.0)), 4),
            "live_recall": round(float(before.get("recall", 0.0)), 4),
            "candidate_recall": round(float(after.get("recall", 0.0)), 4),
        }
    return {
        "n": int(candidate.get("n", live.get("n", 0))),
        "live": {k: round(float(live.get(k, 0.0)), 4) for k in ("accuracy", "macro_f1")},
        "candidate": {k: round(float(candidate.get(k, 0.0)), 4) for k in ("accuracy", "macro_f1")},
        "per_label": per_label,
    }


def gate(
    frozen: dict[str, Any],
    feedback: dict[str, Any],
    options: RetrainOptions,
    replay_only: bool = False,
) -> list[GateCheck]:
    """The promotion rules, applied to `_side_by_side` comparisons (`replay_only`: a model
    retrained on its replay alone has no feedback to be better on, only the frozen test set
    to hold)."""
    checks = []
    before, after = frozen["live"]["accuracy"], frozen["candidate"]["accuracy"]
    loss = (before - after) * 100
    checks.append(
        GateCheck(
            "frozen_test_accuracy",
            loss <= options.tolerance + 1e-9,
            f"frozen test accuracy {before:.2%} -> {after:.2%} "
            f"({-loss:+.1f} points; tolerance {options.tolerance:g})",
        )
    )
    drops = []
    unjudged = []
    for name, row in frozen["per_label"].items():
        drop = (row["live_f1"] - row["candidate_f1"]) * 100
        if drop <= options.max_intent_drop + 1e-9:
            continue
        if row["support"] < options.min_label_support:
            unjudged.append(f"{name} ({drop:.0f} points on {row['support']} examples)")
        else:
            drops.append(f"{name} F1 {row['live_f1']:.2f} -> {row['candidate_f1']:.2f}")
    detail = (
        f"no label lost more than {options.max_intent_drop:g} F1 points"
        if not drops
        else f"labels that dropped more than {options.max_intent_drop:g} F1 points: "
        + ", ".join(drops)
    )
    if unjudged:
        detail += (
            f"; not judged (fewer than {options.min_label_support} test examples): "
            + ", ".join(unjudged)
        )
    checks.append(GateCheck("no_sharp_label_drop", not drops, detail))
    if replay_only:
        return checks
    if feedback["n"] == 0:
        checks.append(
            GateCheck(
                "better_on_feedback",
                False,
                "no held-out feedback to show an improvement on (a label needs 3 or more "
                "labelled messages to be held out); label more messages",
            )
        )
    else:
        b, a = feedback["live"]["accuracy"], feedback["candidate"]["accuracy"]
        checks.append(
            GateCheck(
                "better_on_feedback",
                a > b,
                f"held-out feedback accuracy {b:.2%} -> {a:.2%} on {feedback['n']} messages",
            )
        )
    return checks


def render_markdown(report: dict[str, Any]) -> str:
    """The comparison report as Markdown: decision, gate, then per-label tables."""
    lines = [
        f"# Retrain of {report['task']}: {report['decision']}",
        "",
        f"- live model before: {report['live_before']}",
        f"- started from: {report['init_from']}",
        f"- training set: {report['training_set']['replayed']} replayed + "
        f"{report['training_set']['feedback']} from feedback "
        f"({report['training_set']['weak']} weak) = {report['training_set']['total']}",
        f"- new labels: {', '.join(report['training_set']['new_labels']) or 'none'}",
    ]
    aligned = report["training_set"].get("aligned_rows") or {}
    if aligned:
        lines.append(
            "- new label rows aligned to the old rows' average norm: "
            + ", ".join(f"{name} {a:.3f} -> {b:.3f}" for name, (a, b) in aligned.items())
        )
    lines += [
        f"- wall time: {report['seconds']} s",
        "",
        "## Gate",
        "",
    ]
    lines += [
        f"- [{'x' if c['passed'] else ' '}] {c['name']}: {c['detail']}" for c in report["gate"]
    ]
    for key, title in (("frozen_test", "Frozen test set"), ("feedback", "Held-out feedback")):
        part = report["comparison"][key]
        lines += [
            "",
            f"## {title} ({part['n']} examples)",
            "",
            "| | live | candidate |",
            "|---|---:|---:|",
            f"| accuracy | {part['live']['accuracy']:.2%} | {part['candidate']['accuracy']:.2%} |",
            f"| macro-F1 | {part['live']['macro_f1']:.3f} | {part['candidate']['macro_f1']:.3f} |",
            "",
            "| label | support | F1 before | F1 after | recall before | recall after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {row['support']} | {row['live_f1']:.3f} | {row['candidate_f1']:.3f} "
            f"| {row['live_recall']:.3f} | {row['candidate_recall']:.3f} |"
            for name, row in part["per_label"].items()
        ]
    return "\n".join(lines) + "\n"


# -- running -----------------------------------------------------------------------------


def _say(stream: TextIO, message: str) -> None:
    stream.write(message + "\n")
    stream.flush()


def _retrain_args(
    plan: TaskPlan, registry: FileModelRegistry, options: RetrainOptions
) -> tuple[TrainingArguments, Path]:
    """The live model's training arguments with the retrain's epochs, seed and rate."""
    assert plan.live_version is not None
    live_path = registry.root / plan.task / plan.live_version
    args = TrainingArguments.from_dict(json.loads((live_path / "training_args.json").read_text()))
    args = replace(
        args,
        epochs=options.epochs,
        seed=options.seed,
        learning_rate=options.learning_rate or args.learning_rate,
    )
    return args, live_path


def _retrain_set(
    plan: TaskPlan, args: TrainingArguments, options: RetrainOptions, progress: TextIO
) -> tuple[list[Example], list[Example], tuple[str, ...]]:
    """(train, validation, labels) of a task's retrain."""
    from training.split import stratified_split

    examples = [*plan.replay, *plan.train_feedback]
    # Early stopping watches the replayed examples only: every agent label is learned from
    # (a new intent has a dozen or two, and a tenth of them would be one or two messages of
    # validation each), and the held-out feedback slice judges the feedback afterwards.
    split = stratified_split(plan.replay, args.validation_fraction, 0.0, args.seed)
    labels = tuple(sorted(set(plan.live_labels) | {e.label for e in examples}))
    train = [*split.train, *plan.train_feedback]
    if options.oversample_new_labels:
        train = oversample_new_labels(train, plan.new_labels, args.seed)
    _say(
        progress,
        f"{plan.task}: fine-tuning from {plan.live_version} on {len(train)} examples "
        f"({len(plan.replay)} replayed, {len(plan.train_feedback)} from feedback, "
        f"{len(train) - len(split.train) - len(plan.train_feedback)} repeats of new-label "
        "examples; "
        f"{len(split.validation)} kept for early stopping), new labels: "
        f"{', '.join(plan.new_labels) or 'none'}",
    )
    return train, split.validation, labels


def _say_history(plan: TaskPlan, fitted: FittedClassifier, progress: TextIO) -> None:
    task = plan.task
    for epoch in fitted.result.history:
        f1 = "-" if epoch.validation_macro_f1 is None else f"{epoch.validation_macro_f1:.4f}"
        _say(
            progress,
            f"{task}: epoch {epoch.epoch}: loss {epoch.train_loss:.4f}, validation "
            f"macro-F1 {f1} ({epoch.seconds:.1f} s)",
        )
    aligned = fitted.result.aligned
    if aligned:
        before = [norm for norm, _ in aligned.values()]
        _say(
            progress,
            f"{task}: {len(aligned)} new label row(s) aligned to the old rows' average norm "
            f"{next(iter(aligned.values()))[1]:.3f} (trained: {min(before):.3f}-{max(before):.3f})",
        )


def train_candidate(
    plan: TaskPlan,
    registry: FileModelRegistry,
    options: RetrainOptions,
    progress: TextIO,
) -> TaskOutcome:
    """Fine-tune from the live model, compare, gate, and register the candidate."""
    from training.pipeline import fit_classifier

    started = time.perf_counter()
    args, live_path = _retrain_args(plan, registry, options)
    train, validation, labels = _retrain_set(plan, args, options, progress)
    fitted = fit_classifier(
        plan.task,
        train,
        validation,
        args,
        options.progress,
        live_path,
        labels,
        align=options.align_new_rows,
    )
    _say_history(plan, fitted, progress)
    judged = _judge(plan, fitted, registry, options, progress)
    return _register_candidate(plan, fitted, train, registry, judged, judged.passed, started)


def train_candidates_together(
    plans: Sequence[TaskPlan],
    registry: FileModelRegistry,
    options: RetrainOptions,
    progress: TextIO,
) -> list[TaskOutcome]:
    """Retrain a live intent and sentiment pair trained together (one encoder) together:
    one fine-tune from the live pair, a head each, so the candidates share their encoder
    too and the bot keeps running their tuned layers once. Each is judged by its own gate; a
    task retrained on its replay alone (`TaskPlan.replay_only`, nothing new to learn) goes
    live only beside its partner, never on its own."""
    from training.pipeline import fit_joint

    started = time.perf_counter()
    first, second = plans
    args, live_first = _retrain_args(first, registry, options)
    live_second = registry.root / second.task / str(second.live_version)
    sets = [_retrain_set(plan, args, options, progress) for plan in plans]
    _say(
        progress,
        f"{first.task} and {second.task}: trained together from {first.live_version} and "
        f"{second.live_version} (one encoder)",
    )
    fitted = fit_joint(
        (first.task, *sets[0]),
        (second.task, *sets[1]),
        args,
        options.progress,
        (live_first, live_second),
        options.align_new_rows,
    )
    judged = []
    for plan, model in zip(plans, fitted, strict=True):
        _say_history(plan, model, progress)
        judged.append(_judge(plan, model, registry, options, progress))
    learning = [j.passed for plan, j in zip(plans, judged, strict=True) if not plan.replay_only]
    outcomes = []
    for plan, model, (train, _, _), verdict in zip(plans, fitted, sets, judged, strict=True):
        promote = verdict.passed and (not plan.replay_only or any(learning))
        if verdict.passed and not promote:
            verdict.report["decision"] = (
                "kept as a candidate (not live): retrained only to keep the shared encoder "
                "with a candidate that did not pass its gate"
            )
        outcomes.append(
            _register_candidate(plan, model, train, registry, verdict, promote, started)
        )
    return outcomes


@dataclass
class _Verdict:
    """A candidate compared with the live model, and the gate's checks."""

    report: dict[str, Any]
    checks: list[GateCheck]
    test_metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _judge(
    plan: TaskPlan,
    fitted: FittedClassifier,
    registry: FileModelRegistry,
    options: RetrainOptions,
    progress: TextIO,
) -> _Verdict:
    """Evaluate live and candidate side by side and apply the gate."""
    from bot.nlu.classifier import TransformerClassifier
    from training.pipeline import evaluate_model

    task = plan.task
    live_path = registry.root / task / str(plan.live_version)
    _say(progress, f"{task}: evaluating live {plan.live_version} and the candidate")
    heldout = [x.example() for x in plan.heldout]
    live_model = TransformerClassifier(live_path)
    live_test, live_feedback = (
        evaluate_model(live_model, plan.test),
        evaluate_model(live_model, heldout),
    )
    cand_test, cand_feedback = fitted.evaluate(plan.test), fitted.evaluate(heldout)
    comparison = {
        "frozen_test": _side_by_side(live_test, cand_test),
        "feedback": _side_by_side(live_feedback, cand_feedback),
    }
    checks = gate(comparison["frozen_test"], comparison["feedback"], options, plan.replay_only)
    report = {
        "task": task,
        "decision": "promoted"
        if all(c.passed for c in checks)
        else "kept as a candidate (not live)",
        "live_before": plan.live_version,
        "init_from": str(live_path),
        "replay_only": plan.replay_only,
        "options": {
            "tolerance": options.tolerance,
            "max_intent_drop": options.max_intent_drop,
            "min_label_support": options.min_label_support,
            "replay": options.replay,
            "holdout_fraction": options.holdout_fraction,
            "oversample_new_labels": options.oversample_new_labels,
            "align_new_rows": options.align_new_rows,
            "include_rated": options.include_rated,
            "seed": options.seed,
        },
        "training_set": {
            "replayed": len(plan.replay),
            "feedback": len(plan.train_feedback),
            "weak": sum(1 for e in plan.train_feedback if e.source.endswith(":rating")),
            "total": len(plan.replay) + len(plan.train_feedback),
            "heldout_feedback": len(plan.heldout),
            "new_labels": plan.new_labels,
            "aligned_rows": fitted.result.aligned,
            "too_few_examples": plan.too_few,
        },
        "gate": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "reasons": [c.detail for c in checks if not c.passed],
        "comparison": comparison,
    }
    return _Verdict(report, checks, cand_test)


def _register_candidate(
    plan: TaskPlan,
    fitted: FittedClassifier,
    train: Sequence[Example],
    registry: FileModelRegistry,
    verdict: _Verdict,
    promote: bool,
    started: float,
) -> TaskOutcome:
    """Register the candidate (live when `promote`) with its retrain report."""
    from training.pipeline import VersionData, fingerprint, register_version

    task, report = plan.task, verdict.report
    report["seconds"] = round(time.perf_counter() - started, 1)
    if not promote and verdict.passed:
        report["reasons"] = [report["decision"]]

    def write_reports(staging: Path) -> None:
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (staging / REPORT_MD).write_text(render_markdown(report))

    # The pool a later retrain replays from: everything learned so far, agents' labels
    # replacing what older data said about the same text (held-out labels stay out).
    strong = [e for e in plan.train_feedback if not e.source.endswith(":rating")]
    relabelled = {normalize(e.text) for e in strong} | {normalize(x.text) for x in plan.heldout}
    pool = [e for e in plan.pool if normalize(e.text) not in relabelled] + strong
    version, _, _ = register_version(
        registry.root,
        fitted,
        VersionData(
            test=plan.test,
            pool=pool,
            test_source=f"frozen test set of {task} {plan.live_version} and its lineage",
            info={
                "fingerprint": fingerprint([*plan.replay, *plan.train_feedback]),
                "files": [],
                "test_files": [],
                "retrained_from": plan.live_version,
                "feedback": {
                    "train": len(plan.train_feedback),
                    "heldout": len(plan.heldout),
                    "replayed": len(plan.replay),
                    "new_labels": plan.new_labels,
                },
            },
            train_size=len(train),
        ),
        started,
        promote=promote,
        test_metrics=verdict.test_metrics,
        extra_files=write_reports,
    )
    status = "promoted" if version.live else "kept"
    return TaskOutcome(
        task,
        status,
        version.version,
        registry.live(task),
        tuple(report["reasons"]),
        plan.summary(),
        report,
    )


def replay_only(plan: TaskPlan, registry: FileModelRegistry, options: RetrainOptions) -> TaskPlan:
    """A task with nothing new to learn, planned to retrain on its replay pool beside its
    partner (the live pair trained together stays one encoder)."""
    from training.pipeline import frozen_data

    _, _, path = _live_info(registry, plan.task)
    assert path is not None
    if not plan.test and not plan.pool:
        plan.test, plan.pool = frozen_data(path)
    if not plan.live_labels:
        from bot.nlu.classifier import read_meta

        plan.live_labels = read_meta(path).labels
    plan.replay = replay_sample(plan.pool, options.replay, options.seed)
    plan.train_feedback = []
    plan.new_labels = []
    plan.skip, plan.replay_only = None, True
    return plan


def plan_index(
    settings: Settings, feedback: FeedbackSet, limits: InputLimits = DEFAULT_LIMITS
) -> tuple[dict[str, Any], tuple[list[AnswerPair], str, dict[str, Any] | None] | None]:
    """Whether the answer index needs rebuilding for the approved answers, and its pairs,
    model and curation report (the current index's, kept; or that of the build from data,
    whose lines are the plan's `curation`)."""
    from bot.core.router import RoutingConfig  # its entities: the same curation as serve
    from bot.retrieval.curation import AnswerCurator, Candidate
    from bot.retrieval.index import INDEX_FILE, EmbeddingAnswerIndex
    from bot.retrieval.sources import PairReport, build_answer_pairs, merge_pairs

    directory = settings.retrieval.index_dir
    if not feedback.approved:
        return {"status": "skipped", "reason": "no approved answers from agents"}, None
    entities = RoutingConfig.load(settings.routing.config).entities
    report = PairReport()
    curation_lines: list[str] = []
    if (directory / INDEX_FILE).is_file():
        current = EmbeddingAnswerIndex.load(directory)
        base = [p for p in current.pairs if not p.source.startswith("store:approved_answers:")]
        model = current.model
        old = current.fingerprint
        curation = current.curation
        if curation is not None:
            curation_lines = [
                f"curation: the current index's report is kept ({curation.get('excluded', 0)} "
                f"answers excluded, {len(current.excluded)} listed in the console); "
                "`supportbot index build` curates the data files again"
            ]
    else:
        base = build_answer_pairs(
            [*settings.retrieval.data, *settings.retrieval.faq],
            report,
            limits=limits,
            entities=entities,
        )
        model, old = "bundled", ""
    # Approved answers are trusted as written; their {slot} placeholders are recorded.
    approved = AnswerCurator(entities).curate_all(
        [Candidate(p) for p in feedback.approved], report.curation
    )
    if old == "":  # built from the data files: this build's report
        curation = report.curation.to_dict()
        curation_lines = report.curation.lines()
    pairs = merge_pairs([*base, *(p for p in approved if p is not None)])
    from bot.retrieval.index import fingerprint as pairs_fingerprint

    if pairs_fingerprint(pairs, model) == old:
        return {
            "status": "up to date",
            "approved": len(feedback.approved),
            "pairs": len(pairs),
            "dir": str(directory),
        }, None
    return {
        "status": "rebuild",
        "approved": len(feedback.approved),
        "pairs": len(pairs),
        "dir": str(directory),
        "curation": curation_lines,
    }, (pairs, model, curation)


def rebuild_index(
    settings: Settings,
    pairs: Sequence[AnswerPair],
    model: str,
    curation: dict[str, Any] | None = None,
) -> None:
    """Embed the pairs and swap the index directory in (the running bot reloads it), with
    its curation report (`curation.json`)."""
    from bot.retrieval.index import EmbeddingAnswerIndex

    EmbeddingAnswerIndex.build(pairs, model=model, curation=curation).save(
        settings.retrieval.index_dir
    )


def retrain(
    settings: Settings,
    options: RetrainOptions,
    progress: TextIO = sys.stderr,
) -> RetrainResult:
    """Run the whole retraining loop for the bot configured by `settings`.

    Raises:
        RetrainBusyError: another retrain is running on the same models directory.
        RetrainError: nothing to learn from (no usable labels, no approved answers).
    """
    started = time.perf_counter()
    models_dir = settings.models.dir
    registry = FileModelRegistry(models_dir)
    lock = _no_lock() if options.dry_run else retrain_lock(models_dir)
    with lock:
        sentiments = _live_labels(registry, "sentiment") or SENTIMENTS
        intents = _live_labels(registry, "intent")
        feedback = asyncio.run(_read(settings, options.include_rated, sentiments, intents))
        problems = [str(p) for p in feedback.problems]
        for problem in problems:
            _say(progress, f"skipped {problem}")
        plans = [plan_task(task, registry, feedback, options) for task in TASK_ORDER]
        # The weights are compared only when something is to be learned.
        together = any(p.skip is None for p in plans) and trained_together(registry)
        if together:
            # One task learns, the other replays what it knew: trained as one again, the
            # pair keeps its single encoder and the bot its single pass.
            plans = [p if p.skip is None else replay_only(p, registry, options) for p in plans]
        index_plan, index_work = plan_index(settings, feedback, options.limits)
        runnable = [p for p in plans if p.skip is None]
        if not runnable and index_work is None:
            counts = feedback.counts()
            reasons = "; ".join(f"{p.task}: {p.skip}" for p in plans)
            raise RetrainError(
                "nothing to retrain, the live models are unchanged: "
                f"{reasons}; answer index: {index_plan.get('reason', index_plan['status'])}. "
                f"The store at {_safe_url(settings)} holds {counts['intent_labels']} agent "
                f"intent label(s), {counts['sentiment_labels']} sentiment label(s) and "
                f"{counts['approved_answers']} approved answer(s)"
                + (
                    f"; {len(problems)} feedback row(s) could not be used (listed above)"
                    if problems
                    else ""
                )
                + ". Agents label messages in the console (POST "
                "/console/api/messages/{id}/labels)"
            )
        outcomes: list[TaskOutcome] = []
        if together and not options.dry_run:
            outcomes = train_candidates_together(plans, registry, options, progress)
        for plan in [] if together and not options.dry_run else plans:
            if plan.skip is not None:
                _say(progress, f"{plan.task}: skipped: {plan.skip}")
                outcomes.append(
                    TaskOutcome(
                        plan.task, "skipped", None, plan.live_version, (plan.skip,), plan.summary()
                    )
                )
            elif options.dry_run:
                outcomes.append(
                    TaskOutcome(plan.task, "planned", None, plan.live_version, (), plan.summary())
                )
            else:
                outcomes.append(train_candidate(plan, registry, options, progress))
        if index_work is not None and not options.dry_run:
            _say(progress, f"answer index: embedding {index_plan['pairs']} pairs")
            rebuild_index(settings, *index_work)
            index_plan = {**index_plan, "status": "rebuilt"}
    return RetrainResult(
        options.dry_run,
        feedback.counts(),
        problems,
        outcomes,
        index_plan,
        time.perf_counter() - started,
    )


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _safe_url(settings: Settings) -> str:
    from bot.store.engine import normalize_url

    return normalize_url(settings.store.url).render_as_string(hide_password=True)


def _live_labels(registry: FileModelRegistry, task: str) -> tuple[str, ...]:
    from bot.nlu.classifier import read_meta

    live = registry.live(task)
    return () if live is None else read_meta(registry.root / task / live).labels


async def _read(
    settings: Settings, include_rated: bool, sentiments: Sequence[str], intents: Sequence[str]
) -> FeedbackSet:
    from bot.store.conversations import SqlConversationStore

    store = SqlConversationStore(settings.store.url)
    await store.start()
    try:
        return await read_feedback(store, include_rated, sentiments, intents)
    finally:
        await store.stop()


def describe(result: RetrainResult) -> list[str]:
    """The human-readable summary `supportbot retrain` prints."""
    counts = result.feedback
    lines = [
        ("DRY RUN: nothing was written. " if result.dry_run else "")
        + f"From the store: {counts['intent_labels']} intent and {counts['sentiment_labels']} "
        f"sentiment label(s) by agents, {counts['approved_answers']} approved answer(s), "
        f"{counts['weak_intent_labels']} weak label(s) from rated answers; "
        f"{counts['superseded_labels']} older label(s) replaced by newer ones, "
        f"{counts['skipped_rows']} row(s) skipped, {counts['ignored_customer_corrections']} "
        "customer correction(s) ignored (only agents label)."
    ]
    for outcome in result.tasks:
        plan = outcome.plan
        head = f"{outcome.task}:"
        if outcome.status == "skipped":
            lines.append(f"{head} skipped: {outcome.reasons[0]}")
            continue
        lines.append(
            f"{head} {plan['agent_labels']} agent label(s) ({plan['new_since_live']} newer than "
            f"live {plan['live']}), per label {plan['labels_per_class']}; new labels: "
            f"{', '.join(plan['new_labels']) or 'none'}"
            + (
                f"; too few to learn (need more): {plan['too_few_examples']}"
                if plan["too_few_examples"]
                else ""
            )
        )
        if plan.get("replay_only"):
            lines.append(
                f"{head} nothing new to learn; trained on its replay beside the other task "
                "(the live pair was trained together: one encoder, one pass in the bot), live "
                "only if it holds its frozen test set and the other task's candidate goes live"
            )
        lines.append(
            f"{head} training set {plan['replayed']} replayed (of {plan['replay_pool']}) + "
            f"{plan['feedback_train']} from feedback; evaluation on the frozen test set "
            f"({plan['frozen_test']}) and {plan['feedback_heldout']} held-out labelled messages"
        )
        if outcome.status == "planned":
            lines.append(
                f"{head} would fine-tune from {plan['live']}, compare, and promote only if the "
                "gate passes"
            )
        elif outcome.status == "promoted":
            lines.append(f"{head} {outcome.version} passed the gate and is live")
        else:
            lines.append(
                f"{head} {outcome.version} kept as a candidate (live stays {outcome.live}): "
                + "; ".join(outcome.reasons)
            )
        if outcome.report is not None:
            frozen = outcome.report["comparison"]["frozen_test"]
            fb = outcome.report["comparison"]["feedback"]
            lines.append(
                f"{head} frozen test accuracy {frozen['live']['accuracy']:.2%} -> "
                f"{frozen['candidate']['accuracy']:.2%}; held-out feedback "
                f"{fb['live']['accuracy']:.2%} -> {fb['candidate']['accuracy']:.2%}; report: "
                f"{outcome.version}/{REPORT_MD}"
            )
    index = result.index
    verb = {"rebuild": "would be rebuilt", "rebuilt": "rebuilt"}.get(index["status"])
    if verb:
        lines.append(
            f"answer index {verb} with {index['approved']} approved answer(s): "
            f"{index['pairs']} pairs in {index['dir']}"
        )
        lines += index.get("curation") or []
    else:
        lines.append(f"answer index: {index.get('reason', index['status'])}")
    return lines

"""The offline commands: `train`, `evaluate` and `models`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.core.datafiles import add_limit_flags, limits_from_flags, path_argument
from bot.core.errors import ConfigurationError, SupportbotError
from bot.settings import load_settings
from training.arguments import TrainingArguments
from training.data import (
    CONFLICT_POLICIES,
    TASKS,
    Columns,
    DataValidationError,
    EvaluationDataError,
    LoadReport,
    load_examples,
)
from training.registry import FileModelRegistry, trained_together

DEFAULT_MODELS_DIR = Path("models")
#: What `models promote/rollback` take: the classifiers and the entity model.
TRAIN_TASKS = (*TASKS, "entity")
#: `train intent+sentiment`: both classifiers on one encoder (one pass per message).
JOINT = "intent+sentiment"
MODELS_ENV = "SUPPORTBOT_MODELS__DIR"
CONFIG_HELP = (
    "YAML settings file, as for `serve`; its models.dir (or SUPPORTBOT_MODELS__DIR) is the "
    "models directory unless --models is given"
)
MODELS_HELP = (
    "models directory (default: models.dir from --config or SUPPORTBOT_MODELS__DIR, else ./models)"
)


class DeprecatedAlias(argparse.Action):
    """A flag kept for old scripts (hidden from help): stores like the new one, says so once."""

    def __init__(self, *args: Any, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(
            f"supportbot: {option_string} is deprecated; use {self.replacement} (same meaning)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_settings_flags(parser: argparse.ArgumentParser, nested: bool = False) -> None:
    """`--config FILE` and `--models DIR` (with the old `--out` as a hidden alias).

    Args:
        nested: the flags repeat a parent command's (`models --models D list` and
            `models list --models D` both work); the child's default must not overwrite
            what the parent parsed.
    """
    unset: Any = argparse.SUPPRESS if nested else None
    parser.add_argument("--config", type=Path, metavar="FILE", default=unset, help=CONFIG_HELP)
    parser.add_argument(
        "--models", type=path_argument, metavar="DIR", default=unset, help=MODELS_HELP
    )
    parser.add_argument(
        "--out",
        dest="models",
        type=path_argument,
        default=argparse.SUPPRESS,
        action=DeprecatedAlias,
        replacement="--models",
        help=argparse.SUPPRESS,
    )


def models_dir(ns: argparse.Namespace) -> tuple[Path, str]:
    """The models directory the command works on, and where that choice came from.

    The same settings as `serve` (`--config`, then SUPPORTBOT_* variables), so an operator
    promotes in the directory the bot serves, from any working directory.
    """
    overrides: dict[str, Any] = {}
    if ns.models is not None:
        overrides["models"] = {"dir": ns.models}
    settings = load_settings(ns.config, **overrides)
    if ns.models is not None:
        origin = "--models"
    elif os.environ.get(MODELS_ENV):
        origin = MODELS_ENV
    elif ns.config is not None and "dir" in settings.models.model_fields_set:
        origin = f"models.dir in {ns.config}"
    else:
        origin = "the default; set --models, --config or " + MODELS_ENV
    return settings.models.dir, origin


def _add_columns(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text-column",
        help="text field in CSV/flat JSONL (default: text, utterance, message or query)",
    )
    parser.add_argument(
        "--label-column",
        help="label field in CSV/flat JSONL (default: the task name, label or category)",
    )


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `train`, `evaluate` and `models` on the top-level parser."""
    train = commands.add_parser(
        "train",
        help="fine-tune the intent and sentiment classifiers (apart or together) or the "
        "entity model, and register a new version",
        description="Fine-tune a classifier (or the entity model) from support logs. The last "
        "line printed is the new version's directory (two lines for intent+sentiment).",
    )
    train.add_argument(
        "task",
        choices=(*TRAIN_TASKS, JOINT),
        help="intent or sentiment (classifiers); intent+sentiment (both on one encoder, "
        "which the bot runs once per message for both: the default for data labelled with "
        "both); or entity (learned entities from annotated examples: Rasa [text](entity) "
        "markup or JSONL spans)",
    )
    train.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="conversations JSONL, CSV/JSONL of labelled texts, Rasa nlu.yml, or directories",
    )
    train.add_argument("--test", type=Path, nargs="+", default=[], help="a separate test set")
    train.add_argument("--model", default="bundled", help="backbone: bundled, HF name or path")
    add_settings_flags(train)
    train.add_argument(
        "--epochs",
        type=int,
        help="most epochs to run; early stopping may end sooner (default: enough for ~800 "
        "optimizer steps, 2 to 30)",
    )
    train.add_argument("--batch-size", type=int, help="examples per batch (32; entity models 16)")
    train.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        help="batches summed per optimizer step (1): a larger effective batch in less memory",
    )
    train.add_argument("--learning-rate", type=float, help="encoder learning rate (1e-4)")
    train.add_argument(
        "--max-length", type=int, default=64, help="tokens kept per text; longer ones are cut (64)"
    )
    train.add_argument("--seed", type=int, default=42, help="random seed, for repeatable runs")
    train.add_argument("--min-examples", type=int, default=5, help="fewest examples per label")
    train.add_argument(
        "--class-weighting",
        choices=("auto", "balanced", "none"),
        default="auto",
        help="weigh rare labels up in the loss: auto (when labels are imbalanced), balanced "
        "or none",
    )
    train.add_argument(
        "--patience",
        type=int,
        help="stop early after this many epochs without a validation macro-F1 gain (2; entity "
        "models: span F1, 3)",
    )
    train.add_argument(
        "--tuned-layers",
        type=tuned_layers,
        help="fine-tune only the top N transformer layers, or `all` (default: 3; all with "
        "--lora). Fewer layers train faster and let the bot share the rest between intent, "
        "sentiment and the answer index",
    )
    train.add_argument("--lora", action="store_true", help="train LoRA adapters (peft)")
    train.add_argument(
        "--abstain-precision",
        type=float,
        default=0.9,
        help="abstain below the confidence where validation precision reaches this",
    )
    train.add_argument(
        "--oos-method",
        default=TrainingArguments.oos_method,
        help="intent models: how out-of-scope messages are told apart: knn+energy+sentence-knn "
        "(default), msp, energy, mahalanobis, knn, sentence-knn, two or three joined by '+', "
        "or none (README: Out of scope)",
    )
    train.add_argument(
        "--oos-keep-recall",
        type=float,
        default=TrainingArguments.oos_keep_recall,
        help="share of correctly answered in-scope validation messages the out-of-scope "
        "threshold keeps (default 0.98: at most ~2 points of accuracy; lower declines more)",
    )
    train.add_argument(
        "--oos-label",
        help="the label of out-of-scope training examples (default: out_of_scope or "
        "nlu_fallback when the data has one)",
    )
    train.add_argument(
        "--promote",
        choices=("auto", "yes", "no"),
        default="auto",
        help="make the new version live: auto = only if the task has none yet",
    )
    train.add_argument(
        "--scheme",
        choices=("all", "first"),
        default="all",
        help="entity models: train the BIO tags on every word piece (all, the default) or on "
        "the first piece of each word only (first)",
    )
    train.add_argument(
        "--no-crf",
        action="store_true",
        help="entity models: train without the CRF layer (learned tag transitions and a "
        "loss over each sentence's whole tag sequence)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_columns(train)
    _add_on_conflict(train)
    add_limit_flags(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate", help="print the report of a model on any labelled set"
    )
    evaluate.add_argument("model", help="version directory, task (its live version) or task/vN")
    evaluate.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="labelled texts to evaluate on, in any training format, or directories",
    )
    add_settings_flags(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--confusion-png", type=Path, help="also save a confusion matrix here")
    evaluate.add_argument(
        "--oos-data",
        type=Path,
        nargs="+",
        help="intent models: out-of-scope texts (.txt one per line, or CSV/JSONL with a text "
        "column; labels ignored): also report out-of-scope recall and precision, accuracy "
        "with and without declines, AUROC and FPR at 95%% in-scope recall",
    )
    _add_columns(evaluate)
    _add_on_conflict(evaluate)
    add_limit_flags(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    models = commands.add_parser(
        "models",
        help="list, show, promote and roll back versions",
        description="The model versions in the models directory the bot serves: --models, "
        "else models.dir from --config or SUPPORTBOT_MODELS__DIR (as for serve), else ./models.",
    )
    add_settings_flags(models)
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="versions per task, marking the live one")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    show = actions.add_parser("show", help="the report of a version")
    show.add_argument("model", help="version directory, task or task/vN")
    promote = actions.add_parser("promote", help="make a version live")
    promote.add_argument("task", choices=TRAIN_TASKS, help="intent, sentiment or entity")
    promote.add_argument("version", help="the version to make live, e.g. v3")
    rollback = actions.add_parser("rollback", help="make the previous live version live again")
    rollback.add_argument("task", choices=TRAIN_TASKS, help="intent, sentiment or entity")
    # The flags are accepted after the action too (`models list --models DIR`), where users
    # type them.
    for action in (listing, show, promote, rollback):
        add_settings_flags(action, nested=True)
    models.set_defaults(handler=run_models)

    retrain = commands.add_parser(
        "retrain",
        help="learn from agents' labels in the store; promote only if the gate passes",
        description="Fine-tune the live intent and sentiment models on what agents labelled "
        "(plus a replay of earlier data), compare with the live models on their frozen test "
        "set and on held-out feedback, promote when the gate passes, and rebuild the answer "
        "index with approved answers. Settings come from --config and SUPPORTBOT_* variables "
        "(section retrain), like `serve`. Exit status: 0 all candidates live, 1 a candidate "
        "was kept back by the gate, 2 nothing done (no labels, another retrain running).",
    )
    retrain.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    retrain.add_argument("--models", type=path_argument, metavar="DIR", help=MODELS_HELP)
    add_limit_flags(retrain)
    retrain.add_argument(
        "--dry-run", action="store_true", help="print the training set and the plan; write nothing"
    )
    retrain.add_argument(
        "--include-rated",
        action="store_true",
        default=None,
        help="also learn from bot answers customers rated helpful (weak labels)",
    )
    retrain.add_argument("--tolerance", type=float, help="frozen-test accuracy points to lose")
    retrain.add_argument("--max-intent-drop", type=float, help="F1 points any one label may lose")
    retrain.add_argument("--replay", type=int, help="earlier examples replayed")
    retrain.add_argument("--epochs", type=int, help="passes over the retraining set")
    retrain.add_argument(
        "--learning-rate", type=float, help="encoder learning rate (default: retrain setting)"
    )
    retrain.add_argument("--seed", type=int, default=42, help="random seed (42)")
    retrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    retrain.add_argument("--json", action="store_true", help="print one JSON object")
    retrain.set_defaults(handler=run_retrain)


def _add_on_conflict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-conflict",
        choices=CONFLICT_POLICIES,
        default="error",
        help="a text that carries two different labels: error (stop and list them, the "
        "default), majority (keep its most frequent label; a tie drops it) or drop (leave "
        "out every copy); the load report counts what was resolved",
    )


def tuned_layers(value: str) -> int | str:
    """`--tuned-layers`: a positive count, or `all`."""
    if value.strip().lower() == "all":
        return "all"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number of layers >= 1 or `all`, got {value!r}"
        )
    return count


def layers_to_tune(given: int | str | None, lora: bool) -> int | None:
    """TrainingArguments.tuned_layers from the flag: `all` (or --lora without it) is None."""
    if given == "all" or (given is None and lora):
        return None
    return TrainingArguments.tuned_layers if given is None else int(given)


def _given(value: Any, default: Any) -> Any:
    """A flag's value, or the recipe's default when the flag was not given."""
    return default if value is None else value


def run_train(ns: argparse.Namespace) -> int:
    if ns.task == "entity":
        return run_train_entity(ns)
    from training.pipeline import train_task

    args = TrainingArguments(
        model=ns.model,
        epochs=ns.epochs,
        batch_size=_given(ns.batch_size, TrainingArguments.batch_size),
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        learning_rate=_given(ns.learning_rate, TrainingArguments.learning_rate),
        max_length=ns.max_length,
        seed=ns.seed,
        min_examples_per_label=ns.min_examples,
        class_weighting=ns.class_weighting,
        early_stopping_patience=_given(ns.patience, TrainingArguments.early_stopping_patience),
        tuned_layers=layers_to_tune(ns.tuned_layers, ns.lora),
        lora=ns.lora,
        abstain_precision=ns.abstain_precision,
        oos_method=ns.oos_method,
        oos_keep_recall=ns.oos_keep_recall,
        oos_label=ns.oos_label,
    )
    promote = {"auto": None, "yes": True, "no": False}[ns.promote]
    out, _ = models_dir(ns)
    if ns.task == JOINT:
        return _run_train_joint(ns, args, out, promote)
    run = train_task(
        ns.task,
        ns.data,
        out,
        args,
        test=ns.test,
        columns=Columns(ns.text_column, ns.label_column),
        progress=not ns.no_progress,
        promote=promote,
        limits=limits_from_flags(ns),
        on_conflict=ns.on_conflict,
    )
    for line in run.load_report.lines():
        print(line)
    print()
    print(run.report)
    state = "live" if run.version.live else "not live (promote with `supportbot models promote`)"
    print(f"{ns.task} {run.version.version} is {state}")
    print(run.version.path)
    return 0


def _run_train_joint(
    ns: argparse.Namespace, args: TrainingArguments, out: Path, promote: bool | None
) -> int:
    from training.pipeline import train_joint

    if ns.label_column:
        raise ConfigurationError(
            "--label-column names one task's labels; intent+sentiment reads each task's own "
            "column (intent and sentiment, or label per file): train the tasks one by one to "
            "rename them"
        )
    runs = train_joint(
        ns.data,
        out,
        args,
        test=ns.test,
        columns=Columns(ns.text_column, None),
        progress=not ns.no_progress,
        promote=promote,
        limits=limits_from_flags(ns),
        on_conflict=ns.on_conflict,
    )
    for run in runs:
        for line in run.load_report.lines():
            print(line)
        print()
        print(run.report)
    for run in runs:
        state = (
            "live" if run.version.live else "not live (promote with `supportbot models promote`)"
        )
        print(f"{run.version.task} {run.version.version} is {state}")
    print(
        f"{' and '.join(f'{r.version.task} {r.version.version}' for r in runs)} share one "
        "encoder: the bot runs them in one pass when both are live"
    )
    for run in runs:
        print(run.version.path)
    return 0


def run_train_entity(ns: argparse.Namespace) -> int:
    """`supportbot train entity`: the token-classification recipe (README: Learned entities)."""
    from training.entities import ENTITY_DEFAULTS, train_entities

    args = TrainingArguments(
        model=ns.model,
        epochs=ns.epochs,
        batch_size=_given(ns.batch_size, ENTITY_DEFAULTS.batch_size),
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        learning_rate=_given(ns.learning_rate, ENTITY_DEFAULTS.learning_rate),
        max_length=ns.max_length,
        seed=ns.seed,
        label_smoothing=ENTITY_DEFAULTS.label_smoothing,
        early_stopping_patience=_given(ns.patience, ENTITY_DEFAULTS.early_stopping_patience),
        tuned_layers=layers_to_tune(ns.tuned_layers, ns.lora),
        lora=ns.lora,
    )
    promote = {"auto": None, "yes": True, "no": False}[ns.promote]
    out, _ = models_dir(ns)
    run = train_entities(
        ns.data,
        out,
        args,
        test=ns.test,
        scheme=ns.scheme,
        progress=not ns.no_progress,
        promote=promote,
        limits=limits_from_flags(ns),
        crf=not ns.no_crf,
    )
    print(f"read {len(run.files)} file(s): {', '.join(run.files)}")
    print()
    print(run.report)
    state = "live" if run.version.live else "not live (promote with `supportbot models promote`)"
    print(f"entity {run.version.version} is {state}")
    print(run.version.path)
    return 0


def run_evaluate(ns: argparse.Namespace) -> int:
    from bot.nlu.classifier import TransformerClassifier
    from training.evaluation import plot_confusion, render_report
    from training.pipeline import evaluate_model

    path = FileModelRegistry(models_dir(ns)[0]).resolve(ns.model)
    if (path / "entity.json").is_file():
        return evaluate_entities(path, ns)
    classifier = TransformerClassifier(path)
    report = LoadReport()
    try:
        examples = load_examples(
            ns.data,
            classifier.meta.task,
            Columns(ns.text_column, ns.label_column),
            min_examples=0,
            report=report,
            limits=limits_from_flags(ns),
            on_conflict=ns.on_conflict,
        )
    except DataValidationError as exc:
        raise EvaluationDataError(exc.problems) from None
    if not ns.json:
        for line in report.lines():
            print(line)
    metrics = evaluate_model(classifier, examples)
    metrics["model"] = str(path)
    metrics["data"] = [str(p) for p in ns.data]
    if ns.oos_data:
        metrics["out_of_scope"] = evaluate_out_of_scope(
            classifier, path, examples, ns.oos_data, ns, limits_from_flags(ns)
        )
        metrics["oos_data"] = [str(p) for p in ns.oos_data]
    if ns.confusion_png:
        plot_confusion(
            metrics["confusion_matrix"],
            classifier.labels,
            ns.confusion_png,
            subject=f"{classifier.meta.task} {path.name}",
        )
    if ns.json:
        json.dump(metrics, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_report(metrics, f"{path} on {', '.join(metrics['data'])}"))
        if "out_of_scope" in metrics:
            from training.ood import render_oos

            sys.stdout.write(render_oos(metrics["out_of_scope"]))
    return 0


def evaluate_entities(path: Path, ns: argparse.Namespace) -> int:
    """`evaluate` of an entity model: span metrics on annotated data (Rasa markup, JSONL)."""
    from bot.nlu.entity_model import TokenTagger
    from training.entities import (
        EntityDataError,
        load_annotated,
        render_entity_report,
        span_metrics,
    )

    try:
        examples = load_annotated(ns.data, limits_from_flags(ns)).examples
    except EntityDataError as exc:
        raise EvaluationDataError(exc.problems) from None
    tagger = TokenTagger(path)
    found = tagger.spans([e.text for e in examples])
    metrics = span_metrics(
        [[(s.entity, s.start, s.end) for s in e.spans] for e in examples],
        [[(f.type, f.start, f.end) for f in row] for row in found],
        tagger.entities,
    )
    metrics["model"] = str(path)
    metrics["data"] = [str(p) for p in ns.data]
    if ns.json:
        print(json.dumps(metrics))
    else:
        sys.stdout.write(render_entity_report(metrics, f"{path} on {', '.join(metrics['data'])}"))
    return 0


def evaluate_out_of_scope(
    classifier: Any,
    path: Path,
    examples: Any,
    oos_paths: list[Path],
    ns: argparse.Namespace,
    limits: Any,
) -> dict[str, Any]:
    """`evaluate --oos-data`: the model's detector on the in-scope examples and the texts,
    computed as `supportbot serve` computes them (tuned top layers int8)."""
    import numpy as np

    from bot.nlu.oos import OosDetector
    from training.data import load_texts
    from training.ood import backbone_sentences, evaluate_detector, pooled_outputs, served_copy

    detector = OosDetector.load_if_present(path)
    if detector is None:
        raise ConfigurationError(
            f"{path} has no out-of-scope detector (a sentiment model, or an intent model "
            "trained by an older supportbot or with --oos-method none); train the intent "
            "model again to get one"
        )
    texts = load_texts(oos_paths, Columns(ns.text_column, None), limits)
    args_file = path / "training_args.json"
    trained = (
        TrainingArguments.from_dict(json.loads(args_file.read_text()))
        if args_file.is_file()
        else None
    )
    tuned = trained.tuned_layers if trained is not None else None
    served = served_copy(classifier.model, tuned)
    max_length = classifier.meta.max_length
    index = {label: i for i, label in enumerate(classifier.labels)}
    # Examples labelled with the model's out-of-scope label join the out-of-scope side.
    oos_label = classifier.labels[detector.oos_column] if detector.oos_column is not None else None
    in_scope = [e for e in examples if e.label != oos_label]
    texts += [e.text for e in examples if e.label == oos_label]
    x, logits = pooled_outputs(served, classifier.tokenizer, [e.text for e in in_scope], max_length)
    truth = np.array([index.get(e.label, -1) for e in in_scope], dtype=int)
    oos = pooled_outputs(served, classifier.tokenizer, texts, max_length)
    sentences = None
    if detector.needs_sentences:
        # As `serve` decides with the answer index's encoder in its forward (the default).
        encoder = backbone_sentences(
            detector.sentence_model or (trained.model if trained else "bundled")
        )
        sentences = (encoder.embed([e.text for e in in_scope]), encoder.embed(texts))
    return evaluate_detector(detector, (x, logits, truth), oos, sentences)


def run_models(ns: argparse.Namespace) -> int:
    root, origin = models_dir(ns)
    ns.models_dir = root  # for the composition root's reload notice after promote/rollback
    if not root.is_dir():
        raise ConfigurationError(
            f"models directory {root.absolute()} ({origin}) does not exist; point --models or "
            "--config at the directory the bot serves (models.dir), or train a model first"
        )
    registry = FileModelRegistry(root)
    if ns.action == "list":
        listing = {
            task: [v.summary() for v in registry.versions(task)] for task in registry.tasks()
        }
        if ns.json:
            print(
                json.dumps(
                    {
                        "models_dir": str(root),
                        "tasks": {
                            task: {"live": registry.live(task), "versions": versions}
                            for task, versions in listing.items()
                        },
                        "live_trained_together": trained_together(registry),
                    }
                )
            )
            return 0
        if not listing:
            print(
                f"no models in {root.absolute()} ({origin}); train one with "
                "`supportbot train intent --data data/`"
            )
            return 0
        print(f"models in {root.absolute()} ({origin}):")
        for task, versions in listing.items():
            print(f"{task}:")
            for v in versions:
                marker = "*" if v["live"] else " "
                acc = "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}"
                f1 = "-" if v["macro_f1"] is None else f"{v['macro_f1']:.4f}"
                print(
                    f"  {marker} {v['version']:<6} accuracy {acc}  macro-F1 {f1}  {v['created_at']}"
                )
        if trained_together(registry):
            print(
                f"live intent {registry.live('intent')} and sentiment "
                f"{registry.live('sentiment')} were trained together (one encoder): the bot "
                "runs them in one pass"
            )
        return 0
    if ns.action == "show":
        path = registry.resolve(ns.model)
        print(path)
        report = path / "report.txt"
        print(report.read_text() if report.exists() else "(no report.txt)")
        return 0
    if ns.action == "promote":
        registry.promote(ns.task, ns.version)
        print(f"{ns.task} {ns.version} is live")
        return 0
    if ns.action == "rollback":
        version = registry.rollback(ns.task)
        print(f"{ns.task} {version} is live again")
        return 0
    raise SupportbotError(f"unknown models action {ns.action!r}")


def run_retrain(ns: argparse.Namespace) -> int:
    from bot.settings import load_settings
    from training.retrain import RetrainOptions, describe, retrain

    overrides: dict[str, Any] = {}
    if ns.models is not None:
        overrides["models"] = {"dir": ns.models}
    settings = load_settings(ns.config, **overrides)
    config = settings.retrain
    options = RetrainOptions(
        dry_run=ns.dry_run,
        include_rated=config.include_rated if ns.include_rated is None else ns.include_rated,
        tolerance=config.tolerance if ns.tolerance is None else ns.tolerance,
        max_intent_drop=config.max_intent_drop
        if ns.max_intent_drop is None
        else ns.max_intent_drop,
        min_label_support=config.min_label_support,
        replay=config.replay if ns.replay is None else ns.replay,
        holdout_fraction=config.holdout_fraction,
        min_new_label_examples=config.min_new_intent_examples,
        epochs=ns.epochs,
        learning_rate=config.learning_rate if ns.learning_rate is None else ns.learning_rate,
        seed=ns.seed,
        progress=not ns.no_progress,
        limits=limits_from_flags(ns),
    )
    result = retrain(settings, options)
    if ns.json:
        print(json.dumps(result.to_dict()))
    else:
        for line in describe(result):
            print(line)
    return result.exit_code

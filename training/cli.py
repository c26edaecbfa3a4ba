"""The offline commands: `train`, `evaluate` and `models`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bot.core.datafiles import add_limit_flags, limits_from_flags, path_argument
from bot.core.errors import SupportbotError
from training.arguments import TrainingArguments
from training.data import TASKS, Columns, load_examples
from training.registry import FileModelRegistry

DEFAULT_MODELS_DIR = Path("models")


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
        help="fine-tune an intent or sentiment classifier and register a new version",
        description="Fine-tune a classifier from support logs. The last line printed is the "
        "new version's directory.",
    )
    train.add_argument("task", choices=TASKS)
    train.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="conversations JSONL, CSV/JSONL of labelled texts, Rasa nlu.yml, or directories",
    )
    train.add_argument("--test", type=Path, nargs="+", default=[], help="a separate test set")
    train.add_argument("--model", default="bundled", help="backbone: bundled, HF name or path")
    train.add_argument(
        "--out", type=path_argument, default=DEFAULT_MODELS_DIR, help="models directory"
    )
    train.add_argument(
        "--epochs", type=int, help="default: enough for ~800 optimizer steps (2 to 30)"
    )
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--max-length", type=int, default=64)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--min-examples", type=int, default=5, help="fewest examples per label")
    train.add_argument("--class-weighting", choices=("auto", "balanced", "none"), default="auto")
    train.add_argument("--patience", type=int, default=2, help="early-stopping patience (epochs)")
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
        "--promote",
        choices=("auto", "yes", "no"),
        default="auto",
        help="make the new version live: auto = only if the task has none yet",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_columns(train)
    add_limit_flags(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate", help="print the report of a model on any labelled set"
    )
    evaluate.add_argument("model", help="version directory, task (its live version) or task/vN")
    evaluate.add_argument("--data", type=Path, nargs="+", required=True)
    evaluate.add_argument(
        "--out", type=path_argument, default=DEFAULT_MODELS_DIR, help="models directory"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--confusion-png", type=Path, help="also save a confusion matrix here")
    _add_columns(evaluate)
    add_limit_flags(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    models = commands.add_parser("models", help="list, show, promote and roll back versions")
    models.add_argument(
        "--out", type=path_argument, default=DEFAULT_MODELS_DIR, help="models directory"
    )
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="versions per task, marking the live one")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="the report of a version")
    show.add_argument("model", help="version directory, task or task/vN")
    promote = actions.add_parser("promote", help="make a version live")
    promote.add_argument("task", choices=TASKS)
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", help="make the previous live version live again")
    rollback.add_argument("task", choices=TASKS)
    # `--out` is accepted after the action too (`models list --out DIR`), where users type it.
    for action in (listing, show, promote, rollback):
        action.add_argument(
            "--out", type=path_argument, default=argparse.SUPPRESS, help="models directory"
        )
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
    retrain.add_argument("--config", type=Path, help="YAML settings file (as for serve)")
    retrain.add_argument("--models", type=Path, help="models directory (default: models.dir)")
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
    retrain.add_argument("--seed", type=int, default=42)
    retrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    retrain.add_argument("--json", action="store_true", help="print one JSON object")
    retrain.set_defaults(handler=run_retrain)


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


def run_train(ns: argparse.Namespace) -> int:
    from training.pipeline import train_task

    args = TrainingArguments(
        model=ns.model,
        epochs=ns.epochs,
        batch_size=ns.batch_size,
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        learning_rate=ns.learning_rate,
        max_length=ns.max_length,
        seed=ns.seed,
        min_examples_per_label=ns.min_examples,
        class_weighting=ns.class_weighting,
        early_stopping_patience=ns.patience,
        tuned_layers=layers_to_tune(ns.tuned_layers, ns.lora),
        lora=ns.lora,
        abstain_precision=ns.abstain_precision,
    )
    promote = {"auto": None, "yes": True, "no": False}[ns.promote]
    run = train_task(
        ns.task,
        ns.data,
        ns.out,
        args,
        test=ns.test,
        columns=Columns(ns.text_column, ns.label_column),
        progress=not ns.no_progress,
        promote=promote,
        limits=limits_from_flags(ns),
    )
    for line in run.load_report.lines():
        print(line)
    print()
    print(run.report)
    state = "live" if run.version.live else "not live (promote with `supportbot models promote`)"
    print(f"{ns.task} {run.version.version} is {state}")
    print(run.version.path)
    return 0


def run_evaluate(ns: argparse.Namespace) -> int:
    from bot.nlu.classifier import TransformerClassifier
    from training.evaluation import plot_confusion, render_report
    from training.pipeline import evaluate_model

    path = FileModelRegistry(ns.out).resolve(ns.model)
    classifier = TransformerClassifier(path)
    examples = load_examples(
        ns.data,
        classifier.meta.task,
        Columns(ns.text_column, ns.label_column),
        min_examples=0,
        limits=limits_from_flags(ns),
    )
    metrics = evaluate_model(classifier, examples)
    metrics["model"] = str(path)
    metrics["data"] = [str(p) for p in ns.data]
    if ns.confusion_png:
        plot_confusion(metrics["confusion_matrix"], classifier.labels, ns.confusion_png)
    if ns.json:
        json.dump(metrics, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_report(metrics, f"{path} on {', '.join(metrics['data'])}"))
    return 0


def run_models(ns: argparse.Namespace) -> int:
    registry = FileModelRegistry(ns.out)
    if ns.action == "list":
        listing = {
            task: [v.summary() for v in registry.versions(task)] for task in registry.tasks()
        }
        if ns.json:
            print(
                json.dumps(
                    {
                        "models_dir": str(ns.out),
                        "tasks": {
                            task: {"live": registry.live(task), "versions": versions}
                            for task, versions in listing.items()
                        },
                    }
                )
            )
            return 0
        if not listing:
            print(f"no models in {ns.out}; train one with `supportbot train intent --data data/`")
        for task, versions in listing.items():
            print(f"{task}:")
            for v in versions:
                marker = "*" if v["live"] else " "
                acc = "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}"
                f1 = "-" if v["macro_f1"] is None else f"{v['macro_f1']:.4f}"
                print(
                    f"  {marker} {v['version']:<6} accuracy {acc}  macro-F1 {f1}  {v['created_at']}"
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

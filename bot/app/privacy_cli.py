"""`supportbot privacy`: export everything held about a customer, erase it, or purge the
conversations older than the retention.

The commands work on the database, the models directory and the answer index in the settings
(`--config FILE`, then `SUPPORTBOT_*` variables, as for `supportbot serve`) and migrate the
database first. An erasure removes the customer's rows from the store in one transaction,
their message texts from every model version's replay pool and frozen test set, and the
answer index's pairs made of their conversations (the index is rewritten without them and
swapped in like a rebuilt one, so running bots reload it). A purge removes old conversations
from the store only (see docs/privacy.md).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bot.core.errors import BadRequestError, ConfigurationError
from bot.nlu.artifacts import REPLAY_POOL_FILE, TEST_SET_FILE
from bot.retrieval.index import EMBEDDINGS_FILE, INDEX_FILE, EmbeddingAnswerIndex
from bot.retrieval.sources import AnswerPair
from bot.settings import Settings, load_settings
from bot.store.conversations import opened_store
from bot.store.privacy import RETENTION, Customer, CustomerData, Erasure, Purge, SqlPrivacyStore

# The files of a model version that hold customer texts (see training/pipeline.py).
TRAINING_FILES = (REPLAY_POOL_FILE, TEST_SET_FILE)


@dataclass(frozen=True, slots=True)
class FileScrub:
    """Lines holding the customer's texts found (and, unless a dry run, removed) in a file."""

    path: Path
    removed: int


@dataclass(frozen=True, slots=True)
class IndexScrub:
    """Pairs of the answer index made of the customer's conversations, per kind, found (and,
    unless a dry run, removed: the index rewritten without them and swapped in)."""

    directory: Path
    removed: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    # Excluded answers of the saved curation report (`curation.json`, the console's list)
    # quoting the customer's conversations.
    excluded: int = 0


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `privacy` and its subcommands."""
    privacy = commands.add_parser(
        "privacy",
        help="export or erase everything held about a customer (GDPR access and erasure)",
        description="Answer a customer's access or erasure request. Settings (the database, "
        "the models directory) come from --config (YAML) and SUPPORTBOT_* variables, as for "
        "serve.",
    )
    actions = privacy.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--config", type=Path, help="YAML settings file")
        parser.add_argument("--sender", help="the customer's sender id on their channel")
        parser.add_argument(
            "--channel", help="only the sender's conversation on this channel (default: all)"
        )
        parser.add_argument("--conversation", help="one conversation, by its id")
        return parser

    export = action("export", "print one JSON document with every stored row of a customer")
    export.add_argument(
        "--output", "-o", type=Path, help="write the document to FILE (default: stdout)"
    )
    export.set_defaults(handler=run_export)

    erase = action(
        "erase",
        "delete a customer's conversations, messages, feedback, escalations and notes (one "
        "transaction) and their texts from every model version's replay pool and test set",
    )
    erase.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; change nothing"
    )
    erase.add_argument(
        "--by", metavar="NAME", help="who asked for the erasure (default: the OS user)"
    )
    erase.set_defaults(handler=run_erase)

    purge = actions.add_parser(
        "purge",
        help="delete the conversations older than the retention (privacy.retention_days)",
        description="Delete every conversation whose last message is older than "
        "--older-than-days (default: privacy.retention_days) with its messages, feedback, "
        "escalations, notes and labels, in batches of one transaction each. Model files and "
        "the answer index are not touched. `serve` does this on a schedule when "
        "privacy.retention_days is set.",
    )
    purge.add_argument("--config", type=Path, help="YAML settings file")
    purge.add_argument(
        "--older-than-days",
        type=_days,
        metavar="N",
        help="purge conversations last active more than N days ago (default: the setting)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; change nothing"
    )
    purge.add_argument(
        "--batch-size", type=_days, default=500, help="conversations per transaction"
    )
    purge.set_defaults(handler=run_purge)


def _days(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def customer_of(ns: argparse.Namespace) -> Customer:
    """The customer the options name (BadRequestError when they name none or two)."""
    return Customer(sender=ns.sender, channel=ns.channel, conversation_id=ns.conversation)


@asynccontextmanager
async def opened_privacy(settings: Settings) -> AsyncIterator[SqlPrivacyStore]:
    """The privacy queries on the settings' database, migrated first; closed on exit."""
    async with opened_store(settings.store.url) as store:
        yield SqlPrivacyStore(store)


def training_files(models_dir: Path) -> list[Path]:
    """Every model version's replay pool and frozen test set under `models_dir`."""
    found: list[Path] = []
    for name in TRAINING_FILES:
        found += models_dir.glob(f"*/v*/{name}")
    return sorted(found)


def remove_texts(path: Path, texts: frozenset[str], *, dry_run: bool = False) -> int:
    """Remove the JSONL lines of `path` whose `text` is one of `texts`; the count removed.

    The file is rewritten atomically (a temporary file in the same directory, renamed over
    it), so a crash leaves the old file or the new one, never half of one. Other lines are
    kept byte for byte.

    Raises:
        BadRequestError: a line is not a JSON object (the file is not one training wrote).
    """
    kept: list[str] = []
    removed = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                kept.append(line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequestError(
                    f"{path} line {number}: not JSON ({exc.msg}); every line of a training "
                    "file is one JSON object; fix or remove the line, then erase again"
                ) from exc
            if isinstance(record, dict) and record.get("text") in texts:
                removed += 1
            else:
                kept.append(line)
    if removed and not dry_run:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.writelines(kept)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, path.stat().st_mode & 0o777)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return removed


def scrub_training_files(
    models_dir: Path, texts: frozenset[str], *, dry_run: bool = False
) -> list[FileScrub]:
    """Remove `texts` from every replay pool and test set; the files that held any."""
    if not texts:
        return []
    scrubs = [
        FileScrub(p, remove_texts(p, texts, dry_run=dry_run)) for p in training_files(models_dir)
    ]
    return [scrub for scrub in scrubs if scrub.removed]


# What curation puts in place of a detail in an indexed question or answer: a slot or name
# placeholder (`{order_id}`, `{name}`) or a mask (`[EMAIL]`, or `[email]` in questions).
_HOLE = re.compile(r"\{[a-z_][a-z0-9_]*\}|\[[A-Za-z][A-Za-z_]*\]")
# Literal characters a templated text needs around its holes to be matched at all (a bare
# "{order_id}" would match anything).
MIN_LITERAL = 10


def _matcher(indexed: str) -> re.Pattern[str] | None:
    """A pattern matching the texts that curation turns into `indexed` (None: no holes, or
    too little text around them)."""
    parts = _HOLE.split(indexed.strip())
    if len(parts) == 1 or sum(len(p.strip()) for p in parts) < MIN_LITERAL:
        return None
    return re.compile(".+?".join(re.escape(p) for p in parts), re.DOTALL)


def customer_texts(erasure: Erasure) -> Callable[[str, str], bool]:
    """Whether a question and answer were made of the customer's conversations: the question
    is one of their texts or the answer an agent's reply to them, as written or as the index's
    curation rewrites them (details masked, `{order_id}` and `{name}` placeholders)."""
    questions = {text.strip() for text in erasure.texts}
    answers = {answer.strip() for answer in erasure.answers}

    def one_of(indexed: str, texts: set[str]) -> bool:
        if indexed.strip() in texts:
            return True
        pattern = _matcher(indexed)
        return pattern is not None and any(pattern.fullmatch(text) for text in texts)

    def holds(question: str, answer: str) -> bool:
        return one_of(question, questions) or one_of(answer, answers)

    return holds


def customer_pairs(erasure: Erasure) -> Callable[[AnswerPair], bool]:
    """Whether an answer-index pair was made of the customer's conversations: one of their
    approved answers, or its question or (unless an FAQ entry) its answer is theirs (see
    `customer_texts`)."""
    sources = {f"store:approved_answers:{i}" for i in erasure.approved}
    theirs = customer_texts(erasure)

    def holds(pair: AnswerPair) -> bool:
        return pair.source in sources or theirs(
            pair.question, pair.answer if pair.kind != "faq" else ""
        )

    return holds


def scrub_answer_index(
    directory: Path, erasure: Erasure, *, dry_run: bool = False
) -> IndexScrub | None:
    """Remove the customer's pairs from the answer index at `directory` (None: no index).

    The remaining pairs keep their embeddings (nothing is embedded again, no model loads);
    the new index is written beside the old one and swapped in (`EmbeddingAnswerIndex.save`),
    with a new build time, so running bots reload it as after `supportbot retrain`.

    Raises:
        ConfigurationError: the index files do not agree with each other (rebuild it).
    """
    if not (directory / INDEX_FILE).is_file():
        return None
    index = EmbeddingAnswerIndex.load(directory)
    holds = customer_pairs(erasure)
    drop = [row for row, pair in enumerate(index.pairs) if holds(pair)]
    removed: Counter[str] = Counter(str(index.pairs[row].kind) for row in drop)
    curation, excluded = _scrubbed_curation(index.curation, customer_texts(erasure))
    if (not drop and not excluded) or dry_run:
        return IndexScrub(directory, removed, len(index) - len(drop), excluded)
    embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
    if embeddings.shape[0] != len(index):
        raise ConfigurationError(
            f"{directory}: {EMBEDDINGS_FILE} has {embeddings.shape[0]} rows for {len(index)} "
            f"pairs; rebuild the index with `supportbot index build --index {directory}`"
        )
    keep = np.ones(len(index), dtype=bool)
    keep[drop] = False
    kept = [pair for row, pair in enumerate(index.pairs) if keep[row]]
    EmbeddingAnswerIndex(kept, embeddings[keep], model=index.model, curation=curation).save(
        directory
    )
    return IndexScrub(directory, removed, len(kept), excluded)


def _scrubbed_curation(
    curation: Mapping[str, Any] | None, holds: Callable[[str, str], bool]
) -> tuple[dict[str, Any] | None, int]:
    """The index's curation report without the excluded answers made of the customer's
    conversations (they quote the agent's reply as written, details and all), and how many
    went."""
    if curation is None:
        return None, 0
    listed = list(curation.get("excluded_answers", []))
    kept = [e for e in listed if not holds(str(e.get("question", "")), str(e.get("answer", "")))]
    return {**curation, "excluded_answers": kept}, len(listed) - len(kept)


def run_export(ns: argparse.Namespace) -> int:
    customer = customer_of(ns)

    async def export() -> CustomerData:
        async with opened_privacy(load_settings(ns.config)) as privacy:
            return await privacy.export(customer)

    document = json.dumps(export_document(asyncio.run(export())), indent=2, ensure_ascii=False)
    if ns.output is None:
        print(document)
    else:
        ns.output.write_text(document + "\n", encoding="utf-8")
        print(f"wrote everything held about {customer.describe()} to {ns.output}", file=sys.stderr)
    return 0


def export_document(data: CustomerData) -> dict[str, Any]:
    """The export as JSON types, with the labels given on the customer's messages pulled out
    of the feedback rows for the reader (they stay in `feedback` too)."""
    document = data.to_json()
    document["message_labels"] = [
        row
        for row in document["feedback"]
        if row["corrected_intent"] is not None or row["corrected_sentiment"] is not None
    ]
    return document


def run_erase(ns: argparse.Namespace) -> int:
    customer = customer_of(ns)
    settings = load_settings(ns.config)
    erased_by = ns.by or getpass.getuser()
    index_dir = settings.retrieval.index_dir

    async def erase() -> tuple[Erasure, list[FileScrub], IndexScrub | None]:
        async with opened_privacy(settings) as privacy:
            # The files first: if the database erasure then fails, running the command again
            # finds the texts still in the store; the other way round they would be lost.
            planned = await privacy.erase(customer, erased_by, dry_run=True)
            scrubs = scrub_training_files(settings.models.dir, planned.texts, dry_run=ns.dry_run)
            index = scrub_answer_index(index_dir, planned, dry_run=ns.dry_run)
            if ns.dry_run:
                return planned, scrubs, index
            erasure = await privacy.erase(customer, erased_by)
            # Messages that arrived in between: their texts too.
            scrubs += scrub_training_files(settings.models.dir, erasure.texts - planned.texts)
            if erasure.texts != planned.texts or erasure.answers != planned.answers:
                late = scrub_answer_index(index_dir, erasure)
                if index is not None and late is not None:
                    index = IndexScrub(
                        index_dir,
                        index.removed + late.removed,
                        late.kept,
                        index.excluded + late.excluded,
                    )
            return erasure, scrubs, index

    erasure, scrubs, index = asyncio.run(erase())
    print(erasure_report(erasure, scrubs, erased_by, index))
    return 0


def erasure_report(
    erasure: Erasure,
    scrubs: Iterable[FileScrub],
    erased_by: str,
    index: IndexScrub | None = None,
) -> str:
    """What was (or, in a dry run, would be) removed where, in words."""
    verb = "would remove" if erasure.dry_run else "removed"
    lines = [
        f"{'dry run: nothing changed; ' if erasure.dry_run else ''}"
        f"{verb} the data of {erasure.customer.describe()} (erasure by {erased_by}):",
        "  store (one transaction):",
    ]
    width = max(len(table) for table in erasure.counts)
    lines += [f"    {table:<{width}}  {count} rows" for table, count in erasure.counts.items()]
    scrubs = list(scrubs)
    if scrubs:
        lines.append("  model training files (lines with the customer's texts):")
        lines += [f"    {scrub.path}  {scrub.removed} lines" for scrub in scrubs]
    else:
        lines.append("  model training files: none holds the customer's texts")
    if index is None:
        lines.append("  answer index: none built (nothing to remove)")
    elif not index.removed and not index.excluded:
        lines.append(f"  answer index {index.directory}: holds none of the customer's pairs")
    else:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(index.removed.items()))
        total = sum(index.removed.values())
        done = "" if erasure.dry_run else "; rebuilt without them and swapped in"
        lines.append(
            f"  answer index {index.directory}: {total} pairs{f' ({kinds})' if kinds else ''}, "
            f"{index.kept} kept, {index.excluded} excluded answers listed for the console"
            f"{done}"
        )
    if not erasure.dry_run:
        lines.append("the erasure is recorded (who, when, rows per table; no customer data)")
        if not erasure.checkpointed:
            lines.append(
                "note: SQLite's write-ahead log was busy; the deleted rows leave it at the next "
                "checkpoint (stop the bot and run the command again to force it)"
            )
    return "\n".join(lines)


def run_purge(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config)
    days = ns.older_than_days or settings.privacy.retention_days
    if days is None:
        raise BadRequestError(
            "no retention to purge by: give --older-than-days N or set privacy.retention_days "
            "in the settings"
        )

    async def purge() -> Purge:
        async with opened_privacy(settings) as privacy:
            cutoff = privacy.store.clock() - timedelta(days=days)
            return await privacy.purge(
                cutoff, batch_size=ns.batch_size, dry_run=ns.dry_run, erased_by=RETENTION
            )

    print(purge_report(asyncio.run(purge()), days))
    return 0


def purge_report(purge: Purge, days: int) -> str:
    """What a purge removed (or would remove), in words."""
    when = purge.cutoff.isoformat(timespec="seconds")
    if purge.dry_run:
        head = f"dry run: nothing changed; would remove the conversations last active before {when}"
    elif not purge.batches:
        return f"nothing to purge: no conversation was last active before {when} ({days} days)"
    else:
        head = (
            f"removed the conversations last active before {when} ({days} days), in "
            f"{purge.batches} transactions"
        )
    width = max(len(table) for table in purge.counts)
    lines = [head + ":"]
    lines += [f"  {table:<{width}}  {count} rows" for table, count in purge.counts.items()]
    if not purge.dry_run:
        lines.append(
            "the purge is recorded (erasure by retention, rows per table); model files and the "
            "answer index are not touched"
        )
    return "\n".join(lines)

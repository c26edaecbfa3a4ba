"""`supportbot privacy`: export everything held about a customer, or erase it.

Both commands work on the database and the models directory in the settings (`--config FILE`,
then `SUPPORTBOT_*` variables, as for `supportbot serve`) and migrate the database first.
An erasure removes the customer's rows from the store in one transaction and their message
texts from every model version's replay pool and frozen test set; the answer index is not
rebuilt by it (yet).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.errors import BadRequestError
from bot.settings import Settings, load_settings
from bot.store.conversations import opened_store
from bot.store.privacy import Customer, CustomerData, Erasure, SqlPrivacyStore
from training.pipeline import REPLAY_POOL_FILE, TEST_SET_FILE

# The files of a model version that hold customer texts (see training/pipeline.py).
TRAINING_FILES = (REPLAY_POOL_FILE, TEST_SET_FILE)


@dataclass(frozen=True, slots=True)
class FileScrub:
    """Lines holding the customer's texts found (and, unless a dry run, removed) in a file."""

    path: Path
    removed: int


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

    async def erase() -> tuple[Erasure, list[FileScrub]]:
        async with opened_privacy(settings) as privacy:
            # The files first: if the database erasure then fails, running the command again
            # finds the texts still in the store; the other way round they would be lost.
            planned = await privacy.erase(customer, erased_by, dry_run=True)
            scrubs = scrub_training_files(settings.models.dir, planned.texts, dry_run=ns.dry_run)
            if ns.dry_run:
                return planned, scrubs
            erasure = await privacy.erase(customer, erased_by)
            # Messages that arrived in between: their texts too.
            scrubs += scrub_training_files(settings.models.dir, erasure.texts - planned.texts)
            return erasure, scrubs

    erasure, scrubs = asyncio.run(erase())
    print(erasure_report(erasure, scrubs, erased_by))
    return 0


def erasure_report(erasure: Erasure, scrubs: Iterable[FileScrub], erased_by: str) -> str:
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
    lines.append(
        "  answer index: not touched (erasure does not rebuild it yet); rebuild it with "
        "`supportbot index build` if the customer's conversations were in it"
    )
    if not erasure.dry_run:
        lines.append("the erasure is recorded (who, when, rows per table; no customer data)")
    return "\n".join(lines)

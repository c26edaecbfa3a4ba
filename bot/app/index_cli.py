"""The `index` command: build the answer index from support logs, FAQs and the agents'
approved answers in the database, and query it. `build_index` is also what `serve` runs when
the index is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.core.datafiles import (
    DEFAULT_LIMITS,
    InputLimits,
    add_limit_flags,
    limits_from_flags,
    path_argument,
)
from bot.core.errors import ConfigurationError
from bot.nlu.artifacts import DEFAULT_BACKBONE
from training.cli import DeprecatedAlias

if TYPE_CHECKING:
    from bot.core.entities import EntityConfig
    from bot.retrieval.index import EmbeddingAnswerIndex
    from bot.retrieval.sources import AnswerPair, PairReport
    from bot.settings import Settings

DEFAULT_INDEX_DIR = Path("models") / "answers"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `index build` and `index search` on the top-level parser."""
    index = commands.add_parser(
        "index",
        help="build and query the answer index (past questions -> agent answers, FAQ)",
        description="The answer index the bot retrieves answers from.",
    )
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="embed resolved conversations and FAQ entries into an index directory",
        description="Build the answer index. The last line printed is the index directory.",
    )
    build.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[],
        help="conversations JSONL (resolved ones become answers), approved-pair JSONL, "
        "or directories",
    )
    build.add_argument(
        "--faq",
        type=Path,
        nargs="+",
        default=[],
        help="FAQ files: CSV with question,answer columns or Markdown (## Question + answer)",
    )
    build.add_argument("--model", default=DEFAULT_BACKBONE, help="bundled, HF name or path")
    build.add_argument(
        "--routing",
        type=Path,
        default=None,
        help="routing YAML whose `entities:` turn past answers into templates (e.g. "
        "{order_id}); default: routing.config from --config (the file the bot serves with), "
        "else the packaged sample shop's",
    )
    _add_index_flags(build, path_argument)
    build.add_argument(
        "--no-approved",
        dest="approved",
        action="store_false",
        help="leave out the agents' approved answers from the database (store.url from "
        "--config; read by default when the database exists)",
    )
    build.add_argument(
        "--out",
        dest="index",
        type=path_argument,
        default=argparse.SUPPRESS,
        action=DeprecatedAlias,
        replacement="--index",
        help=argparse.SUPPRESS,
    )
    add_limit_flags(build)
    build.set_defaults(handler=run_build)

    search = actions.add_parser("search", help="print the best answers for a question")
    search.add_argument("text", help="the question, as a customer would write it")
    _add_index_flags(search, Path)
    search.add_argument("-k", type=_positive_int, default=3, help="number of answers")
    search.add_argument("--intent", help="search only pairs of this intent (when there are any)")
    search.add_argument("--json", action="store_true", help="print one JSON object")
    search.set_defaults(handler=run_search)


def _add_index_flags(parser: argparse.ArgumentParser, kind: Callable[[str], Path]) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file, as for `serve`; its retrieval.index_dir (or "
        "SUPPORTBOT_RETRIEVAL__INDEX_DIR) is the index directory unless --index is given",
    )
    parser.add_argument(
        "--index",
        type=kind,
        metavar="DIR",
        help="index directory (default: retrieval.index_dir from --config or "
        f"SUPPORTBOT_RETRIEVAL__INDEX_DIR, else ./{DEFAULT_INDEX_DIR})",
    )


def index_dir(ns: argparse.Namespace) -> Path:
    """--index, else the index the bot serves (the same settings as `serve`)."""
    from bot.settings import load_settings

    settings = load_settings(ns.config)
    return Path(ns.index) if ns.index is not None else settings.retrieval.index_dir


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: not SQLite, or in memory)."""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            name = url[len(prefix) :].split("?", 1)[0]
            return None if name in ("", ":memory:") else Path(name)
    return None


def approved_from_store(settings: Settings) -> tuple[list[AnswerPair], str]:
    """The agents' approved answers in the database (`store.url`), as `retrain` reads them,
    and a line saying how many (or why none were read: no database file yet, or the database
    cannot be reached). A SQLite file that does not exist is not created."""
    from bot.core.errors import SupportbotError

    url = settings.store.url
    file = sqlite_file(url)
    where = str(file) if file is not None else url.split("@")[-1]
    if url.startswith("sqlite") and (file is None or not file.is_file()):
        return [], f"approved answers from the database: none (no database file {where})"
    try:
        approved = asyncio.run(_read_approved(url))
    except (SupportbotError, OSError) as exc:
        return [], (
            f"approved answers from the database: none read, {where} cannot be read ({exc}); "
            "check store.url, or pass --no-approved"
        )
    return approved, f"approved answers from the database ({where}): {len(approved)}"


async def _read_approved(url: str) -> list[AnswerPair]:
    from bot.store.conversations import SqlConversationStore
    from training.feedback import read_feedback

    store = SqlConversationStore(url)
    await store.start()
    try:
        return (await read_feedback(store)).approved
    finally:
        await store.stop()


def build_index(
    paths: Sequence[Path],
    out: Path,
    *,
    entities: EntityConfig | None = None,
    approved: Callable[[], Sequence[AnswerPair]] = tuple,
    model: str = DEFAULT_BACKBONE,
    limits: InputLimits = DEFAULT_LIMITS,
) -> tuple[EmbeddingAnswerIndex, PairReport]:
    """Read, curate and embed `paths` plus the store's approved answers (`approved()`, read
    once the files proved valid; trusted, their placeholders recorded), and save the index
    with its curation report (`curation.json`) to `out`. Returns the index and the report
    (`PairReport.lines` to print).

    Raises:
        AnswerDataError: the files have problems (all listed).
        AnswerIndexError: nothing to index.
    """
    from bot.retrieval.curation import AnswerCurator, Candidate
    from bot.retrieval.index import EmbeddingAnswerIndex
    from bot.retrieval.sources import PairReport, build_answer_pairs, merge_pairs

    report = PairReport()
    pairs = build_answer_pairs(paths, report, limits, entities)
    stored = approved()
    if stored:
        curated = AnswerCurator(entities).curate_all(
            [Candidate(p) for p in stored], report.curation
        )
        pairs = merge_pairs([*pairs, *(p for p in curated if p is not None)])
    index = EmbeddingAnswerIndex.build(pairs, model=model, curation=report.curation.to_dict())
    index.save(out)
    return index, report


def run_build(ns: argparse.Namespace) -> int:
    from bot.core.router import RoutingConfig
    from bot.settings import load_settings

    if not ns.data and not ns.faq:
        raise ConfigurationError(
            "nothing to index; give --data with conversation logs and/or --faq with FAQ files"
        )
    settings = load_settings(ns.config)
    routing = ns.routing if ns.routing is not None else settings.routing.config
    entities = RoutingConfig.load(routing).entities
    said = ["approved answers from the database: left out (--no-approved)"]

    def approved() -> list[AnswerPair]:
        if not ns.approved:
            return []
        pairs, said[0] = approved_from_store(settings)
        return pairs

    started = time.perf_counter()
    out = index_dir(ns)
    index, report = build_index(
        [*ns.data, *ns.faq],
        out,
        entities=entities,
        approved=approved,
        model=ns.model,
        limits=limits_from_flags(ns),
    )
    elapsed = time.perf_counter() - started
    print(said[0])
    for line in report.lines():
        print(line)
    if report.curation.excluded:
        print(
            f"{len(index.excluded)} excluded answers (the most frequent distinct ones) saved "
            "in curation.json with the index: approve clean versions in the console's answer "
            'library, "Excluded by curation"'
        )
    print(
        f"indexed {len(index)} pairs with {ns.model} ({index.dimension} dimensions) "
        f"in {elapsed:.1f} s"
    )
    print(out)
    return 0


def run_search(ns: argparse.Namespace) -> int:
    from bot.retrieval.index import EmbeddingAnswerIndex

    where = index_dir(ns)
    index = EmbeddingAnswerIndex.load(where)
    answers = asyncio.run(index.search(ns.text, k=ns.k, intent=ns.intent))
    if ns.json:
        hits = [
            {"score": a.score, "source": a.source, "question": a.question, "answer": a.text}
            for a in answers
        ]
        print(json.dumps({"index": str(where), "query": ns.text, "answers": hits}))
        return 0
    if not answers:
        print("no answers")
    for rank, answer in enumerate(answers, start=1):
        print(f"{rank}. score {answer.score:.3f}  {answer.source}")
        print(f"   Q: {answer.question}")
        print(f"   A: {answer.text}")
    return 0

"""Answer-safety benchmark: does a served answer carry another customer's details?

Reads the data sets where they lie (default ../shared/datasets, or --datasets PATH); never
copies them into the project. Three sources of past answers, each split per conversation into
an indexed 80 % and held-out 20 % (seeded):

- the sample shop (data/conversations.jsonl): the first real question of each resolved
  conversation and the agent reply after it; its order numbers are that customer's;
- TweetSumm (`tweetsumm/twitter.json`): real customer-care threads on Twitter, the first
  customer turn and the first agent reply (leading @handles removed, as the channel addresses
  the reply itself);
- Bitext (`bitext_customer_support/`): the instruction and its response, with the data set's
  `{{placeholders}}` filled with synthetic values: a customer's own (order and invoice numbers
  `ORD-12345678`, names, amounts) differ per row and also replace the entity span of the
  instruction; the shop's (support phone, website, menu names) are one constant.

Each held-out question is asked of two indexes built from the same 80 %: every answer as
written (`raw`, what the bot did before curation) and curated as `supportbot index build` does
(`curated`, with the sample shop's `order_id` and an `order_ref` entity for `ORD-\\d{8}`). The
question's own details are its slots; its gold intent is passed as a confident classifier's.
Printed, no assertions:

- answered: questions whose best answer scores at least `retrieval.min_score`;
- leaks: answered questions whose answer holds a private value (an order/invoice number,
  email, phone, card, IBAN, URL or name) of another conversation (target 0);
- "I checked"-style claims: answers with a first-person action (same detector as curation);
- intent mismatch: answers indexed under another intent than the question's (target <= 2 %),
  among answered questions where both intents are known.

    .venv/bin/python benchmarks/answer_safety_benchmark.py [--bitext-rows 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inputs import read_table

from bot.core.entities import CARD, EMAIL, IBAN, PHONE, URL, EntityConfig, EntityExtractor
from bot.core.entities import slot_values as values_of
from bot.core.router import RoutingConfig
from bot.retrieval.curation import AnswerCurator, Candidate, CurationReport, claims_action
from bot.retrieval.index import EmbeddingAnswerIndex
from bot.retrieval.sources import AnswerPair
from bot.settings import RetrievalSettings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
TWEETSUMM = Path("tweetsumm") / "twitter.json"
BITEXT = Path("bitext_customer_support") / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
SMALL_TALK = {"greeting", "thanks", "goodbye"}
PRIVATE_TYPES = {CARD, IBAN, EMAIL, PHONE, URL}
_MENTION = re.compile(r"^(?:@\w+\s*)+")
_PLACEHOLDER = re.compile(r"\{\{([^}]+)\}\}")
_GREETED = re.compile(r"^\s*(?:hi|hello|hey|dear|thanks|thank you),?\s+([A-Z][a-z]+)\b")
_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tu", "vel", "no", "ri", "da", "jo", "fen")
SHOP_VALUES = {
    "phone": "+1 800 555 0199",
    "email": "support@shop.example",
    "url": "https://shop.example",
    "hours": "Monday to Friday, 9:00-17:00",
}


@dataclass(frozen=True, slots=True)
class Conversation:
    """One past conversation: its question, the agent's answer, and what was private to it."""

    id: str
    question: str
    answer: str
    intent: str | None
    customer_texts: tuple[str, ...]
    private: frozenset[str]


def sample_shop(extractor: EntityExtractor) -> list[Conversation]:
    found = []
    path = ROOT / "data" / "conversations.jsonl"
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(text)
        if not record.get("resolved"):
            continue
        turns = record["messages"]
        said = tuple(m["text"] for m in turns if m["role"] == "customer")
        for index, turn in enumerate(turns):
            intent = turn.get("intent") or record.get("intent")
            if turn["role"] != "customer" or intent in SMALL_TALK or len(turn["text"].split()) < 3:
                continue
            answer = next((m["text"] for m in turns[index + 1 :] if m["role"] == "agent"), None)
            if answer:
                private = private_values(extractor, said, answer)
                found.append(
                    Conversation(f"shop:{line}", turn["text"], answer, intent, said, private)
                )
            break
    return found


def tweetsumm(path: Path, extractor: EntityExtractor) -> list[Conversation]:
    if not path.is_file():
        sys.exit(
            f"{path} does not exist; pass the folder holding {TWEETSUMM.parent} with --datasets"
        )
    found = []
    for number, document in enumerate(json.loads(path.read_text())["document"]):
        turns = []
        for raw in document.split("\n\t")[1:]:
            role, _, text = raw.partition(":\t")
            turns.append((role.strip().lower(), _MENTION.sub("", text.strip())))
        said = tuple(t for r, t in turns if r == "customer")
        question = next((t for r, t in turns if r == "customer" and len(t.split()) >= 3), None)
        answer = next((t for r, t in turns if r == "agent"), None)
        if question and answer:
            private = private_values(extractor, said, answer)
            found.append(Conversation(f"tweetsumm:{number}", question, answer, None, said, private))
    return found


def synthetic_name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def bitext(path: Path, rows: int, rng: random.Random) -> list[Conversation]:
    fix = f"pass the folder holding {BITEXT.parent} with --datasets"
    table = read_table(path, ("instruction", "intent", "response"), fix)
    rng.shuffle(table)
    found = []
    for line, row in table[:rows]:
        order = f"ORD-{rng.randrange(10**7, 10**8)}"
        name = synthetic_name(rng)
        amount = f"${rng.randrange(10, 500)}.{rng.randrange(10, 99)}"
        private = {order, name, amount}

        def fill(
            match: re.Match[str], order: str = order, name: str = name, amount: str = amount
        ) -> str:
            key = match.group(1).lower()
            if any(w in key for w in ("order number", "purchase id", "invoice number", "tracking")):
                return order
            if "name" in key and not any(w in key for w in ("website", "company", "store")):
                return name
            if "amount" in key:
                return amount
            if "phone" in key:
                return SHOP_VALUES["phone"]
            if "email" in key:
                return SHOP_VALUES["email"]
            if "url" in key or "website" in key:
                return SHOP_VALUES["url"]
            if "hours" in key or "availability" in key:
                return SHOP_VALUES["hours"]
            return match.group(1)  # menu names: "Order History"

        question = row["instruction"]
        kind = row.get("entity_type", "")
        try:
            start, end = int(row.get("start_offset") or -1), int(row.get("end_offset") or -1)
        except ValueError:
            start = end = -1
        if kind in ("order_id", "invoice_id", "person_name", "refund_amount") and 0 <= start < end:
            value = {"person_name": name, "refund_amount": amount}.get(kind, order)
            question = question[:start] + value + question[end:]
        question = _PLACEHOLDER.sub(fill, question)
        answer = _PLACEHOLDER.sub(fill, row["response"])
        found.append(
            Conversation(
                f"bitext:{line}", question, answer, row["intent"], (question,), frozenset(private)
            )
        )
    return found


def private_values(
    extractor: EntityExtractor, customer_texts: Iterable[str], answer: str
) -> frozenset[str]:
    """What belonged to one customer: order numbers and contact details they wrote, and the
    name the agent greeted them with."""
    values = set()
    for text in customer_texts:
        for entity in extractor.extract(text):
            if entity.type in PRIVATE_TYPES or entity.type in extractor.config.slot_types:
                values.add(entity.text)
    greeted = _GREETED.match(answer)
    if greeted:
        values.add(greeted.group(1))
    return frozenset(v for v in values if len(v) >= 3)


def split(
    conversations: Sequence[Conversation], holdout: float, rng: random.Random
) -> tuple[list[Conversation], list[Conversation]]:
    shuffled = list(conversations)
    rng.shuffle(shuffled)
    cut = max(1, round(len(shuffled) * holdout))
    return shuffled[cut:], shuffled[:cut]


def pair_of(c: Conversation) -> AnswerPair:
    return AnswerPair(c.question, c.answer, c.intent, c.id, "conversation")


async def evaluate(
    name: str,
    pairs: list[AnswerPair],
    indexed: Sequence[Conversation],
    queries: Sequence[Conversation],
    extractor: EntityExtractor,
    min_score: float,
) -> None:
    started = time.perf_counter()
    index = EmbeddingAnswerIndex.build(pairs)
    built = time.perf_counter() - started
    owner = {c.id: c for c in indexed}
    intent_of = {p.source: p.intent for p in pairs}
    answered = leaks = claims = compared = mismatched = 0
    examples: list[str] = []
    for query in queries:
        slots = values_of(extractor.extract(query.question))
        hits = await index.search(query.question, k=1, intent=query.intent, slots=slots)
        if not hits or hits[0].score < min_score:
            continue
        answered += 1
        hit = hits[0]
        other = owner[hit.source]
        leaked = [
            v for v in other.private if v in hit.text and v not in query.question and other != query
        ]
        if leaked:
            leaks += 1
            if len(examples) < 3:
                examples.append(f"{leaked[0]!r} from {hit.source}: {hit.text[:100]}")
        claims += claims_action(hit.text)
        served_intent = intent_of.get(hit.source)
        if query.intent is not None and served_intent is not None:
            compared += 1
            mismatched += served_intent != query.intent
    n = len(queries)
    print(
        f"{name:8} pairs {len(pairs):5}  answered {answered:4}/{n} ({answered / n:.1%})  "
        f"leaks {leaks:3} ({leaks / max(answered, 1):.1%})  claims {claims:3}  "
        f"intent mismatch {mismatched}/{compared} ({mismatched / max(compared, 1):.1%})  "
        f"[index {built:.0f} s]"
    )
    for example in examples:
        print(f"           leak: {example}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--bitext-rows", type=int, default=1500, help="Bitext rows to use")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=13)
    ns = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rng = random.Random(ns.seed)
    shop = RoutingConfig.load().entities
    section = {
        "phone_region": shop.phone_region,
        "order_id": {
            "pattern": [p.pattern for p in shop.definitions[0].patterns],
            "normalize": "BC-{1}",
        },
        "order_ref": {"pattern": r"\bORD-\d{8}\b", "ignore_case": False},
    }
    entities = EntityConfig.parse(section, "answer_safety_benchmark.py")
    extractor = EntityExtractor(entities)
    sources = {
        "shop": sample_shop(extractor),
        "tweetsumm": tweetsumm(ns.datasets / TWEETSUMM, extractor),
        "bitext": bitext(ns.datasets / BITEXT, ns.bitext_rows, rng),
    }
    indexed: list[Conversation] = []
    queries: list[Conversation] = []
    for name, conversations in sources.items():
        kept, held = split(conversations, ns.holdout, rng)
        indexed += kept
        queries += held
        print(f"{name}: {len(conversations)} conversations, {len(held)} held out as questions")
    report = CurationReport()
    curated = AnswerCurator(entities).curate_all(
        [Candidate(pair_of(c), c.customer_texts) for c in indexed], report
    )
    print("\n".join(report.lines(top=3)))
    min_score = RetrievalSettings().min_score
    print(f"min_score {min_score}; each question's gold intent is passed as confident")
    raw = [pair_of(c) for c in indexed]
    kept_pairs = [p for p in curated if p is not None]
    asyncio.run(evaluate("raw", raw, indexed, queries, extractor, min_score))
    asyncio.run(evaluate("curated", kept_pairs, indexed, queries, extractor, min_score))
    return 0


if __name__ == "__main__":
    sys.exit(main())

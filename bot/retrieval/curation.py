"""Answer curation: what of an agent's past reply may be said to another customer.

An agent's answer was written for one customer: it may name their order, repeat their email,
greet them by name, carry the agent's signature, or report what the agent did ("I've refunded
you"). Served to someone else, that is another customer's data or a claim the bot never made
true. Every answer read from conversation logs is scanned when the index is built:

- a value of a configured slot entity (`order_id`, see the routing file's `entities:`) becomes
  a placeholder (`{order_id}`) and the pair records the slot: at serve time the answer is used
  only when the current conversation has given that slot, and is filled in with its value;
- the customer's name (a salutation such as "Hi Jonas," or a name the customer gave) becomes
  `{name}`, filled with the customer's name or dropped;
- anything else keeps the answer out of the index, with a reason: card numbers and IBANs;
  money amounts and times that repeat the customer's own words; emails, phone numbers, URLs
  and dates that do, or that the answers of fewer than `SHARED_MIN_CONVERSATIONS`
  conversations name (the shop's hotline recurs and is kept); a number of 4+ digits copied
  from the customer's message; two different values of one slot; an agent's signature; a
  first-person action, an offer or a promise ("I checked", "I've refunded", "Want me to
  cancel it?") the bot cannot make true; a report of one order's state ("{order_id} shipped
  yesterday", "your refund has been issued"), which is true only for the customer it was
  written for.

FAQ entries and agents' approved answers were written to be reused and are trusted as written
(their `{slot}` placeholders are recorded). The customer's question is scrubbed too (slot
values become placeholders, card numbers, IBANs, emails and phones are masked), because it is
shown next to the answer it found.

`CurationReport` counts the verdicts for `supportbot index build` and keeps the excluded
answers, the most frequent first (`to_dict`, saved with the index as `curation.json`), for the
console's answer library, where an agent approves a clean version of them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from bot.core.datafiles import normalize
from bot.core.entities import (
    CARD,
    DATE,
    EMAIL,
    IBAN,
    MONEY,
    PHONE,
    SENSITIVE_TYPES,
    TIME,
    URL,
    Entity,
    EntityConfig,
    EntityExtractor,
    mask,
    placeholders,
)
from bot.core.library import ExcludedAnswer

if TYPE_CHECKING:  # sources.py runs the curation, so it cannot be imported back at run time
    from bot.retrieval.sources import AnswerPair

T = TypeVar("T")

NAME_SLOT = "name"
PLACEHOLDER = "{{type}}"  # `mask` template: an order_id span becomes {order_id}
# How many excluded answers `CurationReport.to_dict` keeps (the most frequent).
MAX_EXCLUDED_SAVED = 500
# A value named in the answers of at least this many conversations is the shop's (its hotline,
# opening hours, a price), not one customer's.
SHARED_MIN_CONVERSATIONS = 3
#: Lower-case words count as what one customer wrote about ("sorry the teapot arrived
#: broken"), beside capitalised ones, only in logs of at least this many conversations: in
#: fewer, "order" and "refund" recur as seldom as "teapot" and every answer would hang on them.
WORDS_MIN_CONVERSATIONS = 30
ALWAYS_PRIVATE = frozenset({CARD, IBAN})
# Prices and times in an answer are the shop's (a fee, opening hours) unless the customer
# wrote the same value.
SHOP_FACT_TYPES = frozenset({MONEY, TIME})
REASON_OF_TYPE = {
    CARD: "card number",
    IBAN: "IBAN",
    EMAIL: "email address",
    PHONE: "phone number",
    URL: "URL",
    MONEY: "money amount",
    DATE: "date",
    TIME: "time",
}
FIRST_PERSON_ACTION = "first-person action"
OFFER = "offer to act"
ORDER_STATE = "states one order's status"
COPIED_NUMBER = "number from the customer's message"
SIGNATURE = "agent signature"

# What an agent did or will do for that customer: the bot has done none of it. "We refund to
# your card" is policy; "I refunded", "I've refunded", "we'll refund" are one case's actions.
_DONE = (
    r"refunded|checked|cancell?ed|opened|issued|sent|resent|reissued|escalated|processed|"
    r"looked|reset|credited|updated|changed|arranged|contacted|forwarded|added|applied|raised|"
    r"filed|logged|booked|emailed|requested|started|created|passed|flagged|submitted|initiated|"
    r"confirmed|verified|located|noted|attached|asked|extended|replaced|reshipped|removed|"
    r"activated|unlocked|traced|reported|transferred|kept|notified|informed|found|spoke|called"
)
_TO_DO = (
    r"refund|check|cancel|open|issue|send|resend|reissue|escalate|process|look|reset|credit|"
    r"update|change|arrange|contact|forward|add|apply|raise|file|log|book|email|request|start|"
    r"create|pass|flag|submit|initiate|confirm|verify|note|attach|ask|extend|replace|reship|"
    r"remove|activate|unlock|trace|report|transfer|keep|notify|inform|call|"
    r"refunding|cancell?ing|checking|sending|processing|escalating|adding|issuing|transferring|"
    r"looking|forwarding|passing|arranging|contacting|reporting"
)
_FIRST_PERSON = re.compile(
    rf"\bI(?:\s+(?:just|already|also|personally|now))?\s+(?:{_DONE})\b"
    r"|\b(?:I|we)(?:'ve|'ll|'m|'d| have| will| am| can| could| would| are| shall)"
    r"(?:\s+(?:just|already|also|now|personally|immediately|gone ahead and|go ahead and|"
    r"be|been))*"
    rf"\s+(?:{_DONE}|{_TO_DO})\b"
    r"|\bI (?:can |could )?see (?:that |here that )?(?:your|the|it|this|BC|you)\b"
    # Any "I've <done>": "I've pulled up your photos", "we've made an exception".
    r"|\b(?:I|we)(?:'ve| have)(?:\s+(?:just|already|also|now|personally|\w+ly))*\s+"
    r"(?:\w+ed|sent|made|got|put|given|spoken|done|taken|set|told)\b",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(
    r"(?:"
    r"(?:^|\s)[-\u2013\u2014~^/*]\s?[A-Z][A-Za-z]{0,14}\.?"  # "- Ana", "^AB", "~Tom"
    r"|(?i:best|kind regards|regards|cheers|best wishes|warm regards|many thanks|sincerely|"
    r"all the best|take care|thanks|thank you)[,!.]?\s*\n?\s*"
    r"[A-Z][a-z]+(?: [A-Z][a-z]*)?(?: (?:from|at|@) [A-Z][\w ]{0,30})?\.?"
    r")\s*$"
)
_SALUTATION = re.compile(
    r"^\s*(?i:hi|hello|hey|dear|good (?:morning|afternoon|evening|day)|thanks|thank you)"
    r",?\s+(?P<name>(?:(?i:mr/ms|mrs|mr|ms|miss|dr|mx)\.?\s+)?(?:[A-Z]\.\s*)?[A-Z][a-z'\-]+)"
    r"(?=\s*[,!.])"
)
_GIVEN_NAME = re.compile(
    r"\b(?i:my name is|my name's|this is|i am|i'm|name:)\s+(?P<name>[A-Z][a-z'\-]+)"
    # A customer's sign-off: "Best, Ingrid" / "Regards,\nRichard Hale" at the end.
    r"|(?i:regards|best|thanks|thank you|cheers|greetings|best wishes),?\s*\n?\s*"
    r"(?P<signed>[A-Z][a-z'\-]+(?: [A-Z][a-z'\-]+)?)\.?\s*$"
)
# An offer to act ("Want me to change it?") promises what the bot cannot do.
_OFFER = re.compile(
    r"\b(?:would you like|do you want|want|shall|should) (?:me|I) to\b|\bshall I\b|"
    r"\blet me (?:check|look|see|know)\b",
    re.IGNORECASE,
)
# Said of one order, these report its state: true for the customer it was written for only.
# Reports of what happened to one customer's parcel, refund or request.
_CASE_STATE = re.compile(
    r"\b(?:has|have) (?:now |just |already )?been (?:issued|refunded|cancell?ed|processed|sent|"
    r"credited|shipped|reshipped|approved|escalated|forwarded|added|applied|received)\b"
    r"|\b(?:shipped|left our warehouse|arrived|delivered|scanned(?: in)?|dispatched)\b"
    r"[^.]{0,24}\b(?:yesterday|today|this morning|on (?:mon|tues|wednes|thurs|fri|satur|sun)day)",
    re.IGNORECASE,
)
_ORDER_STATE = re.compile(
    r"\b(?:processing|shipped|delivered|dispatched|scanned|cancell?ed|refunded|issued|"
    r"in transit|on (?:its|the) way|out for delivery|left|arrived|received|lost|returned|"
    r"goes out|went out|ships|was|were|has been|had|hasn't|has not)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
# A capitalised word inside a sentence (not its first word): a place, a product, a brand.
_PROPER = re.compile(r"(?<=[\w,;:)\]] )[\"'(\u201c]?(?P<word>[A-Z][A-Za-z\-]{2,})\b")
# Capitalised inside a sentence without naming anything a customer asked about.
_NOT_PROPER = frozenset({"mr", "mrs", "ms", "dr", "dear", "hi", "hello", "ok"})
# A word of three letters or more, in any script: what an answer may repeat of what its
# customer wrote about (a teapot, a colour, their mother), not only what is capitalised.
_WORD = re.compile(r"[^\W\d_]{3,}")
# Words any question and its answer share: never what one customer named. (Most recur in many
# conversations' answers anyway; this keeps a small log's answers from hanging on them.)
_FUNCTION_WORDS = frozenset(
    {
        *("the", "and", "for", "you", "your", "yours", "with", "that", "this", "these", "those"),
        *("have", "has", "had", "are", "was", "were", "can", "could", "will", "would", "not"),
        *("but", "from", "our", "ours", "out", "all", "any", "please", "thanks", "thank", "what"),
        *("when", "where", "which", "who", "whom", "how", "why", "there", "here", "they", "them"),
        *("their", "its", "yes", "just", "also", "into", "about", "after", "before", "then"),
        *("than", "some", "more", "most", "only", "one", "two", "get", "got", "been", "being"),
        *("did", "does", "doing", "done", "don", "may", "might", "should", "very", "much"),
        *("still", "like", "know", "need", "want", "see", "use", "make", "take", "let", "well"),
        *("hello", "dear", "sorry", "again", "now", "today", "because", "every", "each", "other"),
        *("same", "such", "own", "too", "off", "over", "under", "her", "his", "him", "she"),
        *("yet", "via", "per", "way", "able", "sure", "okay"),
    }
)
_DIGITS = re.compile(r"\d{4,}")
_NOT_NAMES = frozenset(
    {
        *("there", "again", "all", "everyone", "everybody", "team", "folks", "friend", "guys"),
        *("you", "so", "sorry", "here", "just", "the", "and", "for", "a", "an", "it", "that"),
        *("this", "not", "very", "really", "happy", "glad", "back", "on", "in", "sure", "ok"),
        *("okay", "yes", "no", "still", "afraid", "writing", "contacting", "trying", "having"),
        *("calling", "looking"),
    }
)


def claims_action(text: str) -> bool:
    """Whether `text` reports or promises a first-person action ("I checked", "I've
    refunded", "we'll reship it")."""
    return _FIRST_PERSON.search(text) is not None


@dataclass(frozen=True, slots=True)
class Candidate:
    """An answer pair and the customer messages of the conversation it came from."""

    pair: AnswerPair
    customer_texts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What curation decided for one candidate.

    Attributes:
        pair: the pair to index (templated and scrubbed), or None when excluded.
        reasons: why it was excluded (empty when kept).
        templated: placeholders replaced some of its details.
        question: the scrubbed question of an excluded pair (None: the pair's own).
        shape: an excluded answer with its details as placeholders (`{order_id}`, `{email}`,
            `{name}`, `{number}`): answers of the same shape count as one in the report.
    """

    pair: AnswerPair | None
    reasons: tuple[str, ...] = ()
    templated: bool = False
    question: str | None = None
    shape: str | None = None


@dataclass
class CurationReport:
    """Counts for `supportbot index build`: kept, templated, excluded by reason, and the
    excluded answers seen most often (to approve a clean version of in the console): answers
    that differ only in their details (order number, email, the customer's name) count as one,
    shown as the first conversation's."""

    kept: int = 0
    templated: int = 0
    trusted: int = 0
    excluded: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    excluded_answers: Counter[str] = field(default_factory=Counter)
    examples: dict[str, ExcludedAnswer] = field(default_factory=dict)
    #: Kept answers served only to a question naming what their customer wrote about, and
    #: how many answers each such word conditions.
    conditional: int = 0
    echoes: Counter[str] = field(default_factory=Counter)

    def add(self, candidate: Candidate, verdict: Verdict) -> None:
        if verdict.pair is None:
            self.excluded += 1
            self.reasons.update(verdict.reasons)
            pair = candidate.pair
            key = normalize(verdict.shape or pair.answer)
            self.excluded_answers[key] += 1
            if key not in self.examples:
                question = pair.question if verdict.question is None else verdict.question
                self.examples[key] = ExcludedAnswer(
                    question, pair.answer, verdict.reasons, pair.source, pair.intent
                )
        elif candidate.pair.kind != "conversation":
            self.trusted += 1
        else:
            if verdict.templated:
                self.templated += 1
            else:
                self.kept += 1
            if verdict.pair.echoes:
                self.conditional += 1
                self.echoes.update(verdict.pair.echoes)

    def lines(self, top: int = 5) -> list[str]:
        total = self.kept + self.templated + self.trusted + self.excluded
        out = [
            f"curation: {total} answers: {self.kept} kept as written, {self.templated} "
            f"templated ({{order_id}}-style placeholders), {self.trusted} trusted (FAQ and "
            f"approved), {self.excluded} excluded"
        ]
        if self.conditional:
            words = ", ".join(word for word, _ in self.echoes.most_common(top))
            more = ", ..." if len(self.echoes) > top else ""
            one = self.conditional == 1
            out.append(
                f"{self.conditional} kept answer{'' if one else 's'} repeat{'s' if one else ''} "
                f"what {'its' if one else 'their'} customer wrote about ({words}{more}): "
                "served only to a question naming it too"
            )
        if self.excluded:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.reasons.most_common())
            out.append(f"excluded by reason (an answer may have several): {reasons}")
            out.append(
                "most frequent excluded answers (approve a clean version in the console to "
                "serve it):"
            )
            for key, count in self.excluded_answers.most_common(top):
                example = self.examples[key]
                text = example.answer
                short = text if len(text) <= 100 else text[:97] + "..."
                out.append(f"  {count}x [{', '.join(example.reasons)}] {short}")
        return out

    def excluded_list(self, limit: int = MAX_EXCLUDED_SAVED) -> list[ExcludedAnswer]:
        """The `limit` most frequent excluded answers, each with how many conversations had
        it (the first one's question, reasons and source), the most frequent first."""
        return [
            replace(self.examples[key], conversations=count)
            for key, count in self.excluded_answers.most_common(limit)
        ]

    def to_dict(self, limit: int = MAX_EXCLUDED_SAVED) -> dict[str, Any]:
        """The report as `curation.json` holds it: the counts and the `limit` most frequent
        excluded answers (`excluded_from_dict` reads them back)."""
        return {
            "kept": self.kept,
            "templated": self.templated,
            "trusted": self.trusted,
            "excluded": self.excluded,
            "distinct_excluded": len(self.excluded_answers),
            "conditional": self.conditional,
            "reasons": dict(self.reasons.most_common()),
            "excluded_answers": [
                {
                    "question": e.question,
                    "answer": e.answer,
                    "reasons": list(e.reasons),
                    "source": e.source,
                    "intent": e.intent,
                    "conversations": e.conversations,
                }
                for e in self.excluded_list(limit)
            ],
        }


def excluded_from_dict(data: Any) -> tuple[ExcludedAnswer, ...]:
    """The excluded answers of a `CurationReport.to_dict` (as read from `curation.json`).

    Raises:
        ValueError: `data` is not such a report (the message says which entry and field).
    """
    if not isinstance(data, dict) or not isinstance(data.get("excluded_answers"), list):
        raise ValueError('expected an object with an "excluded_answers" list')
    out = []
    for number, item in enumerate(data["excluded_answers"], start=1):
        try:
            out.append(
                ExcludedAnswer(
                    str(item["question"]),
                    str(item["answer"]),
                    tuple(str(r) for r in item["reasons"]),
                    str(item["source"]),
                    None if item.get("intent") is None else str(item["intent"]),
                    int(item.get("conversations", 1)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"excluded answer {number}: field {exc} is missing or malformed"
            ) from exc
    return tuple(out)


class AnswerCurator:
    """Decides, per candidate answer, whether it is indexed as written, as a template, or not
    at all (see the module docstring).

    Args:
        entities: the routing file's entity configuration; its slot entities become
            placeholders. None: built-in entities only.
    """

    def __init__(self, entities: EntityConfig | None = None) -> None:
        self.entities = entities or EntityConfig()
        self.extractor = EntityExtractor(self.entities)
        self.slot_types = self.entities.slot_types

    def curate_all(
        self, candidates: Sequence[Candidate], report: CurationReport | None = None
    ) -> list[AnswerPair | None]:
        """A verdict for each candidate (its curated pair, or None when excluded), with the
        counts added to `report`."""
        shared = self._shared_values(candidates)
        words = sum(c.pair.kind == "conversation" for c in candidates) >= WORDS_MIN_CONVERSATIONS
        common = _recurring(candidates, content_words if words else proper_words, asked=words)
        out: list[AnswerPair | None] = []
        for candidate in candidates:
            verdict = self.curate(candidate, shared, common, words)
            if report is not None:
                report.add(candidate, verdict)
            out.append(verdict.pair)
        return out

    def _shared_values(self, candidates: Iterable[Candidate]) -> frozenset[tuple[str, str]]:
        """(type, value) pairs that the answers of several conversations name."""
        return _recurring(
            candidates, lambda answer: {(e.type, e.value) for e in self.extractor.extract(answer)}
        )

    def curate(
        self,
        candidate: Candidate,
        shared: frozenset[tuple[str, str]] = frozenset(),
        common: frozenset[str] = frozenset(),
        words: bool = False,
    ) -> Verdict:
        """The verdict for one candidate; `shared` holds values and `common` words common to
        many conversations (from `curate_all`), which are the shop's and not a customer's;
        `words`: lower-case words can be echoes too (`WORDS_MIN_CONVERSATIONS`)."""
        pair = candidate.pair
        names = _customer_names(pair.answer, candidate.customer_texts)
        question = self._scrub_question(pair.question, names)
        if pair.kind != "conversation":
            known = set(self.slot_types) | {NAME_SLOT}
            slots = tuple(s for s in placeholders(pair.answer) if s in known)
            return Verdict(replace(pair, question=question, slots=slots))
        answer = pair.answer
        reasons: list[str] = []
        if _FIRST_PERSON.search(answer):
            reasons.append(FIRST_PERSON_ACTION)
        if _OFFER.search(answer):
            reasons.append(OFFER)
        if _SIGNATURE.search(answer):
            reasons.append(SIGNATURE)
        customer_values = {
            (e.type, e.value)
            for text in candidate.customer_texts
            for e in self.extractor.extract(text)
        }
        replacements: list[Entity] = []
        slot_values: dict[str, set[str]] = {}
        found = self.extractor.extract(answer)
        for entity in found:
            key = (entity.type, entity.value)
            if entity.type in self.slot_types:
                replacements.append(entity)
                slot_values.setdefault(entity.type, set()).add(entity.value)
            elif entity.type in REASON_OF_TYPE and (
                # Cards and IBANs are never the shop's; prices and times are unless they repeat
                # the customer's; contacts, links and dates are when many conversations'
                # answers name them (the hotline), not when one does.
                entity.type in ALWAYS_PRIVATE
                or key in customer_values
                or (entity.type not in SHOP_FACT_TYPES and key not in shared)
            ):
                reasons.append(REASON_OF_TYPE[entity.type])
        for slot, values in slot_values.items():
            if len(values) > 1:
                reasons.append(f"several {slot} values")
        if _CASE_STATE.search(answer) or any(
            _ORDER_STATE.search(s) for s in _sentences_with(answer, replacements)
        ):
            reasons.append(ORDER_STATE)
        inside = [(e.start, e.end) for e in replacements]
        said = " ".join(candidate.customer_texts)
        for match in _DIGITS.finditer(answer):
            copied = re.search(rf"(?<!\d){match.group(0)}(?!\d)", said)
            if copied and not any(a <= match.start() < b for a, b in inside):
                reasons.append(COPIED_NUMBER)
                break
        if reasons:
            shape = mask(answer, found, {e.type for e in found}, PLACEHOLDER)
            shape = _DIGITS.sub("{number}", _replace_names(shape, names)[0])
            return Verdict(None, tuple(dict.fromkeys(reasons)), question=question, shape=shape)
        templated = mask(answer, replacements, self.slot_types, PLACEHOLDER)
        templated, named = _replace_names(templated, names)
        slots = tuple(
            s for s in placeholders(templated) if s in slot_values or (s == NAME_SLOT and named)
        )
        changed = bool(replacements) or named
        # "Sorry, we can't ship to Switzerland" answered "do you ship to Switzerland?": said
        # to someone asking about Norway it is wrong, so it is served only to a question that
        # names each word the answer repeats from its own (`AnswerPair.echoes`).
        asked = (pair.question, *candidate.customer_texts)
        echoes = echoed_words(_replace_names(answer, names)[0], asked, common, words)
        curated = replace(pair, question=question, answer=templated, slots=slots, echoes=echoes)
        return Verdict(curated, (), changed)

    def _scrub_question(self, question: str, names: Iterable[str]) -> str:
        """Slot values as placeholders, the customer's name as `{name}`, sensitive details
        masked: the question is shown next to the answer it found."""
        entities = self.extractor.extract(question)
        out = mask(question, entities, self.slot_types, PLACEHOLDER)
        if out != question:
            entities = self.extractor.extract(out)
        out = mask(out, entities, SENSITIVE_TYPES)
        return _replace_names(out, names)[0]


def proper_words(text: str) -> set[str]:
    """The capitalised words inside the sentences of `text` (a place, a product, a brand:
    "we can't ship to Switzerland" -> {"switzerland"}), lower-cased."""
    return {
        word
        for match in _PROPER.finditer(text)
        if (word := match.group("word").lower()) not in _NOT_PROPER
    }


def named_words(text: str, words: Iterable[str]) -> set[str]:
    """Those of the lower-case `words` that `text` names as whole words, in any case."""
    said = text.lower()
    tokens = set(re.findall(r"\w+", said))
    return {
        word
        for word in words
        if (word in tokens if "-" not in word else re.search(rf"\b{re.escape(word)}\b", said))
    }


def content_words(text: str) -> set[str]:
    """The words of three letters or more of `text` that are not function words, and its
    capitalised ones (`proper_words`), lower-cased."""
    return {w.lower() for w in _WORD.findall(text)} - _FUNCTION_WORDS | proper_words(text)


def echoed_words(
    answer: str,
    customer_texts: Sequence[str],
    common: frozenset[str] = frozenset(),
    words: bool = False,
) -> tuple[str, ...]:
    """The words an answer repeats from what its customer wrote, sorted: capitalised inside
    the answer ("we can't ship to Switzerland") and, with `words`, any but function words
    ("sorry the teapot arrived broken"); never `common` ones (named in many conversations:
    the shop's payment methods, its programme, "order", "arrived")."""
    said = content_words(answer) if words else proper_words(answer)
    return tuple(sorted(named_words(" ".join(customer_texts), said - common)))


def _sentences_with(text: str, entities: Sequence[Entity]) -> list[str]:
    """The sentences of `text` that hold one of `entities`."""
    return [
        m.group(0)
        for m in _SENTENCE.finditer(text)
        if any(m.start() <= e.start < m.end() for e in entities)
    ]


def _recurring(
    candidates: Iterable[Candidate], found: Callable[[str], set[T]], asked: bool = False
) -> frozenset[T]:
    """What `found` finds in the answers (`asked`: or in the customers' messages) of at least
    `SHARED_MIN_CONVERSATIONS` conversations: the shop's (its hotline, `PayPal`) and what
    many customers write ("ordered", "arrived"), not one customer's."""
    seen: Counter[T] = Counter()
    for candidate in candidates:
        if candidate.pair.kind == "conversation":
            pair = candidate.pair
            texts = (pair.answer, *((pair.question, *candidate.customer_texts) if asked else ()))
            seen.update(set().union(*(found(text) for text in texts)))
    return frozenset(key for key, n in seen.items() if n >= SHARED_MIN_CONVERSATIONS)


def _given_names(customer_texts: Sequence[str]) -> set[str]:
    """Names the customer gave ("my name is Jonas") or signed with ("Best, Ingrid")."""
    names = set()
    for text in customer_texts:
        for match in _GIVEN_NAME.finditer(text.strip()):
            name = match.group("name") or match.group("signed")
            if name and name.split()[0].lower() not in _NOT_NAMES:
                names.add(name)
                names.update(name.split())  # "Richard Hale" is also greeted as "Mr Hale"
    return names


def _replace_names(text: str, names: Iterable[str]) -> tuple[str, bool]:
    changed = False
    for name in sorted(names, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w{{]){re.escape(name)}(?![\w}}])")
        text, count = pattern.subn("{" + NAME_SLOT + "}", text)
        changed |= count > 0
    return text, changed


def _customer_names(answer: str, customer_texts: Sequence[str]) -> set[str]:
    """The customer's names: greeted in the answer ("Hi Jonas,", "Dear Mr Hale,"), given or
    signed in their messages."""
    names = _given_names(customer_texts)
    salutation = _SALUTATION.match(answer)
    if salutation and salutation.group("name").split()[-1].lower() not in _NOT_NAMES:
        names.add(salutation.group("name"))
        names.add(salutation.group("name").split()[-1])  # "Mr Hale" signs as "Hale"
    return names

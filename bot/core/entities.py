"""Details in a customer's text: built-in entities (email, phone, URL, money, date, time,
card-like numbers, IBAN) and the ones a routing file configures (regular expressions and
lookup lists), as character spans with a canonical value.

Pure functions over text, no I/O: the runtime stores what `EntityExtractor.extract` finds with
every customer message, the answer curation (bot/retrieval/curation.py) uses the same detector
to find another customer's details in past answers, and `mask` hides chosen types (card
numbers, IBANs, emails, phones) so that redaction before storage can reuse it: one detector for
all three, so what is found, shown, curated and masked never disagrees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import phonenumbers

from bot.core.errors import ConfigurationError

EMAIL = "email"
PHONE = "phone"
URL = "url"
MONEY = "money"
DATE = "date"
TIME = "time"
CARD = "card"
IBAN = "iban"
BUILTIN_TYPES = (CARD, IBAN, EMAIL, URL, PHONE, MONEY, DATE, TIME)
# What a privacy feature masks before storage unless told otherwise.
SENSITIVE_TYPES = frozenset({CARD, IBAN, EMAIL, PHONE})
# Masked in every customer message before it is stored (PCI DSS: no card number in clear).
ALWAYS_REDACTED = frozenset({CARD, IBAN})
# Not entity names: keys of the `entities:` section with another meaning.
RESERVED_KEYS = frozenset({"phone_region", "learned"})
# Slots an answer template can do without: dropped when unknown ("Hi {name}," -> "Hi,").
OPTIONAL_SLOTS = frozenset({"name"})
_SPEC_FIELDS = frozenset({"pattern", "lookup", "normalize", "ignore_case", "slot", "looks_like"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Entity:
    """A detail found in a text.

    Attributes:
        type: `email`, `phone`, `url`, `money`, `date`, `time`, `card`, `iban` or a configured
            entity's name.
        value: the canonical value (e.g. `BC-204719` for "bc 204719", `EUR 9.95` for "9,95 €",
            `2026-01-19` for "19 January 2026", `--01-19` without a year, `15:30`).
        text: the characters as written, `text == message[start:end]`.
        start: offset of the first character.
        end: offset after the last character.
    """

    type: str
    value: str
    text: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with a message (`details["entities"]`)."""
        return {
            "type": self.type,
            "value": self.value,
            "text": self.text,
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True, slots=True)
class EntityDefinition:
    """One configured entity: regular expressions and/or a lookup list.

    Attributes:
        name: the entity type, also its slot and placeholder name (`{order_id}`).
        patterns: compiled expressions; a match is the entity.
        normalize: a template for the canonical value of a pattern match: `{0}` the whole
            match, `{1}`.. its groups (e.g. `BC-{1}`); None keeps the match as written.
        lookup: lower-cased phrase -> canonical value.
        slot: whether a value identifies one customer's case (an order number), so that a past
            answer naming one is turned into a template; lookup-only entities (product names)
            default to False.
        looks_like: what a customer writes when they mean one but get it wrong ("order
            1234", "BC-111"): such a text with no value of the entity makes the bot ask for it
            (a slot question) instead of guessing.
    """

    name: str
    patterns: tuple[re.Pattern[str], ...] = ()
    normalize: str | None = None
    lookup: Mapping[str, str] = field(default_factory=dict)
    slot: bool = True
    looks_like: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True, slots=True)
class EntityConfig:
    """The `entities:` section of the routing configuration.

    Attributes:
        definitions: configured entities, in file order.
        phone_region: ISO country code for phone numbers written without `+country`
            (e.g. `DE` reads "030 1234 5678"); None: only international numbers are found.
        learned: the types the learned entity model finds (`supportbot train entity`),
            declared so that routes may require them (`requires:`); the model is loaded only
            at start, so the routing file names them.
    """

    definitions: tuple[EntityDefinition, ...] = ()
    phone_region: str | None = None
    learned: tuple[str, ...] = ()

    @property
    def slot_types(self) -> frozenset[str]:
        """Names of the configured entities whose values identify a customer's case."""
        return frozenset(d.name for d in self.definitions if d.slot)

    @classmethod
    def parse(cls, section: Any, source: str) -> EntityConfig:
        """Validate the routing file's `entities:` section (None when absent).

        Raises:
            ConfigurationError: naming the file, the entity and the field at fault, all
                problems at once.
        """
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigurationError(
                f"routing config {source}: entities: expected a mapping of entity name -> "
                "{pattern, lookup, normalize}, found " + type(section).__name__
            )
        problems: list[str] = []
        region = section.get("phone_region")
        if region is not None and (
            not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS
        ):
            problems.append(
                f"entities.phone_region: {region!r} is not a country code phone numbers know; "
                "use a two-letter ISO code such as DE or US"
            )
            region = None
        definitions = []
        for name, spec in section.items():
            if name in RESERVED_KEYS:
                continue
            definition = _parse_definition(str(name), spec, problems)
            if definition is not None:
                definitions.append(definition)
        learned = _parse_learned(section.get("learned"), {d.name for d in definitions}, problems)
        if problems:
            raise ConfigurationError(f"routing config {source}: " + "; ".join(problems))
        return cls(tuple(definitions), region.upper() if isinstance(region, str) else None, learned)


def _parse_learned(value: Any, defined: set[str], problems: list[str]) -> tuple[str, ...]:
    """`entities.learned`: a list of entity type names the learned model finds."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(
            "entities.learned: expected a list of the entity types your learned entity model "
            "finds (e.g. [product, city]), found " + type(value).__name__
        )
        return ()
    out: list[str] = []
    for name in names:
        if not _NAME.match(name):
            problems.append(
                f"entities.learned: {name!r} is not an entity type name (lower case letters, "
                "digits and _, starting with a letter)"
            )
        elif name in BUILTIN_TYPES or name in defined or name == "name":
            problems.append(
                f"entities.learned: {name!r} is already a built-in or configured entity; "
                "remove it from learned"
            )
        elif name not in out:
            out.append(name)
    return tuple(out)


def _parse_definition(name: str, spec: Any, problems: list[str]) -> EntityDefinition | None:
    where = f"entities.{name}"
    if not _NAME.match(name):
        problems.append(
            f"{where}: the name must be lower case letters, digits and _ (it is also the "
            "placeholder {" + name + "} in answers)"
        )
        return None
    if name in BUILTIN_TYPES:
        problems.append(f"{where}: {name} is a built-in entity; choose another name")
        return None
    if isinstance(spec, str):
        spec = {"pattern": spec}
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a pattern string or a mapping with pattern/lookup")
        return None
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        problems.append(
            f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(sorted(_SPEC_FIELDS))}"
        )
    ignore_case = spec.get("ignore_case", True)
    if not isinstance(ignore_case, bool):
        problems.append(f"{where}.ignore_case: must be true or false, found {ignore_case!r}")
        ignore_case = True
    raw_patterns = spec.get("pattern")
    if raw_patterns is None:
        raw_patterns = []
    elif isinstance(raw_patterns, str):
        raw_patterns = [raw_patterns]
    patterns: list[re.Pattern[str]] = []
    if not isinstance(raw_patterns, list):
        problems.append(f"{where}.pattern: expected a regular expression or a list of them")
        raw_patterns = []
    for index, raw in enumerate(raw_patterns):
        label = f"{where}.pattern" + (f"[{index}]" if len(raw_patterns) > 1 else "")
        compiled = _compile(raw, ignore_case, label, problems)
        if compiled is not None:
            patterns.append(compiled)
    normalize = spec.get("normalize")
    if normalize is not None:
        if not isinstance(normalize, str) or not normalize:
            problems.append(f"{where}.normalize: expected a template such as 'BC-{{1}}'")
            normalize = None
        else:
            wanted = [int(g) for g in re.findall(r"\{(\d+)\}", normalize)]
            fewest = min((p.groups for p in patterns), default=0)
            if any(g > fewest for g in wanted):
                problems.append(
                    f"{where}.normalize: {normalize!r} names group {{{max(wanted)}}} but a "
                    f"pattern has only {fewest} group(s); add (...) groups or use {{0}}"
                )
                normalize = None
            elif re.sub(r"\{\d+\}", "", normalize).count("{") or "}" in re.sub(
                r"\{\d+\}", "", normalize
            ):
                problems.append(
                    f"{where}.normalize: {normalize!r}: only {{0}} (the match) and {{1}}, "
                    "{2}.. (its groups) may appear in braces"
                )
                normalize = None
    lookup = _parse_lookup(spec.get("lookup"), where, problems)
    if not patterns and not lookup:
        problems.append(f"{where}: give a pattern (regular expression) or a lookup list")
        return None
    slot = spec.get("slot", bool(patterns))
    if not isinstance(slot, bool):
        problems.append(f"{where}.slot: must be true or false, found {slot!r}")
        slot = bool(patterns)
    looks_like = _parse_looks_like(spec.get("looks_like"), ignore_case, where, problems)
    return EntityDefinition(name, tuple(patterns), normalize, lookup, slot, looks_like)


def _parse_looks_like(
    raw: Any, ignore_case: bool, where: str, problems: list[str]
) -> tuple[re.Pattern[str], ...]:
    """`looks_like:` is one regular expression or a list of them."""
    if raw is None:
        return ()
    found = []
    for index, value in enumerate(raw if isinstance(raw, list) else [raw]):
        label = f"{where}.looks_like" + (f"[{index}]" if isinstance(raw, list) else "")
        compiled = _compile(value, ignore_case, label, problems)
        if compiled is not None:
            found.append(compiled)
    return tuple(found)


def _compile(
    raw: Any, ignore_case: bool, label: str, problems: list[str]
) -> re.Pattern[str] | None:
    """One regular expression of the routing file (`pattern:`, `looks_like:`), or None with
    the problem (not a string, invalid, or matching empty text) added to `problems`."""
    if not isinstance(raw, str) or not raw:
        problems.append(f"{label}: expected a non-empty regular expression, found {raw!r}")
        return None
    try:
        compiled = re.compile(raw, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        problems.append(f"{label}: invalid regular expression {raw!r} ({exc})")
        return None
    if compiled.match(""):
        problems.append(f"{label}: {raw!r} matches empty text; it must match something")
        return None
    return compiled


def _parse_lookup(raw: Any, where: str, problems: list[str]) -> dict[str, str]:
    """`[value, ...]` or `{value: [synonym, ...]}` -> lower-cased phrase -> value."""
    if raw is None:
        return {}
    table: dict[str, str] = {}
    if isinstance(raw, list):
        items: list[tuple[Any, Any]] = [(value, []) for value in raw]
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        problems.append(
            f"{where}.lookup: expected a list of values or a mapping value -> [synonyms]"
        )
        return {}
    for value, synonyms in items:
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}.lookup: values must be non-empty strings, found {value!r}")
            continue
        if synonyms is None:
            synonyms = []
        if not isinstance(synonyms, list) or not all(
            isinstance(s, str) and s.strip() for s in synonyms
        ):
            problems.append(f"{where}.lookup.{value}: synonyms must be a list of non-empty strings")
            continue
        for phrase in (value, *synonyms):
            table[" ".join(phrase.casefold().split())] = value.strip()
    return table


class EntityExtractor:
    """Finds built-in and configured entities in a text.

    Overlapping candidates are resolved by precedence (card, IBAN, email, URL, configured
    entities, phone, money, date, time), then by length: a span belongs to one entity.

    Args:
        config: the configured entities (the routing file's `entities:`).
    """

    def __init__(self, config: EntityConfig | None = None) -> None:
        self.config = config or EntityConfig()
        self._lookups = [
            (d.name, _lookup_pattern(d.lookup), d.lookup)
            for d in self.config.definitions
            if d.lookup
        ]

    def extract(self, text: str) -> list[Entity]:
        """The entities of `text`, in text order, none overlapping."""
        candidates: list[list[Entity]] = [
            _cards(text),
            _ibans(text),
            _emails(text),
            _urls(text),
            self._configured(text),
            _phones(text, self.config.phone_region),
            _money(text),
            _dates(text),
            _times(text),
        ]
        taken: list[Entity] = []
        for group in candidates:
            for entity in sorted(group, key=lambda e: (e.start, -(e.end - e.start))):
                if not any(entity.start < t.end and t.start < entity.end for t in taken):
                    taken.append(entity)
        return sorted(taken, key=lambda e: e.start)

    def _configured(self, text: str) -> list[Entity]:
        found: list[Entity] = []
        for definition in self.config.definitions:
            for pattern in definition.patterns:
                for match in pattern.finditer(text):
                    if match.end() == match.start():
                        continue
                    value = match.group(0)
                    if definition.normalize is not None:
                        value = _normalized(definition.normalize, match)
                    found.append(Entity(definition.name, value, match.group(0), *match.span()))
        for name, pattern, table in self._lookups:
            for match in pattern.finditer(text):
                key = " ".join(match.group(0).casefold().split())
                found.append(Entity(name, table[key], match.group(0), *match.span()))
        return found


def merge(rules: Iterable[Entity], learned: Iterable[Entity]) -> tuple[Entity, ...]:
    """The rule-based entities and the learned ones that overlap none of them, in text
    order: where a pattern and the model disagree about a span, the pattern wins."""
    kept = list(rules)
    kept += [e for e in learned if not any(e.start < k.end and k.start < e.end for k in kept)]
    return tuple(sorted(kept, key=lambda e: e.start))


def _normalized(template: str, match: re.Match[str]) -> str:
    """`BC-{1}` with the match's groups filled in (`{0}` is the whole match)."""
    groups = [match.group(0), *(g or "" for g in match.groups())]
    return re.sub(r"\{(\d+)\}", lambda m: groups[int(m.group(1))], template)


def _lookup_pattern(table: Mapping[str, str]) -> re.Pattern[str]:
    # Longest phrases first, so "bread bin" wins over "bread"; spaces match any whitespace.
    phrases = sorted(table, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in p.split()) for p in phrases)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


# ---- built-in entities -------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_TRAILING_PUNCT = ".,;:!?)]}'\""
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_CURRENCY = {
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "$": "USD",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "£": "GBP",
    "gbp": "GBP",
    "chf": "CHF",
}
_AMOUNT = r"\d{1,3}(?:[.,' ]\d{3})*(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_CUR_BEFORE = r"€|\$|£|\b(?:EUR|USD|GBP|CHF)\b"
_CUR_AFTER = r"€|\$|£|\b(?:EUR|USD|GBP|CHF|euros?|dollars?)\b"
_MONEY = re.compile(
    rf"(?P<c1>{_CUR_BEFORE})\s?(?P<a1>{_AMOUNT})(?!\d)|(?<![\d.,])(?P<a2>{_AMOUNT})\s?(?P<c2>{_CUR_AFTER})",
    re.IGNORECASE,
)
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_NUMERIC_DATE = re.compile(r"(?<![\d./-])(\d{1,2})([./])(\d{1,2})\2(\d{4}|\d{2})(?![\d./-]?\d)")
_DAY_MONTH = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\.?\s+(?:of\s+)?({_MONTH})\.?(?:,?\s+(\d{{4}})(?![-/.]?\d))?\b",
    re.IGNORECASE,
)
_MONTH_DAY = re.compile(
    rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}})(?![-/.]?\d))?",
    re.IGNORECASE,
)
_TIME = re.compile(
    r"(?<![\d:.])([01]?\d|2[0-3])(?::([0-5]\d))?\s?([ap]\.?m\.?)(?!\w)"
    r"|(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
    re.IGNORECASE,
)


def _cards(text: str) -> list[Entity]:
    found = []
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(Entity(CARD, digits, match.group(0), *match.span()))
    return found


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn check of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        number = int(char)
        if position % 2 == 1:
            number = number * 2 - 9 if number > 4 else number * 2
        total += number
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a compact upper-case IBAN passes the ISO 13616 mod-97 check."""
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str) -> list[Entity]:
    found = []
    for match in _IBAN.finditer(text):
        # The pattern may run into a following upper-case word: take the longest valid prefix.
        written = match.group(0)
        for end in range(len(written), 0, -1):
            if written[end - 1] == " ":
                continue
            compact = written[:end].replace(" ", "")
            if len(compact) < 15:
                break
            if iban_valid(compact):
                start = match.start()
                found.append(Entity(IBAN, compact, written[:end], start, start + end))
                break
    return found


def _emails(text: str) -> list[Entity]:
    return [Entity(EMAIL, m.group(0).lower(), m.group(0), *m.span()) for m in _EMAIL.finditer(text)]


def _urls(text: str) -> list[Entity]:
    found = []
    for match in _URL.finditer(text):
        written = match.group(0).rstrip(_TRAILING_PUNCT)
        if len(written) <= len("www."):
            continue
        start = match.start()
        found.append(Entity(URL, written, written, start, start + len(written)))
    return found


def _phones(text: str, region: str | None) -> list[Entity]:
    found = []
    for match in phonenumbers.PhoneNumberMatcher(text, region or "ZZ", phonenumbers.Leniency.VALID):
        value = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        found.append(Entity(PHONE, value, match.raw_string, match.start, match.end))
    return found


def _amount(written: str) -> str | None:
    """ "1.234,5" / "1,234.50" / "9,95" / "1 200" -> "1234.50" / "9.95" / "1200"."""
    compact = written.replace(" ", "").replace("'", "")
    last = max(compact.rfind("."), compact.rfind(","))
    if last >= 0 and len(compact) - last - 1 in (1, 2):
        whole, cents = compact[:last], compact[last + 1 :]
    else:
        whole, cents = compact, ""
    whole = whole.replace(".", "").replace(",", "")
    if not whole.isdigit():
        return None
    return f"{int(whole)}.{cents.ljust(2, '0')}" if cents else str(int(whole))


def _money(text: str) -> list[Entity]:
    found = []
    for match in _MONEY.finditer(text):
        currency = (match.group("c1") or match.group("c2")).lower()
        amount = _amount(match.group("a1") or match.group("a2"))
        if amount is None:
            continue
        value = f"{_CURRENCY[currency]} {amount}"
        found.append(Entity(MONEY, value, match.group(0), *match.span()))
    return found


def _date_value(year: int | None, month: int, day: int) -> str | None:
    try:
        date(year or 2000, month, day)  # 2000: a leap year, so 29 February is a date
    except ValueError:
        return None
    return f"{year:04d}-{month:02d}-{day:02d}" if year else f"--{month:02d}-{day:02d}"


def _dates(text: str) -> list[Entity]:
    found = []
    for match in _ISO_DATE.finditer(text):
        value = _date_value(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        if value:
            found.append(Entity(DATE, value, match.group(0), *match.span()))
    for match in _NUMERIC_DATE.finditer(text):
        first, second, year_text = int(match.group(1)), int(match.group(3)), match.group(4)
        year = int(year_text) + (2000 if len(year_text) == 2 else 0)
        # Day first (as most of the world writes it) unless only month first is a date.
        day, month = (second, first) if second > 12 >= first else (first, second)
        value = _date_value(year, month, day)
        if value:
            found.append(Entity(DATE, value, match.group(0), *match.span()))
    for match in _DAY_MONTH.finditer(text):
        month = _MONTHS[match.group(2).lower()]
        given = int(match.group(3)) if match.group(3) else None
        value = _date_value(given, month, int(match.group(1)))
        if value:
            found.append(Entity(DATE, value, match.group(0), *match.span()))
    for match in _MONTH_DAY.finditer(text):
        if match.group(1).lower() == "may" and not match.group(3):
            continue  # "may 5" is as often "(you) may 5 ..." as a date
        month = _MONTHS[match.group(1).lower()]
        given = int(match.group(3)) if match.group(3) else None
        value = _date_value(given, month, int(match.group(2)))
        if value:
            found.append(Entity(DATE, value, match.group(0), *match.span()))
    return found


def _times(text: str) -> list[Entity]:
    found = []
    for match in _TIME.finditer(text):
        if match.group(3):
            hour, minute = int(match.group(1)), int(match.group(2) or 0)
            if not 1 <= hour <= 12:
                continue
            pm = match.group(3).lower().startswith("p")
            hour = hour % 12 + (12 if pm else 0)
        else:
            hour, minute = int(match.group(4)), int(match.group(5))
        found.append(Entity(TIME, f"{hour:02d}:{minute:02d}", match.group(0), *match.span()))
    return found


# ---- using entities ----------------------------------------------------------------------


def mask(
    text: str,
    entities: Iterable[Entity],
    types: Iterable[str] = SENSITIVE_TYPES,
    template: str = "[{type}]",
) -> str:
    """`text` with the spans of entities of `types` replaced by `template` (`[card]`).

    Args:
        text: the text the entities were extracted from.
        entities: from `EntityExtractor.extract(text)`.
        types: which entity types to hide (default: card, IBAN, email, phone).
        template: what replaces a span; `{type}` is the entity's type (`{TYPE}` in capitals).
    """
    wanted = set(types)
    out = []
    position = 0
    for entity in sorted(entities, key=lambda e: e.start):
        if entity.type not in wanted or entity.start < position:
            continue
        out.append(text[position : entity.start])
        out.append(template.replace("{type}", entity.type).replace("{TYPE}", entity.type.upper()))
        position = entity.end
    out.append(text[position:])
    return "".join(out)


def slot_values(entities: Iterable[Entity]) -> dict[str, str]:
    """Entity type -> value; a later entity of a type replaces an earlier one (the customer's
    latest word counts)."""
    values: dict[str, str] = {}
    for entity in entities:
        values[entity.type] = entity.value
    return values


def placeholders(template: str) -> tuple[str, ...]:
    """The distinct `{slot}` names of an answer template, in order of appearance."""
    return tuple(dict.fromkeys(_PLACEHOLDER.findall(template)))


def fill(
    template: str, values: Mapping[str, str], optional: Iterable[str] = OPTIONAL_SLOTS
) -> str | None:
    """The template with each `{slot}` replaced by its value; None when a required slot has
    no value.

    Slots in `optional` (the customer's name) are left out when unknown, with the words around
    them: "Hi {name}," -> "Hi,", "Good morning, {name}, ..." -> "Good morning, ...",
    "Dear {name}," -> "Hello,".
    """
    optional = frozenset(optional)
    wanted = placeholders(template)
    if any(s not in values and s not in optional for s in wanted):
        return None
    text = template
    for slot in wanted:
        if slot in values:
            continue
        tag = re.escape("{" + slot + "}")
        text = re.sub(rf"\bDear {tag}", "Hello", text)
        text = re.sub(rf",\s*{tag}(?=\s*,)", "", text)
        text = re.sub(rf" ?{tag}", "", text)
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


# The customer introducing themselves; the name is one or two words, the second capitalised
# ("my name is Ada Lovelace", but "my name is ada and ..." is just "Ada").
_NAME_INTRO = re.compile(
    r"(?i:\bmy name is|\bmy name's|\bname's)\s+"
    r"([^\W\d_][\w'-]*(?:\s+[A-Z][\w'-]*)?)"
)
# A direct reply to "what's your name?": "Ada", "it's Ada Lovelace", "I'm Ada".
_NAME_REPLY = re.compile(
    r"^\s*(?i:(?:it's|it is|i'm|i am|this is)\s+)?([^\W\d_][\w'-]*(?:\s+[^\W\d_][\w'-]*){0,2})"
    r"\s*[.!]?\s*$"
)


# Words of a short reply that make it something else than a name ("I don't know", "why?").
_NOT_NAMES = frozenset(
    {
        *("i", "i'm", "me", "my", "you", "your", "the", "a", "an", "is", "it", "order"),
        *("no", "not", "nope", "don't", "dont", "know", "idk", "yes", "ok", "okay", "sure"),
        *("why", "what", "who", "how", "sorry", "please", "help", "thanks"),
        *("hi", "hello", "hey", "bye"),
    }
)


def name_in(text: str, answering: bool = False) -> Entity | None:
    """The customer's name when `text` gives it, as a `name` entity (the `name` slot).

    Args:
        text: a customer message.
        answering: the message answers the bot's question for the name, so a reply of one
            to three words ("Ada", "it's Ada Lovelace") is the name itself.
    """
    match = _NAME_INTRO.search(text) or (_NAME_REPLY.match(text) if answering else None)
    if match is None:
        return None
    written = match.group(1)
    if any(word.lower() in _NOT_NAMES for word in written.split()):
        return None
    value = written.title() if written.islower() else written
    return Entity("name", value, written, match.start(1), match.end(1))


def near_misses(config: EntityConfig, text: str, entities: Iterable[Entity]) -> tuple[str, ...]:
    """The configured entities `text` tries to give but gets wrong: a `looks_like` match
    that is not (part of) a value found in it ("order 1234" while order numbers are
    BC-123456), in the routing file's order."""
    found = list(entities)
    missed = []
    for definition in config.definitions:
        for pattern in definition.looks_like:
            if any(
                not any(
                    e.type == definition.name and e.start < m.end() and m.start() < e.end
                    for e in found
                )
                for m in pattern.finditer(text)
            ):
                missed.append(definition.name)
                break
    return tuple(missed)

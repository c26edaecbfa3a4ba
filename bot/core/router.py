"""Routing configuration: what the bot does for each intent."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bot.core.entities import BUILTIN_TYPES, OPTIONAL_SLOTS, EntityConfig, fill, placeholders
from bot.core.errors import ConfigurationError
from bot.core.records import Message, Understanding
from bot.core.yamldoc import describe_yaml_error

ROUTE_KINDS = ("response", "answer", "handoff", "handler")
MESSAGE_KEYS = ("rephrase", "handoff", "waiting", "error")
# Hand-off notices a routing file may leave out (older files have none): these are used.
DEFAULT_MESSAGES: dict[str, tuple[str, ...]] = {
    "unclaimed": (
        "Sorry for the wait: all our agents are busy. Leave your message here and we will "
        "answer it as soon as someone is free.",
    ),
    "resolved": ("Our agent has marked this conversation as resolved. Thanks for your patience!",),
    "handed_back": ("You're back with the assistant. Ask me anything, or ask for a person again.",),
    # Hand-off states (bot/core/hours.py, service.py, desk.py): {opens} is the next opening
    # ("tomorrow at 8:00 CET"), {agent} the agent who claimed the conversation.
    "handoff_closed": (
        "I'm handing this conversation to our support team. Nobody is in right now: someone "
        "will answer here {opens}. Your messages stay in the queue.",
    ),
    "queued": ("Got it, it's in the queue: an agent will see it.",),
    "queued_closed": ("Got it, it's in the queue: an agent will see it {opens}.",),
    "claimed": ("{agent} joined the conversation.",),
    # After an agent resolved (bot/core/csat.py; `handoff.csat: false` asks nothing).
    "csat_question": ("How would you rate the help you got today? Tap 1 (poor) to 5 (excellent).",),
    "csat_thanks": ("Thank you for rating us {rating}/5!",),
}


@dataclass(frozen=True, slots=True)
class SlotRequirement:
    """A slot a route needs before it runs, and how the bot asks for it.

    Attributes:
        name: the slot (an entity type, or `name`).
        questions: what the bot asks (one picked at random); `{name}` is the customer's name.
        again: what it asks when the customer's reply did not hold the slot (once).
    """

    name: str
    questions: tuple[str, ...]
    again: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IntentRoute:
    """What to do for one intent.

    Attributes:
        requires: slots the conversation must have before the route runs; the bot asks for
            the first missing one (`requires:` in the routing file).
    """

    kind: str
    responses: tuple[str, ...] = ()
    handler: str | None = None
    quick_replies: tuple[str, ...] = ()
    requires: tuple[SlotRequirement, ...] = ()


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a custom handler gets: the message, what the models made of it, the conversation,
    and the slots the conversation has given (`order_id`, `email`, `name`...; every slot of
    the route's `requires:` is there)."""

    message: Message
    understanding: Understanding
    conversation_id: str
    slots: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[HandlerContext], Awaitable[str]]


@dataclass(frozen=True)
class RoutingConfig:
    """The parsed routing YAML."""

    default: IntentRoute
    intents: Mapping[str, IntentRoute]
    messages: Mapping[str, tuple[str, ...]]
    source: str = "<default>"
    # Built-in entities and the `entities:` section (bot/core/entities.py).
    entities: EntityConfig = field(default_factory=EntityConfig)
    # What the bot does with a message about none of the intents (`out_of_scope:`): a
    # route like an intent's, or `rephrase` (the fallback ladder, the default).
    out_of_scope: IntentRoute = IntentRoute("rephrase")
    # Quick replies offered with the rephrase prompt and the out-of-scope response: what the
    # bot can help with (`suggestions:`).
    suggestions: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None) -> RoutingConfig:
        """Read a routing file, or the packaged default for the sample shop when None.

        Raises:
            ConfigurationError: naming the file, the intent and the field at fault.
        """
        if path is None:
            text = resources.files("bot.core").joinpath("routing.yml").read_text()
            source = "bot/core/routing.yml"
        else:
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigurationError(f"routing config {path}: cannot read ({exc})") from exc
            source = str(path)
        try:
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigurationError("routing config " + describe_yaml_error(exc, source)) from None
        return cls.parse(document, source)

    @classmethod
    def parse(cls, document: Any, source: str) -> RoutingConfig:
        if not isinstance(document, dict):
            raise ConfigurationError(f"routing config {source}: expected a mapping at the top")
        problems: list[str] = []
        default = _parse_route(document.get("default", "answer"), "default", problems)
        intents = {}
        for intent, spec in (document.get("intents") or {}).items():
            intents[str(intent)] = _parse_route(spec, f"intents.{intent}", problems)
        messages: dict[str, tuple[str, ...]] = {}
        for key, value in (document.get("messages") or {}).items():
            # The questions for slots (`ask_order_id`, `ask_again_order_id`).
            if isinstance(key, str) and key.startswith("ask_") and value is not None:
                messages[key] = tuple(
                    str(v) for v in (value if isinstance(value, list) else [value])
                )
        for key in MESSAGE_KEYS:
            value = (document.get("messages") or {}).get(key)
            if value is None:
                problems.append(f"messages.{key}: missing; give at least one text")
                continue
            messages[key] = tuple(value) if isinstance(value, list) else (str(value),)
        for key, default_texts in DEFAULT_MESSAGES.items():
            value = (document.get("messages") or {}).get(key)
            if value is None:
                messages[key] = default_texts
            else:
                messages[key] = tuple(value) if isinstance(value, list) else (str(value),)
        if problems:
            raise ConfigurationError(f"routing config {source}: " + "; ".join(problems))
        entities = EntityConfig.parse(document.get("entities"), source)
        suggestions = _parse_suggestions(document.get("suggestions"), problems)
        out_of_scope = _parse_out_of_scope(document.get("out_of_scope", "rephrase"), problems)
        if out_of_scope.kind == "response" and not out_of_scope.quick_replies:
            out_of_scope = replace(out_of_scope, quick_replies=suggestions)
        known = slot_names(entities)
        default = _with_slots(default, "default", known, messages, problems)
        intents = {
            intent: _with_slots(route, f"intents.{intent}", known, messages, problems)
            for intent, route in intents.items()
        }
        out_of_scope = _with_slots(out_of_scope, "out_of_scope", known, messages, problems)
        if problems:
            raise ConfigurationError(f"routing config {source}: " + "; ".join(problems))
        return cls(
            default,
            intents,
            messages,
            source,
            entities,
            out_of_scope=out_of_scope,
            suggestions=suggestions,
        )


def slot_names(entities: EntityConfig) -> tuple[str, ...]:
    """The slots a route may require: `name`, the built-in entity types, the configured
    entities and the declared learned ones (`entities.learned`)."""
    return ("name", *BUILTIN_TYPES, *(d.name for d in entities.definitions), *entities.learned)


def default_question(slot: str) -> str:
    """What the bot asks for a slot nobody wrote a question for ("your order id")."""
    return f"Could you give me your {slot.replace('_', ' ')}?"


def _with_slots(
    route: IntentRoute,
    where: str,
    known: tuple[str, ...],
    messages: Mapping[str, tuple[str, ...]],
    problems: list[str],
) -> IntentRoute:
    """Resolve a route's `requires:` (parsed as names and explicit questions) against the
    known slots and the `ask_<slot>` messages, and check that its responses use only slots
    it requires (or `{name}`), so no customer ever sees a raw `{order_id}`."""
    resolved = []
    for requirement in route.requires:
        slot = requirement.name
        if slot not in known:
            configured = [k for k in known if k != "name" and k not in BUILTIN_TYPES]
            problems.append(
                f"{where}.requires: {slot!r} is not a slot; use name, a built-in entity type "
                f"({', '.join(BUILTIN_TYPES)}) or an entity of the `entities:` section ("
                + (", ".join(configured) or "none configured")
                + "); a type of your learned entity model goes in `entities.learned: [...]`"
            )
            continue
        questions = (
            requirement.questions or messages.get(f"ask_{slot}") or (default_question(slot),)
        )
        again = (
            requirement.again
            or messages.get(f"ask_again_{slot}")
            or tuple(
                f"I need your {slot.replace('_', ' ')} to look at this. {q}" for q in questions
            )
        )
        resolved.append(SlotRequirement(slot, questions, again))
    if route.requires and route.kind in ("handoff", "rephrase"):
        problems.append(
            f"{where}.requires: a {route.kind} route asks for nothing; remove `requires:` or "
            "use response/answer/handler"
        )
    if route.requires and where == "out_of_scope":
        problems.append(
            "out_of_scope.requires: a message about none of the intents has no slots to ask "
            "for; remove `requires:`"
        )
    required = {r.name for r in route.requires} | OPTIONAL_SLOTS
    for index, template in enumerate(route.responses):
        for slot in placeholders(template):
            if slot not in required:
                label = f"{where}.response" + (f"[{index}]" if len(route.responses) > 1 else "")
                problems.append(
                    f"{label}: {{{slot}}} needs the slot {slot}; add it to the route's "
                    f"`requires: [{slot}]` so the bot asks for it before answering"
                )
    return IntentRoute(
        route.kind, route.responses, route.handler, route.quick_replies, tuple(resolved)
    )


def _parse_requires(spec: Any, where: str, problems: list[str]) -> tuple[SlotRequirement, ...]:
    """`requires:` is a list of slot names, or of `slot: question` mappings (the question a
    text, a list of texts, or `{ask: ..., ask_again: ...}`); questions are resolved later."""
    if spec is None:
        return ()
    if not isinstance(spec, list):
        problems.append(
            f"{where}.requires: expected a list of slots, e.g. [order_id] or "
            '- order_id: "What\'s your order number?"'
        )
        return ()
    found: list[SlotRequirement] = []
    for index, item in enumerate(spec):
        label = f"{where}.requires[{index}]"
        questions: tuple[str, ...] = ()
        again: tuple[str, ...] = ()
        if isinstance(item, dict) and len(item) == 1:
            ((name, asked),) = item.items()
            if isinstance(asked, dict):
                unknown = sorted(set(asked) - {"ask", "ask_again"})
                if unknown:
                    problems.append(
                        f"{label}.{name}: unknown field(s) {', '.join(map(str, unknown))}; "
                        "use ask and ask_again"
                    )
                questions = _texts(asked.get("ask"), f"{label}.{name}.ask", problems)
                again = _texts(asked.get("ask_again"), f"{label}.{name}.ask_again", problems)
            else:
                questions = _texts(asked, f"{label}.{name}", problems)
        elif isinstance(item, str):
            name = item
        else:
            problems.append(
                f"{label}: expected a slot name or one `slot: question` mapping, found {item!r}"
            )
            continue
        name = str(name)
        if any(r.name == name for r in found):
            problems.append(f"{label}: {name} is required twice; list each slot once")
            continue
        found.append(SlotRequirement(name, questions, again))
    return tuple(found)


def _texts(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    """A text or a list of texts (None: none given)."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        problems.append(f"{where}: expected a question (a text or a list of texts)")
        return ()
    return tuple(v.strip() for v in values)


def _parse_suggestions(value: Any, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append("suggestions: expected a list of texts (quick replies)")
        return ()
    return tuple(v.strip() for v in value)


def _parse_out_of_scope(spec: Any, problems: list[str]) -> IntentRoute:
    """`out_of_scope:` is `rephrase`, `answer`, `handoff`, or a mapping like an intent's."""
    if spec == "rephrase":
        return IntentRoute("rephrase")
    if isinstance(spec, str) and spec not in ("answer", "handoff"):
        problems.append(
            f"out_of_scope: {spec!r} is not a route; use rephrase, answer, handoff or a "
            "mapping with response/handler (and quick_replies)"
        )
        return IntentRoute("rephrase")
    return _parse_route(spec, "out_of_scope", problems)


def _parse_route(spec: Any, where: str, problems: list[str]) -> IntentRoute:
    if isinstance(spec, str):
        if spec in ("answer", "handoff"):
            return IntentRoute(spec)
        problems.append(f"{where}: {spec!r} is not a route; use answer, handoff or a mapping")
        return IntentRoute("answer")
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a mapping with response/answer/handoff/handler")
        return IntentRoute("answer")
    kinds = [k for k in ROUTE_KINDS if spec.get(k)]
    if len(kinds) != 1:
        problems.append(f"{where}: give exactly one of {', '.join(ROUTE_KINDS)} (found {kinds})")
        return IntentRoute("answer")
    kind = kinds[0]
    quick = tuple(str(q) for q in spec.get("quick_replies") or ())
    requires = _parse_requires(spec.get("requires"), where, problems)
    if kind == "response":
        value = spec["response"]
        responses = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        return IntentRoute(kind, responses=responses, quick_replies=quick, requires=requires)
    if kind == "handler":
        return IntentRoute(
            kind, handler=str(spec["handler"]), quick_replies=quick, requires=requires
        )
    return IntentRoute(kind, quick_replies=quick, requires=requires)


@dataclass
class Router:
    """Chooses the route for an intent and renders templates.

    Custom handlers are registered explicitly with `add_handler`; a routing file naming an
    unregistered handler is rejected by `check`.
    """

    config: RoutingConfig
    rng: random.Random = field(default_factory=random.Random)
    handlers: dict[str, Handler] = field(default_factory=dict)

    def add_handler(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def check(self) -> None:
        """Raise ConfigurationError if the config names a handler nobody registered."""
        missing = sorted(
            {
                r.handler
                for r in (*self.config.intents.values(), self.config.out_of_scope)
                if r.handler
            }
            - set(self.handlers)
        )
        if missing:
            raise ConfigurationError(
                f"routing config {self.config.source} names handler(s) {', '.join(missing)} "
                "that are not registered; register them with Router.add_handler"
            )

    def requirement(self, intent: str | None, slot: str) -> SlotRequirement:
        """How to ask for `slot` for `intent`: its route's `requires:` entry, else the
        `ask_<slot>` messages or the default question (a slot asked for without a route
        needing it: a mistyped order number in a message the bot is unsure about)."""
        route = self.route_for(intent)
        for requirement in route.requires:
            if requirement.name == slot:
                return requirement
        (resolved,) = _with_slots(
            IntentRoute("answer", requires=(SlotRequirement(slot, (), ()),)),
            "",
            (slot,),
            self.config.messages,
            [],
        ).requires
        return resolved

    def route_for(self, intent: str | None) -> IntentRoute:
        if intent is None:
            return IntentRoute("answer")
        return self.config.intents.get(intent, self.config.default)

    def render(
        self,
        templates: tuple[str, ...],
        name: str | None,
        slots: Mapping[str, str] | None = None,
    ) -> str:
        """One of `templates`: `{name}` is the customer's name ("there" when unknown); with
        `slots` (a response), the other `{slot}`s are filled from them.

        Raises:
            ConfigurationError: a template needs a slot `slots` lacks (the start-up check
                rules this out for responses: their slots must be in `requires:`).
        """
        template = self.rng.choice(templates).replace("{name}", name or "there")
        if slots is None:  # messages fill their own ({opens}, {agent}, {rating})
            return template
        filled = fill(template, slots)
        if filled is None:
            missing = [s for s in placeholders(template) if s not in slots]
            raise ConfigurationError(
                f"routing config {self.config.source}: the text {template!r} needs "
                f"{', '.join(missing)}, which the conversation has not given; add it to the "
                "route's `requires:`"
            )
        return filled

    def message(self, key: str, name: str | None = None) -> str:
        return self.render(self.config.messages[key], name)

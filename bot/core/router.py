"""Routing configuration: what the bot does for each intent."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bot.core.entities import EntityConfig
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
class IntentRoute:
    """What to do for one intent."""

    kind: str
    responses: tuple[str, ...] = ()
    handler: str | None = None
    quick_replies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a custom handler gets: the message, what the models made of it, the conversation."""

    message: Message
    understanding: Understanding
    conversation_id: str


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
            out_of_scope = IntentRoute("response", out_of_scope.responses, None, suggestions)
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
    if kind == "response":
        value = spec["response"]
        responses = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        return IntentRoute(kind, responses=responses, quick_replies=quick)
    if kind == "handler":
        return IntentRoute(kind, handler=str(spec["handler"]), quick_replies=quick)
    return IntentRoute(kind, quick_replies=quick)


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

    def route_for(self, intent: str | None) -> IntentRoute:
        if intent is None:
            return IntentRoute("answer")
        return self.config.intents.get(intent, self.config.default)

    def render(self, templates: tuple[str, ...], name: str | None) -> str:
        template = self.rng.choice(templates)
        return template.replace("{name}", name or "there")

    def message(self, key: str, name: str | None = None) -> str:
        return self.render(self.config.messages[key], name)

"""Routing configuration: what the bot does for each intent."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bot.core.errors import ConfigurationError
from bot.core.records import Message, Understanding

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
            raise ConfigurationError(f"routing config {source}: invalid YAML ({exc})") from exc
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
        return cls(default, intents, messages, source)


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
            {r.handler for r in self.config.intents.values() if r.handler} - set(self.handlers)
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

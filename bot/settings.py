"""One settings object for the runtime: defaults, then a YAML file, then environment variables.

Environment variables are `SUPPORTBOT_<SECTION>__<KEY>`, e.g. `SUPPORTBOT_STORE__URL` or
`SUPPORTBOT_TELEGRAM__TOKEN`. Loaded once at start-up by the composition root; each component
receives only its own section. Secrets are `SecretStr` and never printed.
"""

from __future__ import annotations

import difflib
import socket
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from bot.core.errors import ConfigurationError
from bot.core.escalation import EscalationSettings
from bot.core.hours import HandoffSettings
from bot.core.yamldoc import load_yaml


class ServerSettings(BaseModel):
    """HTTP server."""

    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 for all interfaces)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest accepted request body")
    max_message_chars: int = Field(4000, ge=1, description="longest accepted customer message")
    public_url: str | None = Field(None, description="URL customers reach, for printed links")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text, or json: one object per line with time, level, logger, message, "
        "replica, request_id, conversation_id",
    )
    replica: str = Field(
        default_factory=socket.gethostname,
        description="this replica's name in logs and metrics (default: the host name)",
    )
    trusted_proxies: list[str] = Field(
        [],
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; from any other peer they are ignored",
    )
    allow_unauthenticated_api: bool = Field(
        False,
        description="serve the REST API without API keys on a non-loopback address (only for "
        "a network you trust); on loopback with no keys, local callers need none",
    )
    return_freed_memory: bool = Field(
        False,
        description="have glibc give freed blocks of 128 KB and more back to the system: "
        "about 130 MB less resident per replica, about 9 % more CPU per message",
    )
    trim_memory_when_idle: bool = Field(
        True,
        description="when the model thread has no work, at most once a second, give the "
        "heap's free pages back to the system (glibc malloc_trim, 5-7 ms): tens of MB less "
        "resident per replica",
    )


class StoreSettings(BaseModel):
    """Where conversations are kept: a SQLite file by default, PostgreSQL at scale."""

    url: str = Field(
        "sqlite+aiosqlite:///var/supportbot.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB",
    )


class ModelSettings(BaseModel):
    """Which models are served and how they are found."""

    dir: Path = Field(Path("models"), description="models directory with registry.json")
    train_data: list[Path] = Field(
        [Path("data")], description="training data for the first start (JSON list in env)"
    )
    train_if_missing: bool = Field(True, description="train from train_data on first start")
    reload_interval_s: float = Field(2.0, gt=0, description="how often the registry is checked")
    quantize: bool = Field(
        True,
        description="int8 for the classifiers' own linear layers, float16 weights (float32 "
        "arithmetic) for the shared layers and the answer index's (CPU); false: all float32",
    )


class NluSettings(BaseModel):
    """Micro-batching of model inference."""

    max_batch: int = Field(64, ge=1, description="most texts in one model call")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="extra wait for company; 0: batches form while the previous one runs",
    )
    workers: int = Field(
        1,
        ge=1,
        le=2,
        description="model worker threads: 2 runs intent/sentiment and the answer-index "
        "encoder side by side (a core each), 1 runs every model call on one thread",
    )
    share_encoder: bool = Field(
        True,
        description="run the layers intent, sentiment and the answer index have in common "
        "once per message (false: every model runs its own forward)",
    )
    threads: int = Field(
        1,
        ge=1,
        description="torch threads for serving; 1 leaves the other cores to the event loop "
        "and the database (faster overall, see the runtime benchmark)",
    )


class RetrievalSettings(BaseModel):
    """The answer index."""

    index_dir: Path = Field(Path("models/answers"), description="answer index directory")
    data: list[Path] = Field(
        [Path("data/conversations.jsonl")], description="logs to build a missing index from"
    )
    faq: list[Path] = Field([Path("data/faq.csv")], description="FAQ files for a missing index")
    min_score: float = Field(0.55, ge=-1, le=1, description="below this, an answer is not used")
    min_margin: float = Field(
        0.0,
        ge=0,
        le=2,
        description="the best answer must score this much above the next different one, "
        "or the bot asks to rephrase (0: off)",
    )
    build_if_missing: bool = Field(True, description="build the index on first start")


class RoutingSettings(BaseModel):
    """Per-intent routing (YAML); the packaged default serves the sample shop."""

    config: Path | None = Field(None, description="routing YAML (default: bot/core/routing.yml)")


class WidgetSettings(BaseModel):
    """The embeddable web chat widget."""

    allowed_origins: list[str] = Field(
        default_factory=list,
        description="pages (scheme://host[:port]) allowed to open the widget's socket; the "
        "bot's own origin is always allowed; '*' allows any",
    )
    title: str = Field("Brightcart support", description="title of the chat panel")
    max_queued_messages: int = Field(
        50, ge=1, description="messages a browser queues while offline"
    )


class TelegramSettings(BaseModel):
    """The Telegram connector; runs when a token is set."""

    token: SecretStr | None = Field(None, description="bot token from @BotFather; enables Telegram")
    base_url: str = Field(
        "https://api.telegram.org/bot", description="Bot API base URL (the token is appended)"
    )
    mode: Literal["polling", "webhook"] = Field("polling", description="polling or webhook")
    webhook_url: str | None = Field(
        None, description="public https URL of /telegram/webhook (webhook mode)"
    )
    secret_token: SecretStr | None = Field(
        None, description="checked on every webhook update (X-Telegram-Bot-Api-Secret-Token)"
    )


class ConsoleSettings(BaseModel):
    """The agent console: sign-in sessions and the sign-in rate limit."""

    session_hours: float = Field(12.0, gt=0, description="how long a console sign-in lasts")
    max_failed_sign_ins: int = Field(
        5,
        ge=1,
        description="failed sign-ins per name (4x per client address) within the window "
        "before sign-in answers 429",
    )
    sign_in_window_s: float = Field(
        900.0, gt=0, description="the window failed sign-ins are counted in"
    )


class BusSettings(BaseModel):
    """Events between replicas (console updates, pushed replies, model reloads)."""

    url: str | None = Field(
        None,
        description="redis://HOST:6379/0 for several replicas; unset: one process, in memory",
    )
    prefix: str = Field(
        "supportbot:",
        description="put before every Redis channel and lock name (deployments sharing a Redis)",
    )


class PrivacySettings(BaseModel):
    """What customer details never reach the store, the models, the console or the logs."""

    redact: list[str] = Field(
        default_factory=list,
        description="entity types masked in customer messages before they are stored, e.g. "
        "[email, phone] or a routing entity such as order_id; card numbers and IBANs always are",
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        description="conversations last active longer ago are deleted with all their rows by "
        "`serve` (null: kept for ever)",
    )
    purge_interval_s: float = Field(
        3600.0, gt=0, description="seconds between retention purges (one replica does each)"
    )


class RetrainSettings(BaseModel):
    """`supportbot retrain`: how feedback is sampled and when a candidate may go live."""

    tolerance: float = Field(
        1.0, ge=0, description="frozen-test accuracy points a candidate may lose and still go live"
    )
    max_intent_drop: float = Field(
        10.0,
        ge=0,
        description="F1 points any one intent (or sentiment) may lose on the frozen test set",
    )
    min_label_support: int = Field(
        5, ge=1, description="labels with fewer frozen-test examples are reported, not gated"
    )
    replay: int = Field(
        8000, ge=0, description="earlier training examples replayed (stratified) with the feedback"
    )
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of each label's agent labels held out for the gate"
    )
    min_new_intent_examples: int = Field(
        5, ge=1, description="labelled messages a new intent needs before it is learned"
    )
    include_rated: bool = Field(
        False, description="also learn from bot answers customers rated helpful (weak labels)"
    )
    learning_rate: float | None = Field(
        5e-5,
        gt=0,
        lt=1,
        description="encoder learning rate of a retrain (null: the live model's); lower than "
        "training's 1e-4 so old intents are kept (see the retraining benchmark)",
    )


class Settings(BaseSettings):
    """All of supportbot's runtime settings."""

    model_config = SettingsConfigDict(
        env_prefix="SUPPORTBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
        # An empty variable means unset: docker-compose's `${TELEGRAM_TOKEN:-}` must not turn
        # Telegram on with an empty token.
        env_ignore_empty=True,
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    models: ModelSettings = ModelSettings()
    nlu: NluSettings = NluSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    escalation: EscalationSettings = EscalationSettings()
    handoff: HandoffSettings = HandoffSettings()
    routing: RoutingSettings = RoutingSettings()
    telegram: TelegramSettings = TelegramSettings()
    widget: WidgetSettings = WidgetSettings()
    bus: BusSettings = BusSettings()
    console: ConsoleSettings = ConsoleSettings()
    retrain: RetrainSettings = RetrainSettings()
    privacy: PrivacySettings = PrivacySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments beat the environment, which beats the YAML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a YAML file (optional), the environment and overrides.

    Raises:
        ConfigurationError: the file is missing or a value is invalid; says which and why.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"config file {config_file} does not exist; check --config")
    if config_file is not None:
        check_settings_file(config_file)
    cls: type[Settings] = Settings
    if config_file is not None:
        # A subclass carrying the file name keeps the choice out of global state.
        config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": config_file})
        cls = type("FileSettings", (Settings,), {"model_config": config})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        where = f" in {config_file} or SUPPORTBOT_* variables" if config_file else ""
        raise ConfigurationError(f"invalid settings{where}: {problems}") from exc


def check_settings_file(path: Path, model: type[BaseModel] = Settings) -> None:
    """Refuse a settings file with bad YAML or a key that is not a setting, at any depth.

    pydantic ignores unknown keys inside a section, so `server: {prot: 1}` would silently
    leave the port at its default; this names the key and the nearest valid one.

    Raises:
        ConfigurationError: one line per problem, each with the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {path}: cannot read it ({exc})") from exc
    document = load_yaml(text, str(path))
    if document is None:
        return
    if not isinstance(document, dict):
        raise ConfigurationError(
            f"{path}: expected a mapping of sections at the top (e.g. `server:` then "
            f"`  port: 8080`), found a {type(document).__name__}"
        )
    problems = _unknown_keys(yaml.compose(text, Loader=yaml.SafeLoader), model, "", str(path))
    if len(problems) == 1:
        raise ConfigurationError(problems[0])
    if problems:
        raise ConfigurationError(
            f"{len(problems)} keys in {path} are not settings:\n  " + "\n  ".join(problems)
        )


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds (also inside `X | None`), or None for a value."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _unknown_keys(
    node: yaml.Node | None, model: type[BaseModel], prefix: str, source: str
) -> list[str]:
    if not isinstance(node, yaml.MappingNode) or model.model_config.get("extra") == "allow":
        return []  # a wrong type is pydantic's to explain
    fields = model.model_fields
    names = sorted({*fields, *(f.alias for f in fields.values() if f.alias)})
    problems: list[str] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue
        key = str(key_node.value)
        path = f"{prefix}{key}"
        if key not in names:
            guess = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = (
                f"did you mean {prefix}{guess[0]}?"
                if guess
                else f"valid keys {'in ' + prefix.rstrip('.') if prefix else 'at the top'}: "
                + ", ".join(names)
            )
            line = key_node.start_mark.line + 1
            problems.append(f"{source} line {line}: {path} is not a setting; {hint}")
            continue
        field = fields.get(key) or next(f for f in fields.values() if f.alias == key)
        section = _section_model(field.annotation)
        if section is not None:
            problems += _unknown_keys(value_node, section, f"{path}.", source)
    return problems

"""Prometheus metrics, one registry per app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5)


class Metrics:
    """The counters and histograms the runtime updates."""

    def __init__(self, replica: str = "") -> None:
        self.registry = CollectorRegistry()
        # Each replica serves its own /metrics; this says which one Prometheus scraped.
        self.replica = Info(
            "supportbot_replica", "The replica serving these metrics.", registry=self.registry
        )
        self.replica.info({"replica": replica})
        self.messages = Counter(
            "supportbot_messages",
            "Customer messages handled, by channel and route.",
            ["channel", "route"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "supportbot_escalations",
            "Conversations handed to people, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "supportbot_fallbacks",
            "Turns where the bot asked the customer to rephrase.",
            registry=self.registry,
        )
        self.out_of_scope = Counter(
            "supportbot_out_of_scope",
            "Customer messages the intent model's detector found out of scope, by channel.",
            ["channel"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "supportbot_feedback",
            "Feedback received, by rating.",
            ["rating"],
            registry=self.registry,
        )
        self.errors = Counter(
            "supportbot_errors",
            "Messages whose handling failed (answered with the error message).",
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "supportbot_stage_seconds",
            "Latency of each stage of handling a message.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.model_reloads = Gauge(
            "supportbot_model_reloads",
            "Live model swaps since this process started.",
            registry=self.registry,
        )
        self.bus_events_lost = Counter(
            "supportbot_bus_events_lost",
            "Events not sent to the other replicas (Redis unavailable), by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.bus_reconnects = Counter(
            "supportbot_bus_reconnects",
            "Reconnections of the event bus to Redis.",
            registry=self.registry,
        )

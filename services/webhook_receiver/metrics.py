"""Prometheus counters of the receiver (this process; cross-process metrics come later)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOK_EVENTS = Counter(
    "halaxy_bridge_webhook_events_total",
    "Halaxy notification events taken in, by outcome (accepted, duplicate).",
    ["connection_id", "event", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_REJECTIONS = Counter(
    "halaxy_bridge_webhook_rejections_total",
    "Halaxy webhook deliveries refused, by reason, for known connections.",
    ["connection_id", "event", "reason"],
    registry=REGISTRY,
)


def accepted(connection_id: str, event: str, fresh: int, duplicates: int) -> None:
    WEBHOOK_EVENTS.labels(connection_id, event, "accepted").inc(fresh)
    WEBHOOK_EVENTS.labels(connection_id, event, "duplicate").inc(duplicates)


def rejected(connection_id: str, event: str, reason: str) -> None:
    WEBHOOK_REJECTIONS.labels(connection_id, event, reason).inc()

"""The receiver's `/metrics`: the totals every process pushed to Redis, and gauges read from
Redis at scrape time (queues, dead letters, parked notes, each connection's last event,
unfinished messages and circuit breakers, the workers and schedulers alive)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.telemetry.definitions import LAST_EVENT_NAME, LAST_SUCCESS_NAME, REGISTRY
from shared.telemetry.push import read_field

QUEUE_STATES = (("ready", "depth"), ("taken", "taken"), ("delayed", "delayed"), ("dead", "dead"))
SUFFIX_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2, "_total": 0}
PER_CONNECTION = {
    "dead_letters": ("halaxy_bridge_dead_letters", "Dead letters kept for replay."),
    "parked_notes": (
        "halaxy_bridge_parked_notes",
        "Program notes that may or may not be in Halaxy: a person must resolve them.",
    ),
    "enabled": ("halaxy_bridge_connection_enabled", "1 while the connection is enabled."),
    "quiet_after": (
        "halaxy_bridge_connection_quiet_after_seconds",
        "How long the connection may send no webhook before it is worth an alert.",
    ),
    "last_event": (
        LAST_EVENT_NAME,
        "Unix time of the last authenticated Halaxy webhook (its creation before any).",
    ),
    "last_success": (
        LAST_SUCCESS_NAME,
        "Unix time of the last job of the connection that succeeded.",
    ),
    "reconcile_lag": (
        "halaxy_bridge_reconcile_lag_seconds",
        "Seconds since the connection's last reconcile sweep started.",
    ),
    "paused": (
        "halaxy_bridge_connection_paused",
        "1 while the connection is paused: its webhooks are kept, nothing of it is processed.",
    ),
    "held_messages": (
        "halaxy_bridge_connection_held_messages",
        "Messages of the connection set aside by workers while it is paused, to run on resume.",
    ),
}


def totals(client: redis.Redis, keys: Keys) -> Iterator[Metric]:
    """Counters and histograms summed over every process."""
    with translate_redis_errors():
        stored = client.hgetall(keys.metric_totals())
    families = {
        family.name: Metric(family.name, family.documentation, family.type)
        for family in REGISTRY.collect()
        if family.type in ("counter", "histogram")
    }
    samples: dict[str, list[tuple[Any, str, dict[str, str], float]]] = {}
    for raw, value in stored.items():
        name, labels = read_field(as_bytes(raw))
        for suffix, order in SUFFIX_ORDER.items():
            family = name.removesuffix(suffix)
            if name.endswith(suffix) and family in families:
                series = sorted((k, v) for k, v in labels.items() if k != "le")
                le = float(labels.get("le", "0"))
                position = (series, order, le)
                samples.setdefault(family, []).append((position, name, labels, float(value)))
                break
    for family_name, metric in families.items():
        for _, sample_name, labels, total in sorted(samples.get(family_name, [])):
            metric.add_sample(sample_name, labels, total)
        yield metric


def gauges(snapshot: dict[str, Any], quiet_after_seconds: int, now: float) -> Iterator[Metric]:
    """Gauges from a `shared.ops.status.status` snapshot."""
    messages = GaugeMetricFamily(
        "halaxy_bridge_queue_messages",
        "Messages in a queue, by state (ready: not taken yet; taken: by a worker, running or "
        "prefetched; delayed: a retry's backoff or a deferral; dead: the bridge's dead letters "
        "of that queue, the same count as halaxy_bridge_dead_letters summed).",
        labels=["queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "halaxy_bridge_queue_oldest_message_age_seconds",
        "Age of the oldest message waiting in the queue (0 when it is empty).",
        labels=["queue"],
    )
    for queue in snapshot["queues"]:
        for state, column in QUEUE_STATES:
            messages.add_metric([queue["queue"], state], queue.get(column, 0))
        oldest.add_metric([queue["queue"]], queue["oldest_age_seconds"] or 0.0)
    yield messages
    yield oldest
    unrouted = GaugeMetricFamily(
        "halaxy_bridge_unrouted_programs",
        "Physitrack program posts no enabled connection knows the token of: kept until a "
        "practitioner with that token is added (halaxy-bridge programs unrouted).",
    )
    unrouted.add_metric([], snapshot.get("unrouted_programs", 0))
    yield unrouted

    yield from liveness_gauges(snapshot)
    yield from connection_queue_gauges(snapshot["connections"])
    yield circuit_gauge(snapshot["connections"])

    per_connection = {
        key: GaugeMetricFamily(name, documentation, labels=["connection_id"])
        for key, (name, documentation) in PER_CONNECTION.items()
    }
    for row in snapshot["connections"]:
        labels = [row["id"]]
        per_connection["dead_letters"].add_metric(labels, row["dead_letters"])
        per_connection["parked_notes"].add_metric(labels, row["parked_notes"])
        per_connection["enabled"].add_metric(labels, 1 if row["enabled"] else 0)
        per_connection["quiet_after"].add_metric(labels, quiet_after_seconds)
        last_event = row["last_event_at"] or row["created_at"]
        per_connection["last_event"].add_metric(labels, _unix(last_event))
        if row["last_success_at"] is not None:
            per_connection["last_success"].add_metric(labels, _unix(row["last_success_at"]))
        if row["last_sweep"] is not None:
            lag = max(0.0, now - _unix(row["last_sweep"]))
            per_connection["reconcile_lag"].add_metric(labels, lag)
        per_connection["paused"].add_metric(labels, 1 if row["paused"] else 0)
        per_connection["held_messages"].add_metric(labels, row["held_messages"])
    yield from per_connection.values()


def liveness_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """How many workers and schedulers are alive, and when the last of each was seen."""
    workers = snapshot.get("workers") or {}
    scheduler = snapshot.get("scheduler") or {}
    alive = GaugeMetricFamily(
        "halaxy_bridge_workers_alive",
        "Worker processes whose heartbeat is fresh (BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS).",
    )
    alive.add_metric([], workers.get("alive", 0))
    yield alive
    schedulers = GaugeMetricFamily(
        "halaxy_bridge_schedulers_alive",
        "Scheduler processes whose heartbeat is fresh, by role (leader: holds the lease and "
        "does the work; standby: waits to take over).",
        labels=["role"],
    )
    roles = Counter(row.get("role") for row in scheduler.get("instances", []) if row.get("alive"))
    for role in ("leader", "standby"):
        schedulers.add_metric([role], roles[role])
    yield schedulers
    for name, part, what in (
        ("halaxy_bridge_worker_last_seen_timestamp_seconds", workers, "worker"),
        ("halaxy_bridge_scheduler_last_seen_timestamp_seconds", scheduler, "scheduler"),
    ):
        last_seen = GaugeMetricFamily(
            name, f"Unix time of the latest heartbeat of any {what} (none in a day: no sample)."
        )
        if part.get("last_seen_at"):
            last_seen.add_metric([], _unix(part["last_seen_at"]))
        yield last_seen


def connection_queue_gauges(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each connection's unfinished messages per queue, and how long its oldest due one waited."""
    messages = GaugeMetricFamily(
        "halaxy_bridge_connection_queue_messages",
        "The connection's unfinished messages in a queue, by state (due: ready, or taken by a "
        "worker; delayed: a retry's backoff or a deferral).",
        labels=["connection_id", "queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "halaxy_bridge_connection_oldest_message_age_seconds",
        "How long the connection's oldest due message in the queue has waited (0 when none).",
        labels=["connection_id", "queue"],
    )
    for row in rows:
        for queue, counts in (row.get("queues") or {}).items():
            delayed = counts.get("delayed", 0)
            messages.add_metric([row["id"], queue, "due"], counts.get("queued", 0) - delayed)
            messages.add_metric([row["id"], queue, "delayed"], delayed)
            oldest.add_metric([row["id"], queue], counts.get("oldest_age_seconds") or 0.0)
    yield messages
    yield oldest


# The gauge's value per state: a half-open circuit is on its way to closing.
CIRCUIT_OPEN_VALUES = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


def circuit_gauge(rows: list[dict[str, Any]]) -> Metric:
    """Each connection's circuit breaker per upstream (halaxy, platform)."""
    gauge = GaugeMetricFamily(
        "halaxy_bridge_circuit_open",
        "The connection's circuit breaker for an upstream: 1 open (its messages wait), 0.5 "
        "half-open (one probe message may go), 0 closed.",
        labels=["connection_id", "upstream"],
    )
    for row in rows:
        for circuit in row.get("circuits") or []:
            value = CIRCUIT_OPEN_VALUES.get(circuit.get("state"), 0.0)
            gauge.add_metric([row["id"], circuit["upstream"]], value)
    return gauge


def _unix(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


class Reused:
    """The last result of an expensive build, reused for `seconds`, built by one caller at a
    time: `/metrics` is open to anyone who can reach it and reads much of Redis."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._built_at = -math.inf
        self._result = b""

    def get(self, build: Callable[[], bytes]) -> bytes:
        with self._lock:
            if time.monotonic() - self._built_at >= self._seconds:
                self._result = build()
                self._built_at = time.monotonic()
            return self._result


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def exposition(families: list[Metric]) -> bytes:
    """The Prometheus text format of `families`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)

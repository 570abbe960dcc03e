"""Adds what this process counted since its last push to the totals every process shares.

Counters and histogram buckets only ever grow, so each push sends the growth since the last
successful one (HINCRBYFLOAT, in one MULTI/EXEC so a push lands whole or not at all). When
Redis is unreachable the growth stays in this process and goes with the next push. Timestamp
gauges keep the latest value of any process (ZADD GT). A process counts into its own registry
and never waits on Redis to do so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import redis
import structlog
from prometheus_client import CollectorRegistry

from shared.errors import BridgeError
from shared.store import Keys, translate_redis_errors
from shared.telemetry.definitions import LATEST_GAUGES, REGISTRY, WINDOWED

# Per-minute copies of windowed counters are kept this long (status reads the last hour).
MINUTES_KEPT_SECONDS = 2 * 3600

log = structlog.get_logger("halaxy_bridge.metrics")


def sample_field(sample_name: str, labels: dict[str, str]) -> bytes:
    """The Redis hash field of one sample: its name and sorted labels."""
    return orjson.dumps([sample_name, sorted(labels.items())])


def read_field(field: bytes) -> tuple[str, dict[str, str]]:
    name, labels = orjson.loads(field)
    return str(name), {str(k): str(v) for k, v in labels}


def _samples(registry: CollectorRegistry) -> Iterator[tuple[str, str, bytes, float]]:
    """(family, kind, field, value) of every sample worth sharing."""
    for family in registry.collect():
        if family.type in ("counter", "histogram"):
            kind = "total"
        elif family.name in LATEST_GAUGES:
            kind = "latest"
        else:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            yield family.name, kind, sample_field(sample.name, sample.labels), sample.value


class MetricsPusher:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        interval: float,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._interval = interval
        self._registry = registry
        # What was counted before this pusher existed belongs to no namespace it serves.
        self._sent = {field: value for _, _, field, value in _samples(registry)}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def push(self) -> None:
        """Send what changed; raise `StoreUnavailable` (and keep it for later) on failure."""
        with self._lock:
            changed = [
                (family, kind, field, value)
                for family, kind, field, value in _samples(self._registry)
                # A series seen for the first time goes whole, zero buckets included.
                if field not in self._sent or value != self._sent[field]
            ]
            if not changed:
                return
            minute_key = self._keys.metric_minute(int(time.time() // 60))
            pipe = self._redis.pipeline(transaction=True)
            for family, kind, field, value in changed:
                if kind == "latest":
                    pipe.zadd(self._keys.metric_latest(), {field: value}, gt=True)
                    continue
                growth = value - self._sent.get(field, 0.0)
                pipe.hincrbyfloat(self._keys.metric_totals(), field, growth)
                if family in WINDOWED:
                    pipe.hincrbyfloat(minute_key, field, growth)
                    pipe.expire(minute_key, MINUTES_KEPT_SECONDS)
            with translate_redis_errors():
                pipe.execute()
            for _, _, field, value in changed:
                self._sent[field] = value

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-pusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background pushes and send what is left."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
        self.push_quietly()

    def push_quietly(self) -> None:
        try:
            self.push()
        except BridgeError:
            log.warning("metrics.push_failed", reason="redis_unavailable")

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.push_quietly()
            except Exception:  # the thread must outlive any surprise: it is the only pusher
                log.exception("metrics.push_crashed")

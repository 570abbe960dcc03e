"""Adds what this process counted since its last push to the totals every process shares.

Counters and histogram buckets only ever grow, so each push sends the growth since the one
before (HINCRBYFLOAT, in one script so a push lands whole or not at all). Timestamp gauges
keep the latest value of any process (ZADD GT). A process counts into its own registry and
never waits on Redis to do so.

A push that fails is sent again, the same growth under the same number, before anything newer:
when Redis was unreachable it lands then, and when only its reply was lost the script sees
from the pusher's receipt that it landed already and adds nothing twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import redis
import structlog
from prometheus_client import CollectorRegistry

from shared.infra.clock import epoch_seconds
from shared.infra.errors import BridgeError
from shared.infra.store import Keys, translate_redis_errors
from shared.telemetry.definitions import LATEST_GAUGES, REGISTRY, WINDOWED

# Per-minute copies of windowed counters are kept this long (status reads the last hour).
MINUTES_KEPT_SECONDS = 2 * 3600
# A pusher's receipt (the number of its last push that landed) outlives any outage after
# which a push whose reply was lost could be sent again.
RECEIPT_KEPT_SECONDS = 7 * 24 * 3600

# KEYS: the pusher's receipt, the totals hash, the latest-values sorted set, the minute hash.
# ARGV: the push's number, the receipt's and the minute's TTLs, then (kind, field, value)
# triples: kind 't' adds to the totals, 'w' to the totals and the minute, 'l' keeps the
# latest. The first write is the receipt's SET, so a Redis refusing writes (out of memory)
# fails the push before it has changed anything.
PUSH_SCRIPT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local windowed = false
for i = 4, #ARGV, 3 do
  local kind, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'l' then
    redis.call('ZADD', KEYS[3], 'GT', value, field)
  else
    redis.call('HINCRBYFLOAT', KEYS[2], field, value)
    if kind == 'w' then
      redis.call('HINCRBYFLOAT', KEYS[4], field, value)
      windowed = true
    end
  end
end
if windowed then
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return 1
"""

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


@dataclass(frozen=True)
class _Push:
    number: int
    minute: int
    changes: list[bytes]  # flattened (kind, field, value) triples, as PUSH_SCRIPT takes them


class MetricsPusher:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        interval: float,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._keys = keys
        self._interval = interval
        self._registry = registry
        # What was counted before this pusher existed belongs to no namespace it serves.
        self._sent = {field: value for _, _, field, value in _samples(registry)}
        self._receipt = keys.metric_push_receipt(uuid.uuid4().hex)
        self._script = client.register_script(PUSH_SCRIPT)
        self._pushes = 0
        self._unsent: _Push | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def push(self) -> None:
        """Send what changed; raise `StoreUnavailable` (and keep it for later) on failure."""
        with self._lock:
            if self._unsent is not None:
                self._send(self._unsent)
            self._unsent = self._take_changes()
            if self._unsent is not None:
                self._send(self._unsent)

    def _take_changes(self) -> _Push | None:
        """The growth since the last push taken, as the next push; None when nothing grew."""
        changes: list[bytes] = []
        for family, kind, field, value in _samples(self._registry):
            # A series seen for the first time goes whole, zero buckets included.
            if field in self._sent and value == self._sent[field]:
                continue
            if kind == "latest":
                changes += [b"l", field, repr(value).encode()]
            else:
                growth = value - self._sent.get(field, 0.0)
                changes += [b"w" if family in WINDOWED else b"t", field, repr(growth).encode()]
            self._sent[field] = value
        if not changes:
            return None
        self._pushes += 1
        return _Push(self._pushes, int(epoch_seconds() // 60), changes)

    def _send(self, push: _Push) -> None:
        keys = [
            self._receipt,
            self._keys.metric_totals(),
            self._keys.metric_latest(),
            self._keys.metric_minute(push.minute),
        ]
        args: list[bytes | int] = [push.number, RECEIPT_KEPT_SECONDS, MINUTES_KEPT_SECONDS]
        args += push.changes
        with translate_redis_errors():
            self._script(keys=keys, args=args)
        self._unsent = None

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

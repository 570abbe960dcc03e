"""Which workers and schedulers are alive: each instance writes a heartbeat every few seconds
(when, which instance, leader or standby), and `status` reads them back.

Why not Dramatiq's own `__heartbeats__` alone: every broker that sends Redis a command is in
it (each receiver's and the scheduler's job queue, a CLI replay), a worker is written there only
when a consumer fetches or acks (one whose threads are all busy and whose prefetch is full
goes silent), and the maintenance the scheduler runs every tick deletes a dead worker from it,
so it cannot say "last seen 10 minutes ago". A worker's heartbeat carries its broker id, which
is its member there, so status shows Dramatiq's view of each worker beside ours.

Each heartbeat says how long it stays fresh (`fresh_for`, chosen by the writer, who knows its
own pace); an instance stopped cleanly removes its own, and a dead one's is kept a day, so
"none alive, last seen at …" can be told from "none ever seen".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import redis
import structlog

from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.store import Keys, as_bytes, translate_redis_errors

log = structlog.get_logger("halaxy_bridge.liveness")

KEPT = timedelta(days=1)  # a dead instance's last heartbeat is shown this long


class Kind(StrEnum):
    WORKER = "worker"
    SCHEDULER = "scheduler"


class Duty(StrEnum):
    WORKER = "worker"
    LEADER = "leader"  # the scheduler holding the lease: the one that does the work
    STANDBY = "standby"  # a scheduler waiting to take over


@dataclass(frozen=True)
class Heartbeat:
    instance: str  # a worker's Dramatiq broker id; a scheduler's id in its log lines
    role: Duty
    host: str
    pid: int
    started_at: str  # ISO 8601
    seen_at: float  # epoch seconds
    fresh_for: float  # seconds after `seen_at` during which the instance counts as alive
    # A worker's thread count (`--threads`): the pool fair share divides. 0 for a scheduler,
    # and in a heartbeat written by a version that did not report it.
    threads: int = 0

    def alive(self, now: float) -> bool:
        return now - self.seen_at <= self.fresh_for


HEARTBEAT = RecordCodec(Heartbeat)


class Heartbeats:
    """The heartbeats of one kind of instance: a hash of records by instance id, and a sorted
    set of the same ids by time to trim the old ones."""

    def __init__(self, client: redis.Redis, keys: Keys, kind: Kind) -> None:
        self._redis = client
        self._records = keys.heartbeats(kind.value)
        self._times = keys.heartbeat_times(kind.value)

    def beat(self, heartbeat: Heartbeat) -> None:
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._records, heartbeat.instance, HEARTBEAT.encode(heartbeat))
            pipe.zadd(self._times, {heartbeat.instance: heartbeat.seen_at})
            pipe.execute()
            old = self._redis.zrangebyscore(
                self._times, "-inf", heartbeat.seen_at - KEPT.total_seconds(), 0, 100
            )
            if old:
                self._forget(old)

    def stop(self, instance: str) -> None:
        """An instance stopping cleanly is gone, not dead: forget it."""
        with translate_redis_errors():
            self._forget([instance])

    def _forget(self, instances: list[Any]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._records, *instances)
        pipe.zrem(self._times, *instances)
        pipe.execute()

    def read(self, now: float) -> list[Heartbeat]:
        """Every instance seen within `KEPT`, the most recently seen first."""
        with translate_redis_errors():
            raw = self._redis.hvals(self._records)
        beats = [beat for r in raw if (beat := _readable(r)) is not None]
        kept = [b for b in beats if now - b.seen_at <= KEPT.total_seconds()]
        return sorted(kept, key=lambda b: (-b.seen_at, b.instance))


def _readable(raw: bytes | str) -> Heartbeat | None:
    try:
        return HEARTBEAT.decode(as_bytes(raw))
    except UnreadableRecord as exc:
        log.warning("heartbeat.unreadable", detail=str(exc))
        return None


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="seconds")


def liveness(
    kind: Kind, beats: list[Heartbeat], now: float, dramatiq_seen: dict[str, float] | None = None
) -> dict[str, Any]:
    """What status shows of one kind: how many are alive (and, of schedulers, which leads),
    when the last one was seen (None: none seen in the last day), and each instance.

    `dramatiq_seen`: a worker's last heartbeat in Dramatiq's own set, by broker id. Dramatiq
    hands the messages a worker holds to others once that is older than its heartbeat timeout.
    """
    instances = []
    for beat in beats:
        row: dict[str, Any] = {
            "instance": beat.instance,
            "role": beat.role.value,
            "host": beat.host,
            "pid": beat.pid,
            "started_at": beat.started_at,
            "last_seen_at": _iso(beat.seen_at),
            "seen_seconds_ago": round(max(0.0, now - beat.seen_at), 1),
            "alive": beat.alive(now),
            "fresh_for_seconds": beat.fresh_for,
        }
        if dramatiq_seen is not None:
            seen = dramatiq_seen.get(beat.instance)
            row["dramatiq_seen_seconds_ago"] = (
                None if seen is None else round(max(0.0, now - seen), 1)
            )
        instances.append(row)
    alive = [beat for beat in beats if beat.alive(now)]
    found: dict[str, Any] = {
        "alive": len(alive),
        "last_seen_at": _iso(beats[0].seen_at) if beats else None,
        "seen_seconds_ago": round(max(0.0, now - beats[0].seen_at), 1) if beats else None,
    }
    if kind is Kind.SCHEDULER:
        # Two for a moment at most: a leader that stalled past its lease, and the one that
        # took over, until the first writes its next heartbeat (as standby).
        leaders = [beat.instance for beat in alive if beat.role is Duty.LEADER]
        found["leader"] = leaders[0] if leaders else None
    return {**found, "instances": instances}

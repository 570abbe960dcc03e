"""Reconcile and backfill: find the patients webhooks may have missed, queue them as bulk work.

Halaxy documents no webhook retries (halaxy-api.md section 1.6), so a sweep per connection
asks for the patients changed since the last sweep (`_lastUpdated=gt…`, with a little
overlap, following `link[next]`). A connection never swept gets every patient: the backfill.
Queued syncs are idempotent, so overlap and repeats cost a Halaxy read, never a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import orjson
import redis

from shared.halaxy.client import HalaxyClient
from shared.jobs import ActorName, Job, JobQueue, QueueName
from shared.store import Keys, as_bytes, translate_redis_errors

SWEEP_EVERY = timedelta(minutes=5)
OVERLAP = timedelta(minutes=2)  # clocks and Halaxy's indexing are not exact
PAGE_SIZE = "100"
BATCH = 100


class SweepKind(StrEnum):
    BACKFILL = "backfill"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class Sweep:
    connection_id: str
    kind: SweepKind
    started_at: str
    finished_at: str
    patients_queued: int


class SweepLog:
    """The last finished sweep of each connection (what `status` shows)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._key = keys.last_sweep()

    def last(self, connection_id: str) -> Sweep | None:
        with translate_redis_errors():
            raw = self._redis.hget(self._key, connection_id)
        return None if raw is None else Sweep(**orjson.loads(as_bytes(raw)))

    def record(self, sweep: Sweep) -> None:
        with translate_redis_errors():
            self._redis.hset(self._key, sweep.connection_id, orjson.dumps(sweep.__dict__))


def due(last: Sweep | None, now: datetime) -> bool:
    return last is None or now - datetime.fromisoformat(last.started_at) >= SWEEP_EVERY


def sweep(
    halaxy: HalaxyClient,
    queue: JobQueue,
    connection_id: str,
    last: Sweep | None,
    now: datetime,
) -> Sweep:
    """Queue a bulk sync for every patient changed since `last` (all of them without one)."""
    kind = SweepKind.BACKFILL if last is None else SweepKind.RECONCILE
    params = {"_count": PAGE_SIZE}
    if last is not None:
        since = datetime.fromisoformat(last.started_at) - OVERLAP
        params["_lastUpdated"] = "gt" + since.isoformat(timespec="seconds").replace("+00:00", "Z")
    started = now.isoformat(timespec="seconds")
    batch: list[Job] = []
    queued = 0
    for patient in halaxy.search("Patient", params):
        patient_id = str(patient.get("id") or "")
        if not patient_id:
            continue
        batch.append(
            Job(
                actor=ActorName.SYNC_PATIENT,
                queue=QueueName.BULK,
                kwargs={
                    "connection_id": connection_id,
                    "resource_id": patient_id,
                    "event": kind.value,
                    "event_id": f"{kind.value}:{started}:{patient_id}",
                },
            )
        )
        if len(batch) >= BATCH:
            queue.enqueue(batch)
            queued, batch = queued + len(batch), []
    if batch:
        queue.enqueue(batch)
        queued += len(batch)
    finished = datetime.now(now.tzinfo).isoformat(timespec="seconds")
    return Sweep(connection_id, kind, started, finished, queued)

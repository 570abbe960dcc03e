"""What ops see at a glance: queues; which workers and schedulers are alive; and per connection
its last event, last success, recent failures, last sweep, its unfinished messages per queue,
its circuit breakers, what waits for a person (dead letters, parked and failed notes) and the
patients it did not write, with why. Read-only; ids, times and counts, never patient details."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from shared.connections.pause import PausedConnections
from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds
from shared.infra.jobs import QueueName
from shared.infra.redis_health import check_redis
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.outbox import NoteOutbox, NoteState
from shared.notes.unrouted import count_unrouted
from shared.ops.dead_letters import DeadLetter, DeadLetterStore
from shared.ops.liveness import Heartbeats, Kind, liveness
from shared.ops.queued import QueuedMessages
from shared.patients.reconcile import SweepLog
from shared.telemetry.activity import Activity, read_activity, read_patient_outcomes
from shared.telemetry.breaker import circuit_rows


def iso(unix_time: float | None) -> str | None:
    if unix_time is None:
        return None
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="seconds")


def _moment(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def queue_status(
    client: redis.Redis,
    keys: Keys,
    activity: Activity | None = None,
    now: float | None = None,
    letters: list[DeadLetter] | None = None,
) -> list[dict[str, Any]]:
    """Per queue: `depth` ready and not yet taken, `taken` by a worker (running, or waiting in
    its prefetch), `delayed` (retries' backoff, deferrals), `queued` the three together,
    `dead` the bridge's dead letters of that queue (`letters`, read when not given)."""
    activity = Activity() if activity is None else activity
    now = epoch_seconds() if now is None else now
    letters = DeadLetterStore(client, keys).list() if letters is None else letters
    dead = Counter(letter.queue for letter in letters)
    rows = []
    with translate_redis_errors():
        for queue in QueueName:
            name = keys.dramatiq_queue(queue.value)
            oldest_id = client.lindex(name, 0)
            oldest = client.hget(f"{name}.msgs", oldest_id) if oldest_id is not None else None
            age = None
            if oldest is not None:
                message = orjson.loads(as_bytes(oldest))
                # A retried or deferred message keeps its first timestamp; it has waited in
                # this queue only since its `eta`.
                since_ms = max(
                    message.get("message_timestamp", 0),
                    message.get("options", {}).get("eta", 0),
                )
                age = max(0.0, round(now - since_ms / 1000, 1))
            depth = int(client.llen(name))
            # Every message not acked is in the hash; those not in the list are taken.
            taken = max(0, int(client.hlen(f"{name}.msgs")) - depth)
            delayed = int(client.hlen(f"{name}.DQ.msgs"))
            rows.append(
                {
                    "queue": queue.value,
                    "depth": depth,
                    "taken": taken,
                    "delayed": delayed,
                    "queued": depth + taken + delayed,
                    "dead": dead[queue.value],
                    "oldest_age_seconds": age,
                    "throughput_per_minute": activity.throughput_per_minute(queue.value),
                }
            )
    return rows


def workers_status(client: redis.Redis, keys: Keys, now: float) -> dict[str, Any]:
    """The workers' heartbeats, with Dramatiq's own last heartbeat of each beside it."""
    beats = Heartbeats(client, keys, Kind.WORKER).read(now)
    with translate_redis_errors():
        scores = (
            client.zmscore(keys.dramatiq_heartbeats(), [b.instance for b in beats]) if beats else []
        )
    # Dramatiq writes its heartbeats in milliseconds.
    seen = {b.instance: s / 1000 for b, s in zip(beats, scores, strict=True) if s is not None}
    return liveness(Kind.WORKER, beats, now, seen)


def not_synced_rows(connections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per connection and outcome (a refusal per reason) that counted anything."""
    rows = []
    for row in connections:
        for outcome, count in row["patients_not_synced"].items():
            if count and outcome != "refused":
                rows.append({"id": row["id"], "outcome": outcome, "reason": "", "count": count})
        for reason, count in row["patients_refused"].items():
            rows.append({"id": row["id"], "outcome": "refused", "reason": reason, "count": count})
    return rows


def status(
    client: redis.Redis,
    keys: Keys,
    connections: ConnectionStore,
    outbox: NoteOutbox,
    now: float | None = None,
    recent: bool = True,
) -> dict[str, Any]:
    """`recent`: include the last hour's failures and throughput (more of Redis to read)."""
    now = epoch_seconds() if now is None else now
    activity = read_activity(client, keys, now, recent)
    sweeps = SweepLog(client, keys)
    patients = read_patient_outcomes(client, keys)
    # The one count of dead letters everywhere: the bridge's own (`DeadLetterStore`, 30 days,
    # what `dead-letters list|replay|purge` act on), never Dramatiq's `.XQ` copies.
    letters = DeadLetterStore(client, keys).list()
    dead = Counter(letter.connection_id for letter in letters)
    parked = outbox.per_connection(NoteState.PARKED)
    failed = outbox.per_connection(NoteState.FAILED)
    listed = connections.list()
    queued = QueuedMessages(client, keys).read([c.id for c in listed], now)
    holding = PausedConnections(client, keys).holding(c.id for c in listed)
    circuits = circuit_rows(client, keys, [c.id for c in listed], datetime.fromtimestamp(now, UTC))
    rows = []
    for connection in listed:
        last = sweeps.last(connection.id)
        held = holding[connection.id]
        rows.append(
            {
                "id": connection.id,
                "name": connection.name,
                "enabled": connection.enabled,
                "created_at": connection.created_at.isoformat(timespec="seconds"),
                "last_event_at": iso(activity.last_event.get(connection.id)),
                "last_success_at": iso(activity.last_success.get(connection.id)),
                "failures_last_hour": activity.failures_last_hour[connection.id],
                "processed_last_hour": activity.processed_last_hour[connection.id],
                "last_sweep": None if last is None else last.started_at,
                "last_sweep_kind": None if last is None else last.kind.value,
                "dead_letters": dead[connection.id],
                "parked_notes": parked[connection.id],
                "failed_notes": failed[connection.id],
                # Patients not written: skipped or left by their standing, or refused (by
                # reason code), since the namespace began.
                "patients_not_synced": patients.not_synced(connection.id),
                "patients_refused": patients.refused(connection.id),
                # Its unfinished messages per queue: how many, how many delayed, and how long
                # the oldest one due has waited.
                "queues": {
                    queue: count.shown(now) for queue, count in queued[connection.id].items()
                },
                # Paused: webhooks are taken and kept, nothing is processed; `held_messages`
                # are what workers set aside meanwhile (released in order by a resume).
                "paused": held.is_paused,
                "paused_at": _moment(None if held.paused is None else held.paused.paused_at),
                "held_messages": held.held,
                "oldest_held_at": _moment(held.oldest_held_at),
                # Its circuit breaker per upstream (halaxy, platform): closed, open (its
                # messages wait until `retry_at`) or half_open (the next message probes).
                "circuits": circuits[connection.id],
            }
        )
    listed_ids = {c.id for c in listed}
    return {
        "generated_at": iso(now),
        "queues": queue_status(client, keys, activity, now, letters),
        "connections": rows,
        "dead_letters": len(letters),
        # Of those, the ones no listed connection owns (a connection removed since).
        "dead_letters_unlisted": sum(n for c, n in dead.items() if c not in listed_ids),
        "parked_notes": sum(parked.values()),
        "failed_notes": sum(failed.values()),
        # Physitrack program posts no enabled connection knows the token of, kept for ops.
        "unrouted_programs": count_unrouted(client, keys),
        "workers": workers_status(client, keys, now),
        "scheduler": liveness(
            Kind.SCHEDULER, Heartbeats(client, keys, Kind.SCHEDULER).read(now), now
        ),
        "redis_warnings": check_redis(client),
    }

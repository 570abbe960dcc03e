"""What ops see at a glance: queues, and per connection its last event, last success, recent
failures, last sweep, what waits for a person (dead letters, parked and failed notes) and the
patients it did not write, with why. Read-only; ids, times and counts, never patient details."""

from __future__ import annotations

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
from shared.ops.dead_letters import DeadLetterStore
from shared.patients.reconcile import SweepLog
from shared.telemetry.activity import Activity, read_activity, read_patient_outcomes


def iso(unix_time: float | None) -> str | None:
    if unix_time is None:
        return None
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="seconds")


def _moment(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def queue_status(
    client: redis.Redis, keys: Keys, activity: Activity | None = None, now: float | None = None
) -> list[dict[str, Any]]:
    activity = Activity() if activity is None else activity
    now = epoch_seconds() if now is None else now
    namespace = keys.dramatiq_namespace()
    rows = []
    with translate_redis_errors():
        for queue in QueueName:
            name = f"{namespace}:{queue.value}"
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
            rows.append(
                {
                    "queue": queue.value,
                    "depth": int(client.llen(name)),
                    "delayed": int(client.hlen(f"{name}.DQ.msgs")),
                    "dead": int(client.zcard(f"{name}.XQ")),
                    "oldest_age_seconds": age,
                    "throughput_per_minute": activity.throughput_per_minute(queue.value),
                }
            )
    return rows


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
    letters = DeadLetterStore(client, keys).list()
    parked = outbox.per_connection(NoteState.PARKED)
    failed = outbox.per_connection(NoteState.FAILED)
    stored = connections.list()
    holding = PausedConnections(client, keys).holding(c.id for c in stored)
    rows = []
    for connection in stored:
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
                "dead_letters": sum(1 for x in letters if x.connection_id == connection.id),
                "parked_notes": parked[connection.id],
                "failed_notes": failed[connection.id],
                # Why patients were not written: skipped or left by their standing, or
                # refused (by reason code), since the namespace began.
                "patients_not_synced": patients.not_synced(connection.id),
                "patients_refused": patients.refused(connection.id),
                # Paused: webhooks are taken and kept, nothing is processed; `held_messages`
                # are what workers set aside meanwhile (released in order by a resume).
                "paused": held.is_paused,
                "paused_at": _moment(None if held.paused is None else held.paused.paused_at),
                "held_messages": held.held,
                "oldest_held_at": _moment(held.oldest_held_at),
            }
        )
    return {
        "generated_at": iso(now),
        "queues": queue_status(client, keys, activity, now),
        "connections": rows,
        "dead_letters": len(letters),
        "parked_notes": sum(parked.values()),
        "failed_notes": sum(failed.values()),
        # Physitrack program posts no enabled connection knows the token of, kept for ops.
        "unrouted_programs": count_unrouted(client, keys),
        "redis_warnings": check_redis(client),
    }

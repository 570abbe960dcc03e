"""Offboarding a clinic: erase everything the bridge holds for one connection, and leave one
audit record of the erasure.

The steps, in order:
1. stop: the connection is disabled (its webhooks are answered 404, as an unknown id's) and
   paused (a worker holds its messages rather than running them), in one checked write;
2. the erasers (`Erasure`), each one kind of record: its queued and dead Dramatiq messages, its
   dead letters, notes and their indexes, patient links, seen-event marks, program claims and
   poll cursors, its per-event delivery log (and the unrouted log's records of the posts kept
   for its tokens), kept Physitrack posts of its tokens, sweep records, the cached Halaxy token
   and request budget of its key (unless another connection uses that key), its held messages
   and pause, whatever `extra` erasers are given (`offboard(extra=...)`), the connection record
   with its secrets and index entry, and last its metric series;
3. one audit entry, `connection.offboarded`, naming what was erased and how much.

The audit trail is never rewritten: the entries made while the clinic was connected (ids and
actions only, never patient details) stay for the trail's retention; they are the record of
what the bridge did with the clinic's data. Every eraser can run twice; an offboarding cut
short (Redis went away) leaves the connection stored and disabled, and running it again
finishes it. A job of the clinic that a worker was running at that moment ends as `dropped`;
a count it pushes after the erasure is erased by the scheduler within ten minutes
(`forget_series_of_gone_connections`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import redis
from cryptography.fernet import MultiFernet
from pydantic import BaseModel, ConfigDict, Field

from shared.connections.model import Connection
from shared.connections.pause import PausedConnections
from shared.connections.store import ConnectionStore
from shared.halaxy.key_records import key_records
from shared.infra.audit import AuditTrail
from shared.infra.errors import InvalidInput
from shared.infra.jobs import QueueName
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.infra.validation import validated
from shared.notes.unrouted import UnroutedPrograms
from shared.ops.fair_share import ThreadLeases
from shared.ops.queued import QueuedMessages
from shared.telemetry.breaker import erase_circuits
from shared.telemetry.event_log import UNROUTED, EventLog
from shared.telemetry.forget import forget_connection_series

SCAN_COUNT = 1000
DELETE_BATCH = 500
OFFBOARDING = "offboarding"  # who paused the connection, in its pause record


class Eraser(Protocol):
    """Erases one kind of record of the connection; how many it erased (None: not counted).
    Must be safe to run again, and after the connection record is gone from Redis (it is
    given the connection as read before the erasure)."""

    def __call__(self, connection: Connection, /) -> int | None: ...


@dataclass(frozen=True)
class Erasure:
    what: str  # as the report and the audit entry name it
    erase: Eraser


@dataclass(frozen=True)
class Offboarded:
    connection_id: str
    erased: dict[str, int | None]  # what -> how many records

    def shown(self) -> dict[str, Any]:
        return {"id": self.connection_id, "offboarded": True, "erased": self.erased}


class OffboardRequest(BaseModel):
    """The admin API's confirmation: the id of the connection to erase, typed again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confirm: str = Field(description="the id of the connection to offboard, as in the path")


def confirmed(data: dict[str, Any], connection_id: str) -> OffboardRequest:
    """The request, if it confirms this connection; else `InvalidInput` (nothing erased)."""
    request = validated(OffboardRequest, data, "the offboarding request is invalid")
    if request.confirm != connection_id:
        raise InvalidInput(
            "confirm: must be the id of the connection to offboard (nothing was erased)"
        )
    return request


def offboard(
    store: ConnectionStore,
    connection: Connection,
    erasures: Sequence[Erasure],
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Offboarded:
    """Stop the connection, run each eraser in order, then record the erasure once. Raises
    `ConnectionChangedMeanwhile` (nothing erased) if the connection changed since it was read."""
    stopped = connection.model_copy(update={"enabled": False, "updated_at": now})
    if connection.enabled:
        store.replace(connection, stopped)
    else:
        stopped = connection
    PausedConnections(store.redis, store.keys).pause(connection.id, OFFBOARDING, now)
    erased = {erasure.what: erasure.erase(stopped) for erasure in erasures}
    audit.record(
        actor=by,
        action="connection.offboarded",
        connection_id=connection.id,
        resource_ids=" ".join(f"{what}={count}" for what, count in erased.items()),
    )
    return Offboarded(connection_id=connection.id, erased=erased)


def standard_erasures(
    store: ConnectionStore, fernet: MultiFernet, extra: Sequence[Erasure] = ()
) -> list[Erasure]:
    """Every eraser of the bridge, in the order they run; `extra` (another part's records,
    such as a per-event delivery log) run after the bridge's own and before the connection
    record itself goes."""
    client, keys = store.redis, store.keys
    return [
        Erasure("queued_messages", lambda c: erase_queued_messages(client, keys, c.id)),
        Erasure("dead_letters", lambda c: erase_dead_letters(client, keys, c.id)),
        Erasure("notes", lambda c: erase_notes(client, keys, c.id)),
        Erasure("patient_links", lambda c: erase_patient_links(client, keys, c.id)),
        Erasure("seen_events", lambda c: _unlink_matching(client, keys.seen_event(c.id, "*"))),
        Erasure("program_claims", lambda c: erase_program_claims(client, keys, c.id)),
        # Before the kept posts go: their records in the unrouted log are found by their ids.
        Erasure("event_log", lambda c: erase_event_log(client, keys, fernet, c)),
        Erasure("unrouted_programs", lambda c: erase_unrouted(client, keys, fernet, c)),
        Erasure("sweeps", lambda c: erase_sweeps(client, keys, c.id)),
        Erasure("halaxy_key_cache", lambda c: erase_halaxy_key_cache(store, c)),
        Erasure("queued_counts", lambda c: QueuedMessages(client, keys).forget(c.id)),
        Erasure("circuits", lambda c: erase_circuits(client, keys, c.id)),
        Erasure("thread_leases", lambda c: ThreadLeases(client, keys).forget(c.id)),
        Erasure("storm_counts", lambda c: _unlink_matching(client, keys.storm_count(c.id, "*"))),
        *extra,
        Erasure("connection", lambda c: _delete_connection(store, c)),
        # The pause goes last: until the record is gone, a message a worker takes is held
        # (and erased here), never run; after it, one finds no connection and is dropped.
        Erasure("held_messages", lambda c: PausedConnections(client, keys).forget(c.id)),
        Erasure("metric_series", lambda c: forget_connection_series(client, keys, c.id)),
    ]


# A job of the clinic's that was running when it was offboarded may still write after the
# erasers ran (a patient link, a note's state, a claim, its event's attempt): none runs longer
# than the longest job time limit (10 minutes). The scheduler erases, once that has passed,
# whatever of an offboarded connection (found by its `connection.offboarded` audit entry)
# came back.
LEFTOVERS_AFTER = timedelta(minutes=15)
LEFTOVERS_LOOKBACK = timedelta(days=1)


def erase_leftovers(client: redis.Redis, keys: Keys, connection_id: str) -> dict[str, int]:
    """Erase again what a job still running at the offboarding may have written since, by the
    connection's id alone (its record is gone); what was found, by kind."""
    found = {
        "dead_letters": erase_dead_letters(client, keys, connection_id),
        "notes": erase_notes(client, keys, connection_id),
        "patient_links": erase_patient_links(client, keys, connection_id),
        "seen_events": _unlink_matching(client, keys.seen_event(connection_id, "*")),
        "program_claims": erase_program_claims(client, keys, connection_id),
        "event_log": EventLog(client, keys).erase_connection(connection_id),
        "queued_counts": QueuedMessages(client, keys).forget(connection_id),
        "circuits": erase_circuits(client, keys, connection_id),
        "thread_leases": ThreadLeases(client, keys).forget(connection_id),
        "held_messages": PausedConnections(client, keys).forget(connection_id),
        "metric_series": forget_connection_series(client, keys, connection_id),
    }
    return {what: count for what, count in found.items() if count}


def offboarded_lately(audit: AuditTrail, now: datetime) -> list[str]:
    """The connections offboarded between a day and a quarter of an hour ago."""
    entries = audit.entries(action="connection.offboarded", since=now - LEFTOVERS_LOOKBACK)
    settled = now - LEFTOVERS_AFTER
    return sorted({e.connection_id for e in entries if datetime.fromisoformat(e.at) <= settled})


def erase_queued_messages(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """The connection's messages waiting on a Dramatiq queue, delayed (a retry's wait) or dead
    (Dramatiq's dead-letter queue). A message a worker holds at that moment is run, and finds
    the connection disabled (or gone): it ends as `dropped`."""
    erased = 0
    for queue in QueueName:
        for name, kind in (
            (queue.value, "list"),
            (f"{queue.value}.DQ", "list"),
            (f"{queue.value}.XQ", "zset"),
        ):
            ids_key, messages_key = keys.dramatiq_queue(name), keys.dramatiq_messages(name)
            items = _hash_items(client, messages_key)
            doomed = [i for i, body in items if _names(body, connection_id)]
            for batch in _batches(doomed):
                with translate_redis_errors():
                    pipe = client.pipeline(transaction=True)
                    pipe.hdel(messages_key, *batch)
                    for message_id in batch:
                        if kind == "list":
                            pipe.lrem(ids_key, 0, message_id.decode())
                        else:
                            pipe.zrem(ids_key, message_id)
                    erased += int(pipe.execute()[0])
    return erased


def erase_dead_letters(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """The bridge's dead-letter records (bodies and time index); read as raw JSON, so a record
    another version wrote is erased too."""
    doomed = [
        i
        for i, body in _hash_items(client, keys.dead_letters())
        if _json_field(body, "connection_id") == connection_id
    ]
    for batch in _batches(doomed):
        with translate_redis_errors():
            pipe = client.pipeline(transaction=True)
            pipe.hdel(keys.dead_letters(), *batch)
            pipe.zrem(keys.dead_letter_times(), *batch)
            pipe.execute()
    return len(doomed)


def erase_notes(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """Note records (their sealed callbacks with them), their entries in the parked, failed,
    unsettled and link-expiry indexes, and their locks."""
    erased = _unlink_matching(client, keys.note(connection_id, "*"))
    for index in (
        keys.parked_notes(),
        keys.failed_notes(),
        keys.unsettled_notes(),
        keys.waiting_note_links(),
    ):
        with translate_redis_errors():
            members = [
                as_bytes(m)
                for m, _ in client.zscan_iter(
                    index, match=_glob_literal(connection_id) + "/*", count=SCAN_COUNT
                )
            ]
        for batch in _batches(members):
            with translate_redis_errors():
                client.zrem(index, *batch)
    _unlink_matching(client, keys.note_lock(connection_id, "*"))
    return erased


def erase_patient_links(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """Which platform client each Halaxy patient became, and the per-patient locks."""
    with translate_redis_errors():
        pipe = client.pipeline(transaction=True)
        pipe.hlen(keys.patient_links(connection_id))
        pipe.delete(keys.patient_links(connection_id))
        links, _ = pipe.execute()
    _unlink_matching(client, keys.patient_lock(connection_id, "*"))
    return int(links)


def erase_program_claims(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """The programs' claimed moments (one note per program) and the events-poll cursors."""
    erased = _unlink_matching(client, keys.program_moments(connection_id, "*"))
    with translate_redis_errors():
        erased += int(client.delete(keys.program_poll_cursors(connection_id)))
    return erased


def erase_unrouted(
    client: redis.Redis, keys: Keys, fernet: MultiFernet, connection: Connection
) -> int:
    """Physitrack posts kept unrouted that name one of the connection's practitioner tokens."""
    unrouted = UnroutedPrograms(client, keys, fernet)
    kept = unrouted.of_tokens(connection.tokens())
    for program in kept:
        unrouted.remove(program)
    return len(kept)


def erase_event_log(
    client: redis.Redis, keys: Keys, fernet: MultiFernet, connection: Connection
) -> int:
    """The connection's per-event delivery log (every record, attempt and index entry), and
    the unrouted log's records of the posts kept for its practitioners' tokens."""
    events = EventLog(client, keys)
    kept = UnroutedPrograms(client, keys, fernet).of_tokens(connection.tokens())
    erased = events.erase_connection(connection.id)
    return erased + events.erase_events(UNROUTED, [program.id for program in kept])


def erase_sweeps(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    with translate_redis_errors():
        pipe = client.pipeline(transaction=True)
        pipe.hdel(keys.last_sweep(), connection_id)
        pipe.hdel(keys.sweep_progress(), connection_id)
        return sum(int(n) for n in pipe.execute())


def erase_halaxy_key_cache(store: ConnectionStore, connection: Connection) -> int:
    """The cached access token and the request budget of the connection's Halaxy key; kept
    while another stored connection uses the same key (they are that key's, not the clinic's:
    erasing a budget in use would let the key exceed Halaxy's limit)."""
    mine = (connection.halaxy_base_url, connection.halaxy_client_id)
    if any(
        (other.halaxy_base_url, other.halaxy_client_id) == mine
        for other in store.list()
        if other.id != connection.id
    ):
        return 0
    records = key_records(store.keys, *mine)
    with translate_redis_errors():
        return int(store.redis.delete(*records))


def _delete_connection(store: ConnectionStore, connection: Connection) -> int:
    if store.get(connection.id) is None:
        return 0  # an offboarding run again after this step
    store.delete(connection)
    return 1


def _hash_items(client: redis.Redis, key: str) -> Iterator[tuple[bytes, bytes]]:
    with translate_redis_errors():
        for field, value in client.hscan_iter(key, count=SCAN_COUNT):
            yield as_bytes(field), as_bytes(value)


def _names(message: bytes, connection_id: str) -> bool:
    """A Dramatiq message (JSON) whose job is the connection's."""
    kwargs = _json_field(message, "kwargs")
    return isinstance(kwargs, dict) and kwargs.get("connection_id") == connection_id


def _json_field(raw: bytes, name: str) -> Any:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data.get(name) if isinstance(data, dict) else None


def _unlink_matching(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching `pattern`, whose only wildcard is a final `*` (the rest is
    matched literally); how many."""
    literal = _glob_literal(pattern.removesuffix("*")) + "*"
    erased = 0
    with translate_redis_errors():
        found = [as_bytes(k) for k in client.scan_iter(match=literal, count=SCAN_COUNT)]
        for batch in _batches(found):
            erased += int(client.unlink(*batch))
    return erased


def _glob_literal(text: str) -> str:
    """`text` as a Redis glob pattern that matches only itself."""
    return "".join(f"\\{c}" if c in "[]*?\\" else c for c in text)


def _batches(items: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(items), DELETE_BATCH):
        yield items[start : start + DELETE_BATCH]

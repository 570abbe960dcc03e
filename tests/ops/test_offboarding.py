"""Offboarding a clinic erases everything the bridge holds for it (issue 20, item 3).

The clinic is populated through the real pipeline (webhooks through the receiver, a worker
syncing patients, program notes posted and parked, a dead letter, a sweep and an events poll
by the scheduler, a Physitrack post kept unrouted, a message held while paused, one waiting
out a delay, the counts pushed), then offboarded; then every key of the namespace is read, of
every type, and nothing may name the clinic but the audit trail: its entries from before are
kept as they were (the trail is never rewritten), and one more records the erasure. Another
clinic's data is left exactly as it was.
"""

from __future__ import annotations

import math
import secrets
from datetime import timedelta
from typing import Any

import dramatiq
import orjson
import pytest
import redis
import time_machine

from services.sandbox.halaxy import patient_resource
from services.sandbox.physitrack import program_callback
from services.scheduler.loop import Scheduler
from services.workers.job_metrics import PushMetrics
from services.workers.messaging import DramatiqJobQueue, dramatiq_message
from services.workers.runtime import WorkerRuntime
from shared.connections import PausedConnections, lifecycle, onboarding, roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.halaxy import key_records
from shared.infra.audit import AuditEntry
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import ConnectionNotFound
from shared.infra.jobs import ActorName, Job, QueueName
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox, NoteState
from shared.notes.unrouted import UnroutedPrograms
from shared.ops import Erasure, offboard, standard_erasures
from shared.ops.dead_letters import DeadLetterStore
from shared.telemetry import Admission, BreakerPolicy, CircuitBreakers, EventLog
from tests.helpers import audit_of, wait_until
from tests.notes.test_write_back import body, publish
from tests.workers import PHYSITRACK_WEBHOOK_KEY, Pipeline, Sandbox, sandbox_connection


def every_value(client: redis.Redis, namespace: str) -> dict[bytes, list[bytes]]:
    """Every key of the namespace and of its Dramatiq namespace, with every part of its value
    (the fields and values of a hash, the members of a set or sorted set, the ids, fields and
    values of a stream's entries)."""
    found: dict[bytes, list[bytes]] = {}
    for pattern in (f"{namespace}:*", f"{namespace}-dramatiq:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            parts: list[Any]
            if kind == b"string":
                parts = [client.get(key)]
            elif kind == b"hash":
                parts = [part for item in client.hgetall(key).items() for part in item]
            elif kind == b"list":
                parts = list(client.lrange(key, 0, -1))
            elif kind == b"set":
                parts = list(client.smembers(key))
            elif kind == b"zset":
                parts = list(client.zrange(key, 0, -1))
            elif kind == b"stream":
                parts = [
                    part
                    for entry_id, fields in client.xrange(key)
                    for part in (entry_id, *(p for item in fields.items() for p in item))
                ]
            elif kind == b"none":  # gone between the scan and the read
                continue
            else:
                raise AssertionError(f"a key of a type this test does not read: {kind!r}")
            found[bytes(key)] = [bytes(p) for p in parts if p is not None]
    return found


def naming(values: dict[bytes, list[bytes]], connection_id: str) -> dict[bytes, list[bytes]]:
    """The keys whose name or value names the connection, with the parts that do (sorted: a
    hash's fields come back in another order once others were deleted from it)."""
    needle = connection_id.encode()
    return {
        key: sorted(p for p in parts if needle in p)
        for key, parts in values.items()
        if needle in key or any(needle in p for p in parts)
    }


def audit_naming(pipeline: Pipeline, connection_id: str) -> list[AuditEntry]:
    return [e for e in audit_of(pipeline.store).entries(limit=100_000) if connection_id in repr(e)]


def push_counts(pipeline: Pipeline) -> None:
    """What the receiver and the worker counted, pushed now (as their pushers do every few
    seconds), so the series are in Redis before the erasure and nothing is left to push."""
    pipeline.receiver.app.state.deps.metrics.push()
    for middleware in pipeline.broker.middleware:
        if isinstance(middleware, PushMetrics):
            middleware._pusher.push()


@pytest.fixture
def populated(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> tuple[Connection, Connection, str]:
    """The clinic to offboard and another clinic, each with everything the bridge keeps; and
    the clinic's mapped practitioner token."""
    for patient_id in ("1001", "3001", "3002"):
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
    mapped = "pt-tok-" + secrets.token_hex(8)
    clinic = sandbox_connection(
        pipeline.store, sandbox, verify_key, practitioners={mapped: "PR-2002"}
    )
    other = sandbox_connection(pipeline.store, sandbox, verify_key)
    practitioner = roster.parse_practitioner(
        {
            "token": "pt-tok-" + secrets.token_hex(8),
            "halaxy_practitioner": "PR-3003",
            "api_key": sandbox.physitrack.add_key(),
            "verify": False,
        }
    )
    clinic = roster.add_practitioner(
        pipeline.store,
        lambda _: None,
        clinic,
        practitioner,
        utcnow(),
        audit_of(pipeline.store),
        "t",
    )

    for conn in (clinic, other):
        pipeline.send(conn, "patient-created", "Patient", ["1001"])  # a patient synced
        pipeline.send(conn, "patient-updated", "Patient", ["4040"])  # Halaxy has none: dead
        pipeline.callback(
            conn, body(conn, publish(sandbox), token=mapped if conn is clinic else "x")
        )
    pipeline.drain()
    sandbox.halaxy.note_faults = ["500_after_store"]  # the next note ends ambiguously: parked
    parked = pipeline.callback(clinic, body(clinic, publish(sandbox), name="Hip Program"))
    pipeline.drain()
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, base_settings.fernet)
    [parked_id] = parked.json()["accepted"]
    parked_note = outbox.get(clinic.id, parked_id)
    assert parked_note is not None
    assert parked_note.state is NoteState.PARKED

    pipeline.redis.delete(pipeline.keys.scheduler_leader())  # an earlier test's scheduler
    runtime = WorkerRuntime(base_settings)
    scheduler = Scheduler(base_settings, runtime)
    scheduler.tick()  # a backfill sweep of each clinic, an events poll of the practitioner
    scheduler.resign()
    runtime.close()
    pipeline.drain()

    # A Physitrack post for the clinic's token while it was disabled: kept, unrouted.
    disabled = onboarding.disable_connection(
        pipeline.store,
        pipeline.store.get(clinic.id) or clinic,
        utcnow(),
        audit_of(pipeline.store),
        "t",
    )
    kept = pipeline.receiver.post(
        "/webhooks/physitrack/programs",
        content=orjson.dumps(
            program_callback(
                api_key=PHYSITRACK_WEBHOOK_KEY,
                file_url=publish(sandbox),
                patient_id="1001",
                token=mapped,
            )
        ),
        headers={"Content-Type": "application/json"},
    )
    assert kept.status_code == 200, kept.text
    clinic = lifecycle.enable_connection(
        pipeline.store, disabled, utcnow(), audit_of(pipeline.store), "t"
    )

    # Paused: a webhook taken and held. And a job waiting out a retry's delay.
    pauses = PausedConnections(pipeline.redis, pipeline.keys)
    pauses.pause(clinic.id, "t", utcnow())
    pipeline.send(clinic, "patient-updated", "Patient", ["3001"])
    pipeline.drain()
    for conn in (clinic, other):
        job = Job(
            ActorName.SYNC_PATIENT,
            QueueName.LIVE,
            {
                "connection_id": conn.id,
                "resource_id": "3002",
                "event": "patient-updated",
                "event_id": "e",
            },
        )
        pipeline.broker.enqueue(dramatiq_message(job), delay=600_000)
    # Its platform's circuit breaker, opened (a record, and a transition counted).
    breakers = CircuitBreakers(
        pipeline.redis, pipeline.keys, BreakerPolicy(1, timedelta(seconds=60))
    )
    breakers.record(clinic.id, {"platform": True}, Admission(), "t", utcnow())
    push_counts(pipeline)
    return clinic, other, mapped


def test_offboarding_leaves_nothing_naming_the_clinic_but_the_audit_trail(
    pipeline: Pipeline,
    populated: tuple[Connection, Connection, str],
    base_settings: Settings,
) -> None:
    clinic, other, mapped = populated
    keys = pipeline.keys
    namespace = base_settings.redis_namespace
    before = every_value(pipeline.redis, namespace)
    held = naming(before, clinic.id)
    # What the clinic had, by where it was kept (the test is not vacuous).
    for expected in (
        keys.connection(clinic.id),
        keys.patient_links(clinic.id),
        keys.held_messages(clinic.id),
        keys.program_poll_cursors(clinic.id),
        keys.dead_letters(),
        keys.parked_notes(),
        keys.last_sweep(),
        keys.metric_totals(),
        keys.metric_latest(),
        keys.paused_connections(),
        keys.dramatiq_messages("live.XQ"),
        keys.dramatiq_messages("live.DQ"),
        keys.audit(),
        keys.event_log_index(clinic.id),
        keys.event_log_connections(),
        keys.circuits(clinic.id),
    ):
        assert expected.encode() in held, expected
    assert any(k.startswith(keys.seen_event(clinic.id, "").encode()) for k in held)
    assert any(k.startswith(keys.note(clinic.id, "").encode()) for k in held)
    assert any(k.startswith(keys.program_moments(clinic.id, "").encode()) for k in held)
    unrouted = UnroutedPrograms(pipeline.redis, keys, base_settings.fernet)
    [kept] = unrouted.of_tokens([mapped])
    assert [v.record.event_id for v in EventLog(pipeline.redis, keys).get(kept.id)] == [kept.id]
    cache = key_records(keys, clinic.halaxy_base_url, clinic.halaxy_client_id)
    assert pipeline.redis.exists(cache[0]) == 1  # the cached token of the clinic's key
    trail_before = audit_naming(pipeline, clinic.id)
    assert {
        "connection.added",
        "connection.disabled",
        "connection.enabled",
        "platform.patient_created",
        "halaxy.note_posted",
    } <= {e.action for e in trail_before}
    other_before = naming(before, other.id)

    done = offboard(
        pipeline.store,
        pipeline.store.get(clinic.id) or clinic,
        standard_erasures(pipeline.store, base_settings.fernet),
        utcnow(),
        audit_of(pipeline.store),
        "ops-person",
    )

    after = every_value(pipeline.redis, namespace)
    assert list(naming(after, clinic.id)) == [keys.audit().encode()]
    trail_after = audit_naming(pipeline, clinic.id)
    assert trail_after[: len(trail_before)] == trail_before  # never rewritten
    [erasure] = trail_after[len(trail_before) :]
    assert (erasure.action, erasure.actor, erasure.connection_id) == (
        "connection.offboarded",
        "ops-person",
        clinic.id,
    )
    assert "patient_links=" in erasure.resource_ids
    assert done.erased["connection"] == 1
    assert done.erased["dead_letters"] == 1
    assert done.erased["held_messages"] == 1
    assert done.erased["unrouted_programs"] == 1
    assert done.erased["event_log"] > 0
    assert done.erased["circuits"] == 1
    assert EventLog(pipeline.redis, keys).get(kept.id) == []  # its unrouted log record too
    assert unrouted.of_tokens([mapped]) == []
    assert all(pipeline.redis.exists(k) == 0 for k in cache)
    assert pipeline.store.get(clinic.id) is None
    assert clinic.id not in {c.id for c in pipeline.store.list()}

    # The other clinic: every key and value that named it, as it was.
    assert naming(after, other.id) == other_before
    assert [d.resource_id for d in DeadLetterStore(pipeline.redis, keys).list(other.id)] == ["4040"]


def test_the_other_clinic_keeps_working_after_an_offboarding(
    pipeline: Pipeline,
    sandbox: Sandbox,
    populated: tuple[Connection, Connection, str],
    base_settings: Settings,
) -> None:
    clinic, other, _ = populated
    offboard(
        pipeline.store,
        pipeline.store.get(clinic.id) or clinic,
        standard_erasures(pipeline.store, base_settings.fernet),
        utcnow(),
        audit_of(pipeline.store),
        "ops-person",
    )
    sandbox.halaxy.patients["3003"] = patient_resource("3003")

    gone = pipeline.receiver.post(
        f"/webhooks/halaxy/{clinic.id}/patient-created",
        content=b"{}",
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )
    pipeline.send(other, "patient-created", "Patient", ["3003"])

    assert gone.status_code == 404
    # Not `drain`: the other clinic's delayed message waits ten minutes, as it should.
    wait_until(lambda: sandbox.physitrack.by_external_id("3003"), 30, "the other clinic's sync")


def test_offboarding_runs_every_eraser_given_in_order_with_the_connection(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    """Another part's records (the per-event delivery log) join as one more `Erasure`."""
    clinic = sandbox_connection(pipeline.store, sandbox, verify_key)
    seen: list[tuple[str, str, bool]] = []

    def delivery_log(connection: Connection) -> int:
        seen.append((connection.id, "delivery_log", connection.enabled))
        return 7

    erasures = standard_erasures(
        pipeline.store, base_settings.fernet, extra=[Erasure("delivery_log", delivery_log)]
    )
    done = offboard(pipeline.store, clinic, erasures, utcnow(), audit_of(pipeline.store), "ops")

    assert seen == [(clinic.id, "delivery_log", False)]  # stopped before any eraser runs
    assert list(done.erased) == [e.what for e in erasures]
    assert list(done.erased).index("delivery_log") < list(done.erased).index("connection")
    assert done.erased["delivery_log"] == 7
    [entry] = [
        e
        for e in audit_of(pipeline.store).entries(connection_id=clinic.id)
        if "offboard" in e.action
    ]
    assert "delivery_log=7" in entry.resource_ids


def test_an_offboarding_cut_short_is_finished_by_running_it_again(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    clinic = sandbox_connection(pipeline.store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    pipeline.send(clinic, "patient-created", "Patient", ["1001"])
    pipeline.drain()

    def redis_goes_away(connection: Connection) -> int:
        raise ConnectionNotFound("stands for any failure part-way")

    erasures = standard_erasures(pipeline.store, base_settings.fernet)
    with pytest.raises(ConnectionNotFound):
        offboard(
            pipeline.store,
            clinic,
            [erasures[0], Erasure("boom", redis_goes_away), *erasures[1:]],
            utcnow(),
            audit_of(pipeline.store),
            "ops",
        )
    stopped = pipeline.store.get(clinic.id)
    assert stopped is not None
    assert not stopped.enabled  # stopped: its webhooks are refused meanwhile

    offboard(pipeline.store, stopped, erasures, utcnow(), audit_of(pipeline.store), "ops")

    assert list(naming(every_value(pipeline.redis, base_settings.redis_namespace), clinic.id)) == [
        pipeline.keys.audit().encode()
    ]


def test_queued_messages_of_the_clinic_are_erased_and_the_others_kept(
    redis_server_client: redis.Redis, keys: Keys, settings: Settings
) -> None:
    from shared.ops.offboarding import erase_queued_messages

    def put(queue: str, connection_id: str) -> str:
        message = dramatiq.Message(
            queue_name=queue,
            actor_name="sync_patient",
            args=(),
            kwargs={"connection_id": connection_id, "resource_id": "1"},
            options={},
        )
        redis_server_client.hset(
            keys.dramatiq_messages(queue), message.message_id, message.encode()
        )
        redis_server_client.rpush(keys.dramatiq_queue(queue), message.message_id)
        return message.message_id

    mine = [put(q, "cn_clinicoffboard") for q in ("live", "bulk", "live", "bulk.DQ")]
    theirs = [put(q, "cn_clinicstaying") for q in ("live", "bulk", "bulk.DQ")]

    assert erase_queued_messages(redis_server_client, keys, "cn_clinicoffboard") == len(mine)

    left = [
        m.decode()
        for q in ("live", "bulk", "bulk.DQ")
        for m in redis_server_client.lrange(keys.dramatiq_queue(q), 0, -1)
    ]
    assert sorted(left) == sorted(theirs)
    assert erase_queued_messages(redis_server_client, keys, "cn_clinicoffboard") == 0


def test_what_a_running_job_writes_after_the_offboarding_is_erased_by_the_scheduler(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    """A job of the clinic's that was running at the offboarding writes after the erasers ran
    (a patient link, a note's record): the scheduler erases it once such a job has surely
    ended (a quarter of an hour), finding the clinic by its `connection.offboarded` entry."""
    clinic = sandbox_connection(pipeline.store, sandbox, verify_key)
    erasures = standard_erasures(pipeline.store, base_settings.fernet)
    offboard(pipeline.store, clinic, erasures, utcnow(), audit_of(pipeline.store), "ops")
    pipeline.redis.hset(pipeline.keys.patient_links(clinic.id), "1001", b"late")
    pipeline.redis.set(pipeline.keys.note(clinic.id, "note-late"), b"late")
    namespace = base_settings.redis_namespace
    late = set(naming(every_value(pipeline.redis, namespace), clinic.id))
    assert pipeline.keys.patient_links(clinic.id).encode() in late

    runtime = WorkerRuntime(base_settings)
    scheduler = Scheduler(base_settings, runtime, DramatiqJobQueue(pipeline.broker))
    try:
        scheduler.forget_series_of_gone_connections()  # too soon: a job may still run
        assert set(naming(every_value(pipeline.redis, namespace), clinic.id)) == late

        with time_machine.travel(utcnow() + timedelta(minutes=16), tick=False):
            scheduler._series_checked_at = -math.inf  # its 10-minute wait, on the monotonic clock
            scheduler.forget_series_of_gone_connections()
    finally:
        scheduler.resign()
        runtime.close()
    assert list(naming(every_value(pipeline.redis, namespace), clinic.id)) == [
        pipeline.keys.audit().encode()
    ]

"""Pause and resume end to end: the receiver, a real Dramatiq worker, the sandbox Halaxy and
Physitrack over HTTP, real Redis, and the scheduler.

Paused: webhooks are answered as usual and kept, nothing is processed, nothing counts as a
failure. Resumed: what was held is processed in the order it came, then new work.
"""

from __future__ import annotations

import logging

import orjson
import pytest
from click.testing import CliRunner

from services.cli.main import cli
from services.sandbox.halaxy import patient_resource
from services.scheduler.loop import Scheduler
from services.workers.holding import HELD, HeldIsNotAWarning
from services.workers.runtime import WorkerRuntime
from shared.connections import PausedConnections, lifecycle
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.notes.outbox import NoteOutbox, NoteState
from shared.patients.reconcile import SweepLog
from shared.telemetry.definitions import REGISTRY
from tests.helpers import audit_of
from tests.notes.test_write_back import body, publish
from tests.workers import Pipeline, Sandbox, sandbox_connection

PATIENTS = [str(n) for n in range(2001, 2007)]


@pytest.fixture
def conn(pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier) -> Connection:
    for patient_id in [*PATIENTS, "1001"]:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
    return sandbox_connection(pipeline.store, sandbox, verify_key)


def pauses(pipeline: Pipeline) -> PausedConnections:
    return PausedConnections(pipeline.redis, pipeline.keys)


def pause(pipeline: Pipeline, conn: Connection) -> None:
    assert lifecycle.pause_connection(
        pauses(pipeline), conn, utcnow(), audit_of(pipeline.store), "ops"
    )


def resume(pipeline: Pipeline, conn: Connection) -> lifecycle.Resumed:
    return lifecycle.resume_connection(pauses(pipeline), conn, audit_of(pipeline.store), "ops")


def patient_reads(sandbox: Sandbox) -> list[str]:
    """The Halaxy patients the worker read, in the order it read them."""
    return [
        r.path.rsplit("/", 1)[1]
        for r in sandbox.halaxy.requests
        if r.method == "GET" and r.path.startswith("/main/Patient/")
    ]


def jobs_counted(connection_id: str, outcome: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if (
                sample.name == "halaxy_bridge_jobs_total"
                and sample.labels.get("connection_id") == connection_id
                and sample.labels.get("outcome") == outcome
            ):
                total += sample.value
    return total


@pytest.mark.parametrize("pipeline", [1], indirect=True, ids=["one-thread"])
def test_paused_webhooks_are_kept_and_nothing_is_processed_until_resume_in_arrival_order(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection
) -> None:
    pause(pipeline, conn)

    answers = [
        pipeline.send(conn, "patient-created", "Patient", [pid], event_ids=[f"ev-{pid}"])
        for pid in PATIENTS
    ]
    pipeline.drain()

    assert [a.status_code for a in answers] == [202] * len(PATIENTS)
    assert [a.json()["accepted"] for a in answers] == [[f"ev-{p}"] for p in PATIENTS]
    assert patient_reads(sandbox) == []  # nothing processed: Halaxy not even asked
    assert sandbox.physitrack.clients == {}
    holding = pauses(pipeline).holding([conn.id])[conn.id]
    assert (holding.is_paused, holding.held) == (True, len(PATIENTS))
    # Held, not failed: no retry, no dead letter, no failure counted.
    assert jobs_counted(conn.id, "held") == len(PATIENTS)
    assert jobs_counted(conn.id, "retried") == jobs_counted(conn.id, "dead") == 0
    assert pipeline.dead_letters() == []

    resumed = resume(pipeline, conn)
    pipeline.send(conn, "patient-updated", "Patient", ["1001"], event_ids=["ev-after"])
    pipeline.drain()

    assert (resumed.was_paused, resumed.released, resumed.still_held) == (
        True,
        len(PATIENTS),
        0,
    )
    # One worker thread runs jobs one at a time, in queue order: the order they came in,
    # then the webhook that came after the resume.
    assert patient_reads(sandbox) == [*PATIENTS, "1001"]
    assert sorted(c["external_id"] for c in sandbox.physitrack.clients.values()) == sorted(
        [*PATIENTS, "1001"]
    )
    assert pauses(pipeline).holding([conn.id])[conn.id].held == 0
    actions = [e.action for e in audit_of(pipeline.store).entries(connection_id=conn.id)]
    assert "connection.paused" in actions
    assert "connection.resumed" in actions


def test_a_message_held_twice_is_synced_once(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection
) -> None:
    """A worker killed after holding a message but before acknowledging it: the message comes
    back (Dramatiq's maintenance) and is held a second time. Both copies run after the resume;
    the second finds the patient written and unchanged, and writes nothing."""
    pause(pipeline, conn)
    pipeline.send(conn, "patient-created", "Patient", ["2001"])
    pipeline.drain()
    held_key = pipeline.keys.held_messages(conn.id)
    [record] = pipeline.redis.lrange(held_key, 0, -1)
    pipeline.redis.rpush(held_key, record)

    assert resume(pipeline, conn).released == 2
    pipeline.drain()

    assert patient_reads(sandbox) == ["2001", "2001"]
    assert len(sandbox.physitrack.by_external_id("2001")) == 1
    assert len(sandbox.physitrack.writes()) == 1  # one create; the second sync wrote nothing


def test_a_program_note_waits_for_the_resume_and_is_posted_once(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, base_settings: Settings
) -> None:
    pause(pipeline, conn)
    answer = pipeline.callback(conn, body(conn, publish(sandbox)))
    pipeline.drain()

    assert answer.status_code == 202
    [note_id] = answer.json()["accepted"]
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, base_settings.fernet)
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.QUEUED  # recorded, not worked on
    assert sandbox.halaxy.notes == []
    assert sandbox.physitrack.file_requests == []

    resume(pipeline, conn)
    pipeline.drain()

    assert len(sandbox.halaxy.notes) == 1
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.POSTED


def test_the_scheduler_leaves_a_paused_connection_alone_and_finishes_a_resume(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Connection,
    base_settings: Settings,
    verify_key: KeyVerifier,
) -> None:
    """No sweep (its backfill would read Halaxy) while paused; once resumed, a resume that
    stopped part-way is finished by the next tick."""
    running = sandbox_connection(pipeline.store, sandbox, verify_key)
    pause(pipeline, conn)
    for pid in PATIENTS[:3]:
        pipeline.send(conn, "patient-created", "Patient", [pid])
    pipeline.drain()
    pipeline.redis.delete(pipeline.keys.scheduler_leader())  # an earlier test's scheduler
    runtime = WorkerRuntime(base_settings)
    scheduler = Scheduler(base_settings, runtime)
    sweeps = SweepLog(pipeline.redis, pipeline.keys)

    scheduler.tick()
    assert sweeps.last(conn.id) is None
    assert sweeps.progress(conn.id) is None
    assert sweeps.last(running.id) is not None or sweeps.progress(running.id) is not None

    pauses(pipeline).resume(conn.id)  # the flag lifted, then the resume died: nothing released
    assert pauses(pipeline).holding([conn.id])[conn.id].held == 3
    scheduler.tick()
    pipeline.drain()

    assert pauses(pipeline).holding([conn.id])[conn.id].held == 0
    synced = sandbox.physitrack.clients_of(conn.platform_api_key.get_secret_value())
    assert {c["external_id"] for c in synced} >= set(PATIENTS[:3])
    scheduler.resign()
    runtime.close()


def test_status_shows_the_pause_and_what_is_held(
    pipeline: Pipeline, conn: Connection, base_settings: Settings
) -> None:
    pause(pipeline, conn)
    pipeline.send(conn, "patient-created", "Patient", ["2001"])
    pipeline.drain()
    env = {"BRIDGE_REDIS_NAMESPACE": base_settings.redis_namespace}

    shown = CliRunner().invoke(cli, ["status", "--json"], env=env)
    text = CliRunner().invoke(cli, ["status"], env=env)

    assert shown.exit_code == 0, shown.output
    [row] = [r for r in orjson.loads(shown.stdout)["connections"] if r["id"] == conn.id]
    assert (row["paused"], row["held_messages"]) == (True, 1)
    assert row["paused_at"] is not None
    assert row["oldest_held_at"] is not None
    assert row["failures_last_hour"] == 0
    lines = [line for line in text.stdout.splitlines() if line.startswith(conn.id)]
    assert any(" paused " in line for line in lines)  # the connections table's state
    assert any(line.split()[-4:-2] == ["ago", "1"] for line in lines), text.stdout  # held: 1


def test_a_held_message_is_logged_as_held_not_as_a_warning() -> None:
    class Message:
        def __init__(self, options: dict[str, object]) -> None:
            self.options = options

    held, other = (
        logging.LogRecord(
            "dramatiq.worker.WorkerThread",
            logging.WARNING,
            "",
            0,
            "Message %s was skipped.",
            (Message(options),),
            None,
        )
        for options in ({HELD: True}, {})
    )
    for record in (held, other):
        assert HeldIsNotAWarning().filter(record)

    assert (held.levelno, held.getMessage().endswith("held: its connection is paused.")) == (
        logging.INFO,
        True,
    )
    assert (other.levelno, other.getMessage().endswith("was skipped.")) == (logging.WARNING, True)

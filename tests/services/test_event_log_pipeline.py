"""The event log end to end: a real webhook through the receiver and a real Dramatiq worker
leaves a record with its attempts (what each called, its outcome, status and time) and its
final state; a failure is dead-lettered and replayed; a retry, a parked note, a program from
the deployment's Physitrack endpoint kept unrouted and then routed, one the poll brings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from services.cli.main import cli
from services.sandbox.faults import Faults
from services.sandbox.halaxy import patient_resource
from services.scheduler.loop import Scheduler
from services.workers.messaging import DramatiqJobQueue
from services.workers.runtime import WorkerRuntime
from shared.connections import PausedConnections, lifecycle
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import utcnow
from shared.ops.dead_letters import DeadLetterStore
from shared.telemetry import UNROUTED, EventLog, EventQuery, EventView, parse_query
from tests.helpers import audit_of, bearer
from tests.notes.test_physitrack_programs import ENDPOINT, Seat, add, book, poll_all
from tests.notes.test_write_back import body, publish
from tests.workers import Pipeline, Sandbox, sandbox_connection


@pytest.fixture
def events(pipeline: Pipeline) -> EventLog:
    return EventLog(pipeline.redis, pipeline.keys)


@pytest.fixture
def conn(pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier) -> Connection:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    return sandbox_connection(pipeline.store, sandbox, verify_key)


@pytest.fixture
def scheduler(pipeline: Pipeline) -> Iterator[Scheduler]:
    settings = pipeline.receiver.app.state.deps.settings
    runtime = WorkerRuntime(settings)
    scheduler = Scheduler(settings, runtime, DramatiqJobQueue(pipeline.broker))
    scheduler.poll_every = timedelta(0)
    yield scheduler
    scheduler.resign()
    runtime.close()


def only(events: EventLog, event_id: str, connection_id: str | None = None) -> EventView:
    [view] = events.get(event_id, connection_id)
    return view


def drain_all(pipeline: Pipeline) -> None:
    for queue in ("live", "bulk"):
        pipeline.broker.join(queue, timeout=30_000)
    pipeline.worker.join()


def calls(view: EventView, n: int) -> list[tuple[str, str, str, int | None]]:
    return [(c.upstream, c.method, c.route, c.status) for c in view.attempts[n].calls]


def test_a_webhook_leaves_a_record_with_its_attempt_and_its_final_state(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-log-1"])
    pipeline.drain()
    view = only(events, "ev-log-1")
    shown = view.shown()
    assert (shown["connection_id"], shown["source"], shown["event_type"]) == (
        conn.id,
        "halaxy-webhook",
        "patient-created",
    )
    assert (shown["resource_id"], shown["state"], shown["detail"]) == ("1001", "done", "created")
    [attempt] = view.attempts
    assert (attempt.outcome.value, attempt.actor, attempt.detail) == (
        "succeeded",
        "sync_patient",
        "created",
    )
    assert ("halaxy", "GET", "/main/Patient/{id}", 200) in calls(view, 0)
    assert any(c.upstream == "platform" for c in attempt.calls)
    assert attempt.status_code is not None
    assert attempt.status_code < 300
    assert attempt.seconds > 0
    assert attempt.at >= view.record.received_at
    # No patient detail anywhere in it.
    stored = orjson.dumps(shown).decode()
    assert "Jane" not in stored
    assert "@" not in stored
    # The same patient again, nothing changed: skipped-unchanged.
    pipeline.send(conn, "patient-updated", "Patient", ["1001"], event_ids=["ev-log-2"])
    pipeline.drain()
    again = only(events, "ev-log-2")
    assert (again.status.state.value, again.status.detail) == ("skipped-unchanged", "unchanged")


def test_a_retried_attempt_shows_its_status_then_the_event_is_done(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    sandbox.halaxy.faults = Faults(script=[503])
    pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-retry"])
    pipeline.drain()
    view = only(events, "ev-retry")
    first, second = view.attempts
    assert (first.outcome.value, first.status_code) == ("retried", 503)
    assert ("halaxy", "GET", "/main/Patient/{id}", 503) in calls(view, 0)
    assert first.message_id == second.message_id  # the same message, retried
    assert (second.outcome.value, second.detail) == ("succeeded", "created")
    assert view.status.state.value == "done"


def cli_json(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def test_a_failure_is_dead_lettered_then_replayed_as_a_new_attempt(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001", birth_date=None)
    pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-dead"])
    pipeline.drain()
    [letter] = DeadLetterStore(pipeline.redis, pipeline.keys).list(conn.id)
    view = only(events, "ev-dead")
    assert view.status.state.value == "dead"
    assert view.status.dead_letter_id == letter.id
    assert (view.attempts[-1].outcome.value, view.attempts[-1].detail) == (
        "dead",
        "PatientNotUsable",
    )
    # Found by its id alone, from the CLI and /ops/events, with its dead letter's id.
    [record] = cli_json("events", "show", "ev-dead")["records"]
    assert (record["state"], record["dead_letter_id"]) == ("dead", letter.id)
    listed = cli_json("events", "list", "--connection", conn.id, "--state", "dead")["events"]
    assert [e["event_id"] for e in listed] == ["ev-dead"]
    # Fixed in Halaxy, replayed: a replay entry, then a new attempt (bulk), then done.
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    assert cli_json("dead-letters", "replay", letter.id)["replayed"] == [letter.id]
    assert only(events, "ev-dead").status.state.value == "queued"
    drain_all(pipeline)
    view = only(events, "ev-dead")
    outcomes = [(a.outcome.value, a.actor) for a in view.attempts]
    assert outcomes == [
        ("dead", "sync_patient"),
        ("replayed", "dead-letters replay"),
        ("succeeded", "sync_patient_bulk"),
    ]
    assert view.attempts[1].detail == letter.id
    assert (view.status.state.value, view.status.dead_letter_id) == ("done", "")


def test_a_program_note_posted_and_one_parked_show_with_their_note_ids(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    [posted] = pipeline.callback(conn, body(conn, publish(sandbox))).json()["accepted"]
    pipeline.drain()
    view = only(events, posted)
    shown = view.shown()
    assert (shown["source"], shown["event_type"], shown["note_id"]) == (
        "program-callback",
        "program-assigned",
        posted,
    )
    assert (shown["resource_id"], shown["state"]) == ("1001", "done")
    routes = calls(view, -1)
    assert ("halaxy", "POST", "/main/DocumentReference", 201) in routes
    assert ("pdf", "GET", "(not recorded)", 200) in routes  # the PDF: never its link
    assert not any("/files" in route for _, _, route, _ in routes)
    sandbox.halaxy.note_faults = ["500_after_store"]
    [parked] = pipeline.callback(conn, body(conn, publish(sandbox), updated=True)).json()[
        "accepted"
    ]
    pipeline.drain()
    view = only(events, parked)
    assert (view.status.state.value, view.record.note_id) == ("parked", parked)
    assert view.attempts[-1].detail == "parked"


def test_an_unrouted_post_is_logged_then_routed_to_its_note(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    scheduler: Scheduler,
    events: EventLog,
) -> None:
    connection = sandbox_connection(pipeline.store, sandbox, verify_key)
    fake = sandbox.physitrack.add_practitioner()
    sandbox.physitrack.add_client(fake.api_key, external_id="8101", first_name="J", last_name="C")
    sandbox.halaxy.patients["8101"] = patient_resource("8101")
    sandbox.physitrack.assign(fake, "8101", deliver_to=ENDPOINT, http=pipeline.receiver)
    [kept] = scheduler.unrouted.oldest_first()
    view = only(events, kept.id)
    assert view.record.connection_id == UNROUTED
    assert (view.status.state.value, view.status.detail) == ("unrouted", "unknown_token")
    assert (view.record.source.value, view.record.resource_id) == ("physitrack-webhook", "8101")
    add(pipeline, connection, fake, "PR-4101")
    scheduler.route_unrouted()
    pipeline.drain()
    routed = only(events, kept.id)
    assert routed.status.state.value == "routed"
    note_id = routed.status.note_id
    note = only(events, note_id, connection.id)
    assert (note.record.source.value, note.record.routed_from) == ("unrouted", kept.id)
    assert note.status.state.value == "done"
    # The unrouted record names no connection.
    assert connection.id not in orjson.dumps(routed.shown()).decode()


def test_a_program_the_poll_brings_is_logged_from_the_poll(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    scheduler: Scheduler,
    events: EventLog,
) -> None:
    connection = sandbox_connection(pipeline.store, sandbox, verify_key)
    fake = sandbox.physitrack.add_practitioner()
    add(pipeline, connection, fake, "PR-4201")
    seat = Seat(connection, fake, "PR-4201")
    book(pipeline, sandbox, seat, "8201")
    pipeline.drain()
    poll_all(pipeline, scheduler)  # the first poll sets the cursor
    sandbox.physitrack.assign(fake, "8201", name="Polled", drop=True)
    poll_all(pipeline, scheduler)
    pipeline.drain()
    page = events.search(
        events_query(connection=connection.id, resource="8201", state="done")
    ).events
    programs = [v for v in page if v.record.event_type == "program-assigned"]
    [view] = programs
    assert view.record.source.value == "program-poll"
    assert len(sandbox.halaxy.notes) == 1


def events_query(**raw: str) -> EventQuery:
    return parse_query(raw, utcnow())


def test_a_log_write_that_fails_never_fails_the_webhook(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Connection,
    events: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Losing a log record is better than a 5xx for a durable event: the event is queued and
    synced, and the lost record is logged."""
    pipeline.redis.set(pipeline.keys.event_log_index(conn.id), "not a sorted set")
    with capture_logs() as logs:
        response = pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-x"])
        assert response.json()["accepted"] == ["ev-x"]
        pipeline.drain()
    assert len(sandbox.physitrack.by_external_id("1001")) == 1
    # Seen by structlog's capture, or, once `configure_logging` has run in this process (its
    # loggers are cached), by the standard library's records it goes through.
    lines = [str(line) for line in logs] + [str(record.msg) for record in caplog.records]
    said = [line for line in lines if "event_log.not_recorded" in line]
    assert said
    assert all("ev-x" in line and "RedisRefused" in line for line in said)
    # Its record was written before the index refused: found by its id, if not by a search.
    assert only(events, "ev-x").status.state.value == "done"


def test_an_event_of_a_paused_connection_shows_held_then_done_once_resumed(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    pauses = PausedConnections(pipeline.redis, pipeline.keys)
    assert lifecycle.pause_connection(pauses, conn, utcnow(), audit_of(pipeline.store), "ops")
    pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-held"])
    pipeline.drain()
    held = only(events, "ev-held")
    assert (held.status.state.value, held.status.detail) == ("held", "connection paused")
    assert [a.outcome.value for a in held.attempts] == ["held"]
    assert held.attempts[0].calls == ()  # nothing was called
    lifecycle.resume_connection(pauses, conn, audit_of(pipeline.store), "ops")
    drain_all(pipeline)
    done = only(events, "ev-held")
    assert [a.outcome.value for a in done.attempts] == ["held", "succeeded"]
    assert done.status.state.value == "done"


def test_a_test_event_from_ops_runs_through_the_worker_and_shows_its_trail(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, events: EventLog
) -> None:
    """`POST /admin/connections/{id}/test-event`: logged, queued, read from Halaxy and the
    platform by a worker (nothing written), done, with each call and its answer in the trail;
    then Halaxy refusing the connection's key: the test event ends failed, not retried, no dead
    letter, and the trail shows Halaxy's answer."""
    admin = bearer(os.environ["BRIDGE_ADMIN_TOKEN"])
    sent = pipeline.receiver.post(f"/admin/connections/{conn.id}/test-event", headers=admin)
    assert sent.status_code == 202, sent.text
    event_id = sent.json()["event_id"]
    assert sent.json()["event_url"] == f"/ops/events/{event_id}?connection={conn.id}"
    pipeline.drain()

    view = only(events, event_id, conn.id)
    shown = view.shown()
    assert (shown["source"], shown["event_type"], shown["state"]) == (
        "console",
        "test-event",
        "done",
    )
    [attempt] = view.attempts
    assert (attempt.actor, attempt.detail) == ("probe_connection", "probed")
    answered = {(upstream, method, status) for upstream, method, _, status in calls(view, 0)}
    assert ("halaxy", "GET", 200) in answered
    assert ("platform", "GET", 200) in answered
    assert {method for _, method, _ in answered} <= {"GET", "POST"}  # POST: Halaxy's token
    [entry] = audit_of(pipeline.store).entries(
        connection_id=conn.id, action="connection.test_event"
    )
    assert entry.resource_ids == event_id

    # The page of the event: its trail, as a browser reads it.
    page = pipeline.receiver.get(sent.json()["event_url"], headers={**admin, "Accept": "text/html"})
    assert page.status_code == 200
    assert "probe_connection" in page.text

    sandbox.halaxy.faults.script = [503] * 10
    try:
        failing = pipeline.receiver.post(f"/admin/connections/{conn.id}/test-event", headers=admin)
        pipeline.drain()
    finally:
        sandbox.halaxy.faults.script = []
    failed = only(events, failing.json()["event_id"], conn.id)
    assert failed.shown()["state"] == "failed"
    [attempt] = failed.attempts  # not retried
    assert attempt.detail == "failed"
    assert 503 in {status for _, _, _, status in calls(failed, 0)}
    letters = DeadLetterStore(pipeline.redis, pipeline.keys).list()
    assert [x for x in letters if x.connection_id == conn.id] == []

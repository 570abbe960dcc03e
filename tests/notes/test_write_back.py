"""Program write-back end to end: callback -> receiver -> worker -> PDF -> one Halaxy note.

Real Redis, a real Dramatiq worker (threads), the sandbox Halaxy and Physitrack over HTTP.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

import shared.halaxy.client as halaxy_client
from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.workers.messaging import DramatiqJobQueue
from services.workers.runtime import WorkerRuntime
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import StoreUnavailable
from shared.infra.store import LeaseRenewer
from shared.notes import writer
from shared.notes.callback import note_id_for, parse_callback
from shared.notes.intake import job_for_note
from shared.notes.outbox import NoteOutbox, NoteState
from shared.notes.resolution import Resolution, Waiting, find_waiting, resolve_note
from shared.patients.links import PatientLinks
from tests.helpers import audit_of, run_together
from tests.workers import Pipeline, Sandbox, sandbox_connection

PATIENT = "1001"


@pytest.fixture
def conn(pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier) -> Connection:
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    # A practitioner token names one practitioner of one connection in the whole deployment
    # (this run's connections share a namespace): each test's own.
    return sandbox_connection(
        pipeline.store, sandbox, verify_key, practitioners={mapped_token(): "PR-2002"}
    )


def mapped_token(connection: Connection | None = None) -> str:
    """A token for the author map, unique per test; the one `connection` maps."""
    if connection is not None:
        [token] = connection.practitioners
        return token
    return f"pt-tok-{secrets.token_hex(6)}"


@pytest.fixture
def outbox(pipeline: Pipeline, base_settings: Any) -> NoteOutbox:
    return NoteOutbox(pipeline.redis, pipeline.keys, base_settings.fernet)


def publish(sandbox: Sandbox, pdf: bytes | None = None) -> str:
    path = sandbox.physitrack.publish_pdf(pdf or make_pdf("Knee Rehab Program"))
    return sandbox.physitrack_url.removesuffix("/api/v2") + path


def body(conn: Connection, file_url: str, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "api_key": conn.program_api_key.get_secret_value(),
        "file_url": file_url,
        "patient_id": PATIENT,
    }
    values.update(fields)
    return program_callback(**values)


def test_an_assignment_becomes_one_note_in_halaxy_shaped_as_documented(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, outbox: NoteOutbox
) -> None:
    pdf = make_pdf("Knee Rehab Program")
    when = utcnow().replace(microsecond=0) - timedelta(minutes=30)  # assigned half an hour ago
    day = when.date().isoformat()
    response = pipeline.callback(
        conn, body(conn, publish(sandbox, pdf), token=mapped_token(conn), when=when)
    )
    assert response.status_code == 202
    [note_id] = response.json()["accepted"]
    pipeline.drain()
    [note] = sandbox.halaxy.notes
    base = conn.halaxy_base_url
    assert note["docStatus"] == "preliminary"
    assert note["subject"] == {"type": "Patient", "reference": f"{base}/Patient/{PATIENT}"}
    assert note["author"] == [
        {"type": "PractitionerRole", "reference": f"{base}/PractitionerRole/PR-2002"}
    ]
    assert note["description"] == f"Home program: Knee Rehab Program (assigned {day})"
    assert note["date"] == when.isoformat().replace("+00:00", "Z")
    assert note["content"][0]["attachment"]["contentType"] == "text/html"
    assert "Knee Rehab Program" in note["content"][0]["attachment"]["data"]
    [attachment] = note["attachments"]
    assert attachment["contentType"] == "application/pdf"
    assert attachment["title"] == f"knee-rehab-program-{day}.pdf"
    assert attachment["sha256"] == hashlib.sha256(pdf).hexdigest()
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert (record.state, record.docref_id) == (NoteState.POSTED, note["id"])
    assert outbox.callback(conn.id, note_id) is None  # the PDF link is not kept once done


def test_an_update_gets_its_own_note_and_the_default_author(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection
) -> None:
    url = publish(sandbox)
    pipeline.callback(conn, body(conn, url))
    pipeline.callback(conn, body(conn, url, updated=True))
    pipeline.drain()
    titles = sorted(n["description"] for n in sandbox.halaxy.notes)
    assert [t.split("(")[1].split()[0] for t in titles] == ["assigned", "updated"]
    assert {n["author"][0]["reference"].rsplit("/", 1)[1] for n in sandbox.halaxy.notes} == {
        "PR-1001"
    }


def test_ten_identical_callbacks_at_once_make_one_note(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection
) -> None:
    payload = body(conn, publish(sandbox))
    answers: list[Any] = []
    barrier = threading.Barrier(10)

    def send() -> None:
        barrier.wait()
        answers.append(pipeline.callback(conn, payload))

    run_together(send, 10)
    pipeline.drain()
    assert sorted(a.status_code for a in answers) == [202] * 10
    assert sum(len(a.json()["accepted"]) for a in answers) == 1
    assert len(sandbox.halaxy.notes) == 1


def test_a_signed_connection_needs_a_valid_signature_and_dedups_on_webhook_id(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier
) -> None:
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    conn = sandbox_connection(pipeline.store, sandbox, verify_key, signing=True)
    assert conn.signing_secret is not None
    signer = Webhook(conn.signing_secret.get_secret_value())
    payload = body(conn, publish(sandbox))
    raw = orjson.dumps(payload)

    def signed(msg_id: str, at: datetime) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signer.sign(msg_id, at, raw.decode()),
        }

    now = utcnow()
    unsigned = pipeline.callback(conn, payload)
    stale = pipeline.callback(conn, payload, signed("msg-1", now - timedelta(minutes=6)))
    forged = pipeline.callback(conn, payload, {**signed("msg-1", now), "webhook-id": "msg-2"})
    assert [r.status_code for r in (unsigned, stale, forged)] == [401, 401, 401]
    assert {r.json()["error"] for r in (unsigned, stale, forged)} == {"bad_signature"}
    first = pipeline.callback(conn, payload, signed("msg-1", now))
    again = pipeline.callback(conn, payload, signed("msg-1", now))
    assert first.status_code == again.status_code == 202
    assert again.json()["duplicates"] == first.json()["accepted"]
    pipeline.drain()
    assert len(sandbox.halaxy.notes) == 1


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"api_key": "wrong"}, 401, "unauthorized"),
        ({"api_key": None}, 401, "unauthorized"),
        ({"patient_id": "../../etc"}, 422, "invalid"),
        # no offset: a time Physitrack means in no particular zone
        ({"date_iso": utcnow().replace(tzinfo=None).isoformat(timespec="seconds")}, 422, "invalid"),
        ({"updated": "yes"}, 422, "invalid"),
        ({"name": ""}, 422, "invalid"),
    ],
)
def test_bad_callbacks(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Connection,
    change: dict[str, Any],
    status: int,
    error: str,
) -> None:
    payload = {**body(conn, publish(sandbox)), **change}
    response = pipeline.callback(conn, payload)
    assert response.status_code == status
    assert response.json()["error"] == error
    if status == 422:
        assert next(iter(change)) in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"file_url": "https://files.elsewhere.example/p.pdf"},
            "not on the connection's allow-list",
        ),
        ({"file_url": "ftp://127.0.0.1/p.pdf"}, "allow-list"),
        # the link lived 24 hours from its assignment
        ({"date_iso": (utcnow() - timedelta(hours=25)).isoformat(timespec="seconds")}, "expired"),
        ({"date_iso": "0001-01-01T00:00:00+01:00"}, "date_iso"),
        ({"date_iso": "9999-12-31T23:30:00Z"}, "date_iso"),
        ({"date": "1899-01-01"}, "date"),
    ],
)
def test_callbacks_the_worker_could_never_serve_are_refused_at_once(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Connection,
    outbox: NoteOutbox,
    change: dict[str, Any],
    reason: str,
) -> None:
    payload = {**body(conn, publish(sandbox)), **change}
    response = pipeline.callback(conn, payload)
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    pipeline.drain()
    assert sandbox.physitrack.file_requests == []
    assert sandbox.halaxy.notes == []


def test_unknown_connection_is_404(pipeline: Pipeline, conn: Connection, sandbox: Sandbox) -> None:
    other = conn.model_copy(update={"id": "cn_nope"})
    assert pipeline.callback(other, body(conn, publish(sandbox))).status_code == 404


def test_a_rate_limited_post_is_retried_and_posts_once(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, outbox: NoteOutbox
) -> None:
    sandbox.halaxy.note_faults = ["429"]
    [note_id] = pipeline.callback(conn, body(conn, publish(sandbox))).json()["accepted"]
    pipeline.drain()
    assert len(sandbox.halaxy.notes) == 1
    posts = [r.status for r in sandbox.halaxy.requests if r.path.endswith("DocumentReference")]
    assert posts == [429, 201]
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.POSTED


@pytest.mark.parametrize("fault", ["timeout_after_store", "500_after_store"])
def test_an_ambiguous_end_parks_the_note_and_it_is_never_posted_again(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Connection,
    outbox: NoteOutbox,
    fault: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.halaxy.note_faults = [fault]
    sandbox.halaxy.hang_seconds = 3.0
    # Halaxy keeps the connection open after storing; the bridge stops waiting after 1 s.
    monkeypatch.setattr(halaxy_client, "WRITE_TIMEOUT", httpx.Timeout(1.0, connect=1.0))
    payload = body(conn, publish(sandbox))
    [note_id] = pipeline.callback(conn, payload).json()["accepted"]
    pipeline.drain()
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.PARKED
    assert "check the patient's notes in Halaxy" in record.reason
    assert note_id in [r.note_id for r in outbox.parked()]
    # A repeat delivery of the same assignment changes nothing.
    assert pipeline.callback(conn, payload).json()["duplicates"] == [note_id]
    pipeline.drain()
    assert len(sandbox.halaxy.notes) == 1


def test_a_note_found_in_posting_is_parked_not_posted(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, outbox: NoteOutbox
) -> None:
    """What a worker killed mid-POST leaves behind, met by the redelivered message."""
    callback = parse_callback(body(conn, publish(sandbox)))
    note_id = note_id_for(conn.id, callback, None)
    assert outbox.create(conn.id, note_id, callback)
    outbox.move(conn.id, note_id, {NoteState.QUEUED}, NoteState.POSTING)
    DramatiqJobQueue(pipeline.broker).enqueue([job_for_note(conn.id, note_id)])
    pipeline.drain()
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.PARKED
    assert sandbox.halaxy.notes == []
    assert sandbox.physitrack.file_requests == []


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("unknown_patient", "Halaxy has no patient 4040"),
        ("external_author", "Author not found"),
        ("not_a_pdf", "not a PDF"),
        ("pdf_gone", "answered 404"),
    ],
)
def test_notes_that_cannot_be_written_fail_with_the_reason_and_no_note(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    outbox: NoteOutbox,
    setup: str,
    reason: str,
) -> None:
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    conn = sandbox_connection(
        pipeline.store,
        sandbox,
        verify_key,
        author="PR-1001" if setup != "external_author" else None,
    )
    url = publish(sandbox)
    fields: dict[str, Any] = {}
    if setup == "unknown_patient":
        fields["patient_id"] = "4040"
    elif setup == "external_author":
        conn = conn.model_copy(update={"default_author": "EP-77"})
        pipeline.store.save(conn)
    elif setup == "not_a_pdf":
        url = publish(sandbox, b"<html>not a pdf</html>")
    elif setup == "pdf_gone":
        url = url.replace("/files/", "/files/missing-")
    [note_id] = pipeline.callback(conn, body(conn, url, **fields)).json()["accepted"]
    pipeline.drain()
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.FAILED, record
    assert reason in record.reason
    assert sandbox.halaxy.notes == []


def test_a_failed_note_retried_once_its_cause_is_fixed_is_posted_once(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, outbox: NoteOutbox
) -> None:
    """The ops path for `failed`: the clinic's author role was wrong, ops fix the connection
    and retry the note; the PDF link the callback brought is used again."""
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    conn = sandbox_connection(pipeline.store, sandbox, verify_key, author="PR-1001")
    pipeline.store.save(conn.model_copy(update={"default_author": "EP-77"}))
    [note_id] = pipeline.callback(conn, body(conn, publish(sandbox))).json()["accepted"]
    pipeline.drain()
    record = find_waiting(outbox, note_id, Waiting.FAILED)
    assert record.state is NoteState.FAILED
    assert sandbox.halaxy.notes == []
    pipeline.store.save(conn)  # the author put right
    resolve_note(
        outbox,
        DramatiqJobQueue(pipeline.broker),
        record,
        Resolution.RETRY,
        "ops",
        audit_of(pipeline.store),
    )
    pipeline.drain()
    settled = outbox.get(conn.id, note_id)
    assert settled is not None
    assert settled.state is NoteState.POSTED
    assert settled.attempts == 2
    [note] = sandbox.halaxy.notes
    assert note["author"][0]["reference"].endswith("/PractitionerRole/PR-1001")
    assert len(sandbox.physitrack.file_requests) == 2


def test_a_pdf_host_failing_for_a_while_is_retried(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection
) -> None:
    sandbox.physitrack.file_faults.script = [503, 502]
    pipeline.callback(conn, body(conn, publish(sandbox)))
    pipeline.drain()
    assert len(sandbox.physitrack.file_requests) == 3
    assert len(sandbox.halaxy.notes) == 1


def test_the_callbacks_patient_id_is_only_ever_read_as_the_halaxy_id(
    pipeline: Pipeline, sandbox: Sandbox, conn: Connection, renewer: LeaseRenewer
) -> None:
    """Halaxy ids and platform ids are both plain numbers: PATIENT's platform id may be the
    Halaxy id of another patient. The callback's `patient_id` is the `external_id` the bridge
    sent (therapy-platforms.md 2.1), so the note goes to that Halaxy patient, never to one
    found by reading it as a platform id."""
    other = "5001"
    sandbox.halaxy.patients[other] = patient_resource(other)
    PatientLinks(pipeline.redis, pipeline.keys, conn.id, renewer).save(PATIENT, other, "digest")
    pipeline.callback(conn, body(conn, publish(sandbox), patient_id=other))
    pipeline.drain()
    [note] = sandbox.halaxy.notes
    assert note["subject"]["reference"].endswith(f"/Patient/{other}")


@pytest.mark.parametrize("redis_fails", ["before_the_post", "after_the_post"])
def test_what_became_of_a_post_is_recorded_through_a_failover(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    monkeypatch: pytest.MonkeyPatch,
    redis_fails: str,
) -> None:
    """Before the POST, the Halaxy client reads its token and spends its rate budget in Redis:
    a failover there fails the POST with nothing sent, and the move back to `queued` meets the
    same failover. After a 201, the move to `posted` may meet one too. Left `posting` either
    way, the retry parked the note (the failover test lost a note this way): unposted in the
    first case, posted but for ops to check in the second."""
    monkeypatch.setattr(writer, "OUTCOME_MOVE_PAUSE_SECONDS", 0.01)
    connection = sandbox_connection(store, sandbox, verify_key)
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    runtime = WorkerRuntime(settings)
    services = runtime.services(connection.id)
    callback = parse_callback(body(connection, publish(sandbox)))
    note_id = note_id_for(connection.id, callback, None)
    assert runtime.outbox.create(connection.id, note_id, callback)

    def write() -> writer.NoteResult:
        return writer.write_note(
            connection=connection,
            note_id=note_id,
            outbox=runtime.outbox,
            fetcher=services.pdfs,
            halaxy=services.halaxy,
            audit=runtime.audit,
            now=utcnow(),
        )

    def redis_away(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("Redis is unreachable: ConnectionError")

    recorded = NoteState.QUEUED if redis_fails == "before_the_post" else NoteState.POSTED
    moved = runtime.outbox.move
    outcome_moves = iter([redis_away, redis_away, moved])  # Redis back at the third try

    def failing_over(
        connection_id: str, note_id: str, allowed: set[NoteState], to: NoteState, **fields: Any
    ) -> Any:
        move = next(outcome_moves) if to is recorded else moved
        return move(connection_id, note_id, allowed, to, **fields)

    monkeypatch.setattr(runtime.outbox, "move", failing_over)
    if redis_fails == "before_the_post":
        monkeypatch.setattr(services.halaxy, "create", redis_away)
        with pytest.raises(StoreUnavailable):
            write()
        record = runtime.outbox.get(connection.id, note_id)
        assert record is not None
        assert record.state is NoteState.QUEUED
        monkeypatch.undo()
    assert write().outcome is writer.NoteOutcome.POSTED
    record = runtime.outbox.get(connection.id, note_id)
    assert record is not None
    assert record.state is NoteState.POSTED
    assert len(sandbox.halaxy.notes) == 1
    runtime.close()

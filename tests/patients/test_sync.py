"""Patient sync end to end: the receiver, a real Dramatiq worker (threads), the sandbox
Halaxy and platforms over HTTP, and real Redis."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from services.cli.main import cli
from services.sandbox.halaxy import appointment_resource, patient_resource
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import utcnow
from shared.infra.store import LeaseRenewer
from shared.ops.dead_letters import DeadLetterStore
from shared.patients.links import PatientLinks
from tests.helpers import audit_of
from tests.workers import Pipeline, Sandbox, sandbox_connection


def only_client(sandbox: Sandbox, patient_id: str) -> dict[str, Any]:
    [client] = sandbox.physitrack.by_external_id(patient_id)
    return client


@pytest.fixture
def conn(pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier) -> Any:
    return sandbox_connection(pipeline.store, sandbox, verify_key)


def test_created_patient_appears_in_physitrack_with_the_right_fields(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, renewer: LeaseRenewer
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001", given="Jane", preferred="Janie")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    client = only_client(sandbox, "1001")
    assert client == {
        **client,
        "external_id": "1001",
        "first_name": "Jane",  # the official name, not the leading usual "Janie"
        "last_name": "Citizen",
        "year_of_birth": 1984,
        "gender": "f",
        "email": "jane.citizen@example.com",
        "mobile_phone": "+61412345678",
    }
    link = PatientLinks(pipeline.redis, pipeline.keys, conn.id, renewer).get("1001")
    assert link is not None
    assert link.platform_id == str(client["id"])
    assert {r.user_agent for r in sandbox.halaxy.requests} == {
        pipeline.receiver.app.state.deps.settings.user_agent
    }


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"family": "Smith"}, "last_name", "Smith"),
        ({"given": "Janet"}, "first_name", "Janet"),
        ({"email": "new@example.com"}, "email", "new@example.com"),
        ({"mobile": "+61400000001"}, "mobile_phone", "+61400000001"),
        ({"birth_date": "1985-01-02"}, "year_of_birth", 1985),
    ],
)
def test_a_change_in_halaxy_updates_the_same_client(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Any,
    change: dict[str, str],
    field: str,
    value: object,
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    sandbox.halaxy.patients["1001"] = patient_resource("1001", **change)  # type: ignore[arg-type]
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert only_client(sandbox, "1001")[field] == value
    assert [r["method"] for r in sandbox.physitrack.writes()] == ["POST", "PUT"]


def test_an_update_without_changes_writes_nothing(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    # A change Physitrack does not store (the landline) is no change for it either.
    changed = patient_resource("1001")
    changed["telecom"][0]["value"] = "+61211112222"
    sandbox.halaxy.patients["1001"] = changed
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert len(sandbox.physitrack.writes()) == 1


def test_the_same_event_delivered_twice_makes_one_write(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    first = pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-1"])
    second = pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-1"])
    pipeline.drain()
    assert first.json()["accepted"] == ["ev-1"]
    assert second.json()["duplicates"] == ["ev-1"]
    assert len(sandbox.physitrack.writes()) == 1


def test_distinct_events_for_one_patient_at_once_create_one_client(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.faults.latency = 0.05  # widen the window for a race
    pipeline.send(conn, "patient-created", "Patient", ["1001"] * 1, event_ids=["a"])
    for name in ("b", "c", "d", "e"):
        pipeline.send(conn, "patient-updated", "Patient", ["1001"], event_ids=[name])
    pipeline.drain()
    assert len(sandbox.physitrack.by_external_id("1001")) == 1
    assert [r["method"] for r in sandbox.physitrack.writes()] == ["POST"]


@pytest.mark.parametrize("status", ["archived", "blocked", "deceased"])
def test_inactive_patients_are_not_created(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, status: str
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001", status=status)
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    assert sandbox.physitrack.requests == []
    assert pipeline.dead_letters() == []


def test_a_linked_patient_who_is_archived_is_left_as_is(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    sandbox.halaxy.patients["1001"] = patient_resource("1001", status="archived", family="X")
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert len(sandbox.physitrack.writes()) == 1
    assert only_client(sandbox, "1001")["last_name"] == "Citizen"


def test_an_appointment_event_syncs_its_patient_once(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.appointments["A1"] = appointment_resource("A1", "1001")
    sandbox.halaxy.appointments["A2"] = appointment_resource("A2", "1001")
    pipeline.send(conn, "appointment-created", "Appointment", ["A1"])
    pipeline.drain()
    pipeline.send(conn, "appointment-updated", "Appointment", ["A2"])
    pipeline.send(conn, "appointment-deleted", "Appointment", ["A3"])
    pipeline.drain()
    assert only_client(sandbox, "1001")["first_name"] == "Jane"
    assert len(sandbox.physitrack.writes()) == 1
    assert pipeline.dead_letters() == []


def test_invoice_events_are_recorded_and_change_nothing(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    pipeline.send(conn, "invoice-created", "Invoice", ["INV-1"])
    pipeline.drain()
    assert sandbox.physitrack.requests == []
    assert [r for r in sandbox.halaxy.requests if "Invoice" in r.path] == []
    assert pipeline.dead_letters() == []


def test_rest_platform_upserts_by_external_id(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier
) -> None:
    conn = sandbox_connection(pipeline.store, sandbox, verify_key, platform="rest")
    sandbox.halaxy.patients["1001"] = patient_resource("1001", gender="other")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    stored = sandbox.rest.patients["1001"]
    assert (stored["first_name"], stored["gender"], stored["birth_date"]) == (
        "Jane",
        "other",
        "1984-07-21",
    )


def test_a_rate_limited_read_is_deferred_then_done(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.faults.script = [429]
    sandbox.halaxy.faults.retry_after = 1
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    reads = [r for r in sandbox.halaxy.requests if r.path == "/main/Patient/1001"]
    assert [r.status for r in reads] == [429, 200]
    assert reads[1].received_at - reads[0].received_at >= 1.0  # retry-after: 1 honoured
    assert len(sandbox.physitrack.writes()) == 1


def test_5xx_from_halaxy_and_the_platform_are_retried(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.faults.script = [503]
    sandbox.physitrack.faults.script = [502]
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain(timeout_ms=60_000)
    assert len(sandbox.physitrack.by_external_id("1001")) == 1


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("no_birth_date", "birth year (birthDate) is missing"),
        ("halaxy_404", "Halaxy answered 404"),  # the fake has no Patient 1001
        ("platform_401", "check the connection's API key"),
        ("platform_422", "mobile_phone is invalid"),
    ],
)
def test_permanent_problems_go_to_the_dead_letters_at_once(
    pipeline: Pipeline,
    sandbox: Sandbox,
    conn: Any,
    setup: str,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if setup == "no_birth_date":
        sandbox.halaxy.patients["1001"] = patient_resource("1001", birth_date=None)
    elif setup == "platform_401":
        sandbox.halaxy.patients["1001"] = patient_resource("1001")
        sandbox.physitrack.api_keys.clear()
    elif setup == "platform_422":
        sandbox.halaxy.patients["1001"] = patient_resource("1001")
        sandbox.physitrack.reject_with = ["mobile_phone is invalid"]
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    [dead] = pipeline.dead_letters()
    assert dead["kwargs"]["resource_id"] == "1001"
    reads = [r for r in sandbox.halaxy.requests if r.path == "/main/Patient/1001"]
    assert len(reads) == 1  # not retried
    assert sandbox.physitrack.writes() == []
    failed = [line for line in capsys.readouterr().err.splitlines() if "job.failed" in line]
    assert any(reason in line for line in failed), failed


def test_what_the_platform_says_about_a_patient_is_cleaned_before_logs_and_dead_letters(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.physitrack.reject_with = [
        'Client "Jane Citizen" already exists (born 1984-07-21, jane.citizen@example.com)'
    ]
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    logged = capsys.readouterr().err  # as written, redacted
    assert "job.failed" in logged
    [letter] = [
        x
        for x in DeadLetterStore(pipeline.redis, pipeline.keys).list(conn.id)
        if x.resource_id == "1001"
    ]
    for text in (logged, letter.reason):
        for secret in ("Jane Citizen", "1984-07-21", "jane.citizen@example.com"):
            assert secret not in text
    assert "already exists" in letter.reason


# --- Patients not written, and why: FHIR's deceased[x], enquiries, and what ops see ---------


@pytest.mark.parametrize("years", [-1, 1])  # a date of death in the past, or in the future
def test_a_patient_with_a_date_of_death_is_never_created(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, years: int
) -> None:
    died = f"{utcnow().year + years}-02-03"
    sandbox.halaxy.patients["1001"] = patient_resource("1001", died=died)  # status `current`
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    assert sandbox.physitrack.requests == []
    assert pipeline.dead_letters() == []


def test_a_linked_patient_who_dies_is_not_updated_again_and_the_link_says_why(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, renewer: LeaseRenewer
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    sandbox.halaxy.patients["1001"] = patient_resource(
        "1001",
        family="Changed",  # a change that would otherwise be written
        died=f"{utcnow().year - 1}-02-03T10:00:00+10:00",
    )
    for _ in range(2):
        pipeline.send(conn, "patient-updated", "Patient", ["1001"])
        pipeline.drain()
    assert [r["method"] for r in sandbox.physitrack.writes()] == ["POST"]
    assert only_client(sandbox, "1001")["last_name"] == "Citizen"
    link = PatientLinks(pipeline.redis, pipeline.keys, conn.id, renewer).get("1001")
    assert link is not None
    assert (link.stopped, link.platform_id) == ("deceased", str(only_client(sandbox, "1001")["id"]))


def test_an_enquiry_is_not_created_until_it_books_an_appointment(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    sandbox.halaxy.patients["1001"] = patient_resource("1001", status="contact")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    assert sandbox.physitrack.requests == []
    sandbox.halaxy.appointments["A1"] = appointment_resource("A1", "1001")
    pipeline.send(conn, "appointment-created", "Appointment", ["A1"])
    pipeline.drain()
    assert only_client(sandbox, "1001")["first_name"] == "Jane"


def test_a_replayed_message_with_a_dot_id_requests_nothing_from_halaxy(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    """The receiver refuses such ids (422); a message from elsewhere is refused by the worker
    before any request, and dead-lettered at once with its reason."""
    sandbox.halaxy.requests.clear()
    for patient_id in (".", "..", "9" * 65):
        pipeline.broker.enqueue(
            pipeline.broker.get_actor("sync_patient").message(
                connection_id=conn.id, resource_id=patient_id, event="patient-updated", event_id="x"
            )
        )
    pipeline.drain()
    assert [r.path for r in sandbox.halaxy.requests] == []
    assert sorted(d["kwargs"]["resource_id"] for d in pipeline.dead_letters()) == sorted(
        [".", "..", "9" * 65]
    )


def test_every_patient_not_written_is_counted_per_connection_for_ops(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    patients = {
        "2001": patient_resource("2001", status="archived"),
        "2002": patient_resource("2002", died=f"{utcnow().year - 1}"),
        "2003": patient_resource("2003", status="contact"),
        "2004": patient_resource("2004", birth_date="1974-13"),
        "2005": patient_resource("2005", birth_date="19x4"),
        "2006": patient_resource("2006"),
    }
    sandbox.halaxy.patients.update(patients)
    pipeline.send(conn, "patient-created", "Patient", list(patients))
    pipeline.drain()
    # What every process does every few seconds (here the worker runs in the receiver's).
    pipeline.receiver.app.state.deps.metrics.push()
    env = {"BRIDGE_REDIS_NAMESPACE": pipeline.keys.namespace}
    as_json = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    [row] = [r for r in orjson.loads(as_json.stdout)["connections"] if r["id"] == conn.id]
    assert row["patients_not_synced"] == {
        "skipped_inactive": 1,
        "skipped_deceased": 1,
        "skipped_enquiry": 1,
        "skipped_stale": 0,
        "skipped_gender": 0,
        "left_inactive": 0,
        "left_deceased": 0,
        "refused": 2,
    }
    assert row["patients_refused"] == {"birth_date_malformed": 2}
    as_table = CliRunner().invoke(cli, ["status"], env=env).stdout
    assert "birth_date_malformed" in as_table
    settings = pipeline.receiver.app.state.deps.settings
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    [ops_row] = [
        r
        for r in pipeline.receiver.get("/ops/status", headers=admin).json()["connections"]
        if r["id"] == conn.id
    ]
    assert ops_row["patients_refused"] == {"birth_date_malformed": 2}
    page = pipeline.receiver.get("/ops", headers=admin).text
    assert 'id="patients-not-synced"' in page
    assert "skipped_deceased" in page
    assert "birth_date_malformed" in page
    metrics = pipeline.receiver.get("/metrics", headers=admin).text
    for outcome, reason in [
        ("skipped_inactive", ""),
        ("skipped_deceased", ""),
        ("skipped_enquiry", ""),
        ("refused", "birth_date_malformed"),
    ]:
        count = 2.0 if outcome == "refused" else 1.0
        assert (
            f'halaxy_bridge_patient_outcomes_total{{connection_id="{conn.id}",'
            f'outcome="{outcome}",reason="{reason}"}} {count}'
        ) in metrics
    for text in (as_json.stdout, as_table, page, metrics):
        assert "Citizen" not in text
        # The birth dates themselves: a bare "1974" turns up by chance in a metric's float.
        assert "1974-13" not in text
        assert "1984-07-21" not in text
        assert "jane.citizen@example.com" not in text


def test_an_older_patient_version_read_after_a_newer_one_never_overwrites_it(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any, renewer: LeaseRenewer
) -> None:
    """Two deliveries swapped: the newer version is written first, then a read returns the
    older one (a lagging read, a delivery out of order). `meta.lastUpdated` orders them."""
    newer_at = utcnow().replace(microsecond=0)
    older_at = newer_at - timedelta(minutes=5)
    sandbox.halaxy.patients["1001"] = patient_resource(
        "1001", family="Newer", last_updated=newer_at.isoformat().replace("+00:00", "Z")
    )
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    sandbox.halaxy.patients["1001"] = patient_resource(
        "1001", family="Older", last_updated=older_at.isoformat().replace("+00:00", "Z")
    )
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert only_client(sandbox, "1001")["last_name"] == "Newer"
    assert pipeline.dead_letters() == []
    link = PatientLinks(pipeline.redis, pipeline.keys, conn.id, renewer).get("1001")
    assert link is not None
    assert link.source_updated == newer_at.isoformat()
    # A version newer still is written.
    sandbox.halaxy.patients["1001"] = patient_resource(
        "1001",
        family="Newest",
        last_updated=(newer_at + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
    )
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert only_client(sandbox, "1001")["last_name"] == "Newest"


def test_a_gender_the_platform_cannot_take_is_counted_not_dead_lettered_and_tried_again(
    pipeline: Pipeline, sandbox: Sandbox, conn: Any
) -> None:
    """The fake keeps the 2018 rule (gender required, m or f): a patient recorded as `other`
    is sent without one, refused, counted as skipped_gender; once Halaxy's record changes,
    the next Patient event creates them."""
    sandbox.halaxy.patients["1001"] = patient_resource("1001", gender="other")
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    pipeline.drain()
    assert pipeline.dead_letters() == []
    assert sandbox.physitrack.by_external_id("1001") == []
    [refused] = [
        r for r in sandbox.physitrack.requests if r["method"] == "POST" and r["status"] == 422
    ]
    assert refused["path"].endswith("/clients")
    entries = audit_of(pipeline.store).entries(connection_id=conn.id)
    assert any(e.outcome == "refused: gender" for e in entries)
    sandbox.halaxy.patients["1001"] = patient_resource("1001", gender="female")
    pipeline.send(conn, "patient-updated", "Patient", ["1001"])
    pipeline.drain()
    assert only_client(sandbox, "1001")["gender"] == "f"

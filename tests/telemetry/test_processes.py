"""Metrics, status and audit through the real processes: a uvicorn receiver and a Dramatiq
worker count into their own registries, push to Redis, and the receiver's `/metrics`,
`/ops/status` and the CLI show the sum of both."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.sandbox.samples import notification
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds
from shared.infra.config import Settings
from tests.helpers import BIN, auth, process_env, wait_until
from tests.test_processes import receiver, worker_log  # noqa: F401
from tests.workers import Sandbox, sandbox_connection

pytestmark = pytest.mark.slow

PATIENT_NAME = "Wilhelmina Quartermaine"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def quick_pushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both processes push what they counted five times a second (default: every 5 s)."""
    monkeypatch.setenv("BRIDGE_METRICS_PUSH_SECONDS", "0.2")


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"}


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", headers=admin())
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def send_patient(base: str, connection: Connection, event: str, patient_id: str) -> None:
    body = notification(connection.halaxy_base_url, "Patient", [patient_id])
    response = httpx.post(
        f"{base}/webhooks/halaxy/{connection.id}/{event}",
        content=orjson.dumps(body),
        headers={**auth(connection), "Content-Type": "application/json"},
    )
    assert response.status_code == 202


def cli(settings: Settings, *args: str) -> Any:
    done = subprocess.run(
        [str(BIN / "halaxy-bridge"), *args, "--json"],
        env=process_env(settings),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return orjson.loads(done.stdout)


@pytest.fixture
def flow(
    receiver: str,  # noqa: F811
    worker_log: Path,  # noqa: F811
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
) -> tuple[str, Connection, Sandbox]:
    """A patient created then updated, another refused by the platform (a dead letter),
    a wrong webhook secret, and a program note posted to Halaxy."""
    conn = sandbox_connection(store, sandbox, verify_key)
    sandbox.halaxy.patients["4242"] = patient_resource("4242", given=PATIENT_NAME.split()[0])
    send_patient(receiver, conn, "patient-created", "4242")
    wait_until(lambda: len(sandbox.physitrack.clients) == 1, 20, "the patient to be created")
    sandbox.halaxy.patients["4242"] = patient_resource("4242", family=PATIENT_NAME.split()[1])
    send_patient(receiver, conn, "patient-updated", "4242")
    wait_until(
        lambda: any(r["method"] == "PUT" for r in sandbox.physitrack.writes()),
        20,
        "the patient to be updated",
    )

    sandbox.physitrack.reject_with = ["Email is invalid"]  # a refusal: straight to dead letters
    sandbox.halaxy.patients["4343"] = patient_resource("4343")
    send_patient(receiver, conn, "patient-created", "4343")
    wait_until(
        lambda: any(r.get("status") == 422 for r in sandbox.physitrack.requests),
        20,
        "the platform to refuse",
    )
    sandbox.physitrack.reject_with = None

    refused = httpx.post(
        f"{receiver}/webhooks/halaxy/{conn.id}/patient-created",
        content=b"{}",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
    )
    assert refused.status_code == 401

    file_url = sandbox.physitrack_url.removesuffix("/api/v2") + sandbox.physitrack.publish_pdf(
        make_pdf()
    )
    callback = program_callback(
        api_key=conn.program_api_key.get_secret_value(), file_url=file_url, patient_id="4242"
    )
    assert httpx.post(f"{receiver}/webhooks/programs/{conn.id}", json=callback).status_code == 202
    wait_until(lambda: len(sandbox.halaxy.notes) == 1, 20, "the note to reach Halaxy")
    return receiver, conn, sandbox


def test_metrics_add_up_what_the_receiver_and_the_worker_counted(
    flow: tuple[str, Connection, Sandbox],
) -> None:
    url, conn, _ = flow
    cid = conn.id

    def worker_pushed() -> bool:
        samples = scrape(url)
        return value(samples, "halaxy_bridge_notes_total", connection_id=cid) >= 1 and (
            value(samples, "halaxy_bridge_jobs_total", connection_id=cid) >= 4
        )

    wait_until(worker_pushed, 20, "the worker's counts to reach /metrics")
    time.sleep(0.5)  # one more push: nothing still in flight
    m = scrape(url)

    # Counted by the receiver process.
    assert value(m, "halaxy_bridge_webhook_requests_total", route="halaxy", status="202") == 3
    assert value(m, "halaxy_bridge_webhook_requests_total", route="halaxy", status="401") == 1
    assert value(m, "halaxy_bridge_webhook_requests_total", route="programs", status="202") == 1
    events = "halaxy_bridge_webhook_events_total"
    assert value(m, events, connection_id=cid, event="patient-created", outcome="accepted") == 2
    assert value(m, events, connection_id=cid, event="patient-updated", outcome="accepted") == 1
    assert value(m, events, connection_id=cid, event="program", outcome="accepted") == 1
    rejections = "halaxy_bridge_webhook_rejections_total"
    assert value(m, rejections, connection_id=cid, reason="unauthorized") == 1

    # Counted by the worker process.
    jobs = "halaxy_bridge_jobs_total"
    assert value(m, jobs, connection_id=cid, actor="sync_patient", outcome="succeeded") == 2
    assert value(m, jobs, connection_id=cid, actor="sync_patient", outcome="dead") == 1
    assert value(m, jobs, connection_id=cid, actor="write_program_note", outcome="succeeded") == 1
    assert value(m, jobs, connection_id=cid, queue="live") == 4
    durations = "halaxy_bridge_job_duration_seconds_count"
    assert value(m, durations, connection_id=cid, actor="sync_patient") == 3
    upstream = "halaxy_bridge_upstream_requests_total"
    assert value(m, upstream, connection_id=cid, target="halaxy", status="200") >= 3
    assert value(m, upstream, connection_id=cid, target="halaxy", status="201") == 1  # the note
    assert value(m, upstream, connection_id=cid, target="platform", status="422") == 1
    assert value(m, upstream, connection_id=cid, target="platform", status="201") == 1
    latency = "halaxy_bridge_upstream_request_duration_seconds_count"
    assert value(m, latency, connection_id=cid, target="halaxy") >= 4
    assert value(m, "halaxy_bridge_token_refreshes_total", connection_id=cid, outcome="ok") >= 1
    assert value(m, "halaxy_bridge_notes_total", connection_id=cid, outcome="posted") == 1

    # Read from Redis at scrape time.
    assert value(m, "halaxy_bridge_queue_messages", queue="live", state="dead") == 1
    assert ("halaxy_bridge_queue_oldest_message_age_seconds", frozenset({("queue", "live")})) in m
    assert value(m, "halaxy_bridge_parked_notes", connection_id=cid) == 0
    assert value(m, "halaxy_bridge_dead_letters", connection_id=cid) == 1
    assert value(m, "halaxy_bridge_connection_enabled", connection_id=cid) == 1
    last_event = value(
        m, "halaxy_bridge_connection_last_event_timestamp_seconds", connection_id=cid
    )
    last_success = value(
        m, "halaxy_bridge_connection_last_success_timestamp_seconds", connection_id=cid
    )
    assert epoch_seconds() - 120 < last_event <= epoch_seconds()
    assert epoch_seconds() - 120 < last_success <= epoch_seconds()
    # Nothing that names a patient: ids and codes only.
    assert PATIENT_NAME.split()[0] not in httpx.get(f"{url}/metrics", headers=admin()).text


def test_status_shows_each_connections_last_event_success_and_failures(
    flow: tuple[str, Connection, Sandbox], settings: Settings
) -> None:
    url, conn, _ = flow

    def row() -> dict[str, Any]:
        data = httpx.get(f"{url}/ops/status", headers=admin()).json()
        [found] = [c for c in data["connections"] if c["id"] == conn.id]
        return found | {"queues": data["queues"]}

    wait_until(lambda: row()["processed_last_hour"] >= 4, 20, "the worker's counts in status")
    found = row()
    assert found["failures_last_hour"] == 1  # the platform's refusal
    assert found["dead_letters"] == 1
    assert found["last_event_at"] is not None
    assert found["last_success_at"] is not None
    live = next(q for q in found["queues"] if q["queue"] == "live")
    assert live["throughput_per_minute"] > 0

    from_cli = cli(settings, "status")
    [cli_row] = [c for c in from_cli["connections"] if c["id"] == conn.id]
    assert cli_row["failures_last_hour"] == 1
    assert cli_row["last_event_at"] == found["last_event_at"]


def test_audit_records_every_outside_write_and_ops_action_without_phi(
    flow: tuple[str, Connection, Sandbox], settings: Settings
) -> None:
    _, conn, sandbox = flow
    entries = cli(settings, "audit", "--connection", conn.id, "--since", "1h")["entries"]
    actions = [e["action"] for e in entries]
    assert actions[0] == "connection.added"
    assert actions.count("platform.patient_created") == 1
    [refused] = [e for e in entries if e["action"] == "platform.patient_write"]
    assert refused["outcome"].startswith("refused")
    assert "Patient/4343" in refused["resource_ids"]
    assert actions.count("platform.patient_updated") == 1
    assert actions.count("halaxy.note_posted") == 1
    [note] = [e for e in entries if e["action"] == "halaxy.note_posted"]
    docref = sandbox.halaxy.notes[0]["id"]
    assert f"DocumentReference/{docref}" in note["resource_ids"]
    assert "Patient/4242" in note["resource_ids"]
    assert all(e["actor"] == "worker" for e in entries[1:])
    text = orjson.dumps(entries).decode()
    assert PATIENT_NAME.split()[0] not in text
    assert PATIENT_NAME.split()[1] not in text

    later = "2999-01-01T00:00:00+00:00"
    assert cli(settings, "audit", "--connection", conn.id, "--since", later)["entries"] == []
    assert cli(settings, "audit", "--connection", "someone-else")["entries"] == []
    only_notes = cli(settings, "audit", "--connection", conn.id, "--action", "halaxy.")
    assert [e["action"] for e in only_notes["entries"]] == ["halaxy.note_posted"]

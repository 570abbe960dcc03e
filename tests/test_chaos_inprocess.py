"""Chaos in one process: an upstream that fails often, and a clinic's backfill beside
another clinic's live events. Each test prints its figures for the CI log."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

import httpx
import pytest

import shared.halaxy.client as halaxy_client
from services.sandbox.faults import Faults
from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.scheduler.loop import Scheduler
from services.workers.runtime import WorkerRuntime
from shared.connections.onboarding import KeyVerifier
from shared.infra.config import Settings
from shared.notes.outbox import NoteOutbox, NoteState
from shared.patients.reconcile import SweepLog
from tests.workers import Pipeline, Sandbox, sandbox_connection

pytestmark = pytest.mark.chaos


def max_per_minute(moments: list[float]) -> int:
    """The most requests in any 60-second window."""
    window: deque[float] = deque()
    most = 0
    for moment in sorted(moments):
        window.append(moment)
        while moment - window[0] >= 60:
            window.popleft()
        most = max(most, len(window))
    return most


def test_upstream_failing_often_loses_nothing_and_duplicates_no_note(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    base_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    figures: Callable[[str], None],
) -> None:
    patients, programs = 60, 10
    monkeypatch.setattr(halaxy_client, "DEFAULT_TIMEOUT", httpx.Timeout(1.0, connect=1.0))
    monkeypatch.setattr(halaxy_client, "WRITE_TIMEOUT", httpx.Timeout(1.0, connect=1.0))
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    ids = [str(2000 + n) for n in range(patients)]
    for patient_id in ids:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id, family=f"F{patient_id}")
    faults = {
        "error_rate": 0.20,
        "rate_limited_rate": 0.10,
        "timeout_rate": 0.05,
        "timeout_seconds": 1.5,
        "retry_after": 1,
        "seed": 7,
    }
    sandbox.halaxy.faults = Faults(**faults)  # type: ignore[arg-type]
    sandbox.physitrack.faults = Faults(**{**faults, "seed": 8})  # type: ignore[arg-type]
    started = time.monotonic()
    for patient_id in ids:
        pipeline.send(conn, "patient-created", "Patient", [patient_id])
    note_ids = []
    for number in range(programs):
        url = sandbox.physitrack_url.removesuffix("/api/v2") + sandbox.physitrack.publish_pdf(
            make_pdf()
        )
        body = program_callback(
            api_key=conn.program_api_key.get_secret_value(),
            file_url=url,
            patient_id=ids[number],
            name=f"Program {number}",
        )
        note_ids += pipeline.callback(conn, body).json()["accepted"]
    pipeline.drain(timeout_ms=240_000)
    elapsed = time.monotonic() - started

    by_patient = {pid: sandbox.physitrack.by_external_id(pid) for pid in ids}
    missing = [pid for pid, clients in by_patient.items() if not clients]
    duplicated = [pid for pid, clients in by_patient.items() if len(clients) > 1]
    wrong = [pid for pid, c in by_patient.items() if c and c[0]["last_name"] != f"F{pid}"]
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, base_settings.fernet)
    states = [outbox.get(conn.id, note_id) for note_id in note_ids]
    posted = sum(1 for s in states if s is not None and s.state is NoteState.POSTED)
    parked = sum(1 for s in states if s is not None and s.state is NoteState.PARKED)
    titles = [n["description"] for n in sandbox.halaxy.notes]
    duplicate_notes = len(titles) - len(set(titles))
    halaxy_rate = max_per_minute([r.received_at for r in sandbox.halaxy.requests])
    faults_seen = sum(1 for r in sandbox.halaxy.requests if r.status >= 429)
    figures(
        f"upstream chaos: {patients} patient events, {programs} program callbacks in "
        f"{elapsed:.1f} s; Halaxy answers with faults: {faults_seen}; patients missing "
        f"{len(missing)}, duplicated {len(duplicated)}, wrong {len(wrong)}; notes posted "
        f"{posted}, parked {parked}, duplicate notes {duplicate_notes}; peak Halaxy requests "
        f"per minute {halaxy_rate}"
    )
    assert (missing, duplicated, wrong) == ([], [], [])
    assert posted + parked == programs
    assert duplicate_notes == 0
    assert posted <= len(sandbox.halaxy.notes) <= programs  # parked ones may or may not be in
    assert halaxy_rate <= 500
    assert pipeline.dead_letters() == []


def test_one_clinics_backfill_does_not_delay_another_clinics_live_events(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    base_settings: Settings,
    figures: Callable[[str], None],
) -> None:
    clinic_a = sandbox_connection(pipeline.store, sandbox, verify_key, name="Clinic A")
    clinic_b = sandbox_connection(pipeline.store, sandbox, verify_key, name="Clinic B")
    for number in range(2000):
        sandbox.halaxy.patients[f"A{number}"] = patient_resource(f"A{number}")
    sandbox.halaxy.faults.latency = 0.02  # every Halaxy call takes 20 ms
    runtime = WorkerRuntime(base_settings)
    scheduler, sweeps = Scheduler(base_settings, runtime), SweepLog(runtime.redis, runtime.keys)
    for _ in range(100):  # turn by turn, as ticks would, the 2,000 are queued as bulk
        scheduler.sweep_if_due(clinic_a.id)
        if sweeps.last(clinic_a.id) is not None:
            break
    assert sweeps.last(clinic_a.id) is not None
    latencies: list[float] = []
    for number in range(15):
        patient_id = f"B{number}"
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
        sent = time.monotonic()
        pipeline.send(clinic_b, "patient-created", "Patient", [patient_id])
        deadline = sent + 10
        while not sandbox.physitrack.by_external_id(patient_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies.append(time.monotonic() - sent)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
    backfilled = sum(
        1 for c in sandbox.physitrack.clients.values() if str(c["external_id"]).startswith("A")
    )
    p50 = statistics.median(latencies)
    p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    figures(
        f"fairness: clinic A backfilling 2,000 patients ({backfilled} done meanwhile); "
        f"clinic B live events: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    pipeline.broker.flush("bulk")
    runtime.close()
    assert max(latencies) < 5.0

"""Program write-back through real worker processes: a SIGKILL mid-POST, and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.webhook_receiver.app import create_app
from services.workers.messaging import WorkerMaintenance
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.notes.callback import note_id_for, parse_callback
from shared.notes.claims import ProgramClaims
from shared.notes.outbox import NoteOutbox, NoteState
from tests.helpers import BIN, process_env, wait_until
from tests.workers import Sandbox, sandbox_connection

pytestmark = pytest.mark.slow
PATIENT = "1001"


def start_worker(settings: Settings, log: Path, threads: int = 2) -> subprocess.Popen[bytes]:
    """`dramatiq services.workers` in a process group of its own (to kill it whole)."""
    return subprocess.Popen(
        [str(BIN / "dramatiq"), "services.workers", "--processes", "1", "--threads", str(threads)],
        env=process_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)


def test_a_worker_killed_mid_post_leaves_the_note_parked_never_doubled(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    sandbox.halaxy.note_faults = ["timeout_after_store"]  # stores, then keeps the POST open
    sandbox.halaxy.hang_seconds = 90
    conn = sandbox_connection(store, sandbox, verify_key)
    url = sandbox.physitrack_url.removesuffix("/api/v2") + sandbox.physitrack.publish_pdf(
        make_pdf()
    )
    payload = program_callback(
        api_key=conn.program_api_key.get_secret_value(), file_url=url, patient_id=PATIENT
    )
    workers.append(start_worker(settings, tmp_path / "first.log"))
    with TestClient(create_app(settings, verify_key=verify_key)) as receiver:
        response = receiver.post(
            f"/webhooks/programs/{conn.id}",
            content=orjson.dumps(payload),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 202
    wait_until(lambda: len(sandbox.halaxy.notes) == 1, 30, "Halaxy to store the note")
    os.killpg(workers[0].pid, signal.SIGKILL)  # mid-POST: Halaxy has it, the worker never knew
    workers[0].wait(timeout=10)
    killed_at = time.monotonic()

    outbox = NoteOutbox(redis_server_client, Keys(settings.redis_namespace), settings.fernet)
    claims = ProgramClaims(redis_server_client, Keys(settings.redis_namespace))
    note_id = claims.for_callback(conn, parse_callback(payload), None)  # as the receiver did
    record = outbox.get(conn.id, note_id)
    assert record is not None
    assert record.state is NoteState.POSTING

    workers.append(start_worker(settings, tmp_path / "second.log"))

    maintenance = WorkerMaintenance(settings)

    def parked() -> bool:
        maintenance.requeue_from_dead_workers()  # what the scheduler does every few seconds
        found = outbox.get(conn.id, note_id)
        return found is not None and found.state is NoteState.PARKED

    wait_until(parked, 120, "the redelivered note to be parked")
    recovered_in = time.monotonic() - killed_at
    print(f"\nkill mid-POST: parked {recovered_in:.1f} s after the SIGKILL; notes in Halaxy: 1")
    assert len(sandbox.halaxy.notes) == 1
    posts = [r for r in sandbox.halaxy.requests if r.path.endswith("DocumentReference")]
    assert len(posts) == 1


def test_a_19_mb_pdf_is_written_with_little_memory(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
) -> None:
    sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
    conn = sandbox_connection(store, sandbox, verify_key)
    pdf = make_pdf("Big program", size=19 * 1024 * 1024)
    url = sandbox.physitrack_url.removesuffix("/api/v2") + sandbox.physitrack.publish_pdf(pdf)
    callback = parse_callback(
        program_callback(
            api_key=conn.program_api_key.get_secret_value(), file_url=url, patient_id=PATIENT
        )
    )
    note_id = note_id_for(conn.id, callback, None)
    outbox = NoteOutbox(redis_server_client, Keys(settings.redis_namespace), settings.fernet)
    assert outbox.create(conn.id, note_id, callback)
    result = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", conn.id, note_id],
        env=process_env(settings),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    figures = orjson.loads(result.stdout.splitlines()[-1])
    ratio = figures["peak_bytes"] / len(pdf)
    print(
        f"\n19 MB PDF write: peak Python memory {figures['peak_bytes'] / 2**20:.1f} MiB "
        f"= {ratio:.2f}x the PDF ({len(pdf) / 2**20:.1f} MiB); process max RSS "
        f"{figures['maxrss_before_kib'] / 1024:.0f} MiB before the write, "
        f"{figures['maxrss_kib'] / 1024:.0f} MiB after"
    )
    assert figures["outcome"] == "posted"
    [note] = sandbox.halaxy.notes
    assert note["attachments"][0]["size"] == len(pdf)
    assert ratio < 4.0

"""Chaos with real processes: Redis stopped under load, and workers SIGKILLed mid-work.
Each test prints its figures for the CI log."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import dramatiq
import orjson
import pytest
import redis
from starlette.testclient import TestClient

from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.sandbox.samples import notification
from services.webhook_receiver.app import create_app
from services.workers import broker as global_broker
from services.workers.messaging import WorkerMaintenance, build_broker
from services.workers.runtime import WorkerRuntime, provide_runtime
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.jobs import QueueName
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox, NoteState
from shared.ops.status import queue_status
from tests.helpers import auth, wait_until
from tests.notes.test_processes import start_worker, workers  # noqa: F401
from tests.redis_server import RedisServer
from tests.workers import Sandbox, sandbox_connection

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_redis_stopped_under_load_answers_503_never_202_and_loses_nothing(
    settings: Settings,
    private_redis: RedisServer,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    figures: Callable[[str], None],
) -> None:
    private = settings.model_copy(update={"redis_url": private_redis.url})
    client = redis.Redis.from_url(private.redis_url)
    store = ConnectionStore(client, Keys(private.redis_namespace), private.fernet)
    conn = sandbox_connection(store, sandbox, verify_key)
    answers: list[tuple[str, int]] = []
    stop_sending = threading.Event()

    def send(app_client: TestClient) -> None:
        number = 0
        while not stop_sending.is_set():
            patient_id = str(7000 + number)
            sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
            body = notification(conn.halaxy_base_url, "Patient", [patient_id])
            try:
                response = app_client.post(
                    f"/webhooks/halaxy/{conn.id}/patient-created",
                    content=orjson.dumps(body),
                    headers={"Content-Type": "application/json", **auth(conn)},
                )
                answers.append((patient_id, response.status_code))
            except Exception:
                answers.append((patient_id, -1))
            number += 1
            time.sleep(0.01)

    with TestClient(create_app(private, verify_key=verify_key)) as app_client:
        sender = threading.Thread(target=send, args=(app_client,))
        sender.start()
        time.sleep(1.5)
        private_redis.stop()
        time.sleep(2.0)
        private_redis.start()  # the same data directory: AOF brings the queue back
        time.sleep(1.5)
        stop_sending.set()
        sender.join()

    accepted = [pid for pid, status in answers if status == 202]
    refused = [pid for pid, status in answers if status == 503]
    other = [(pid, status) for pid, status in answers if status not in (202, 503)]
    # Work the queue on the restarted Redis with a worker of its own.
    broker = build_broker(private)
    for name in global_broker.get_declared_actors():
        broker.declare_actor(global_broker.get_actor(name))
    provide_runtime(broker, partial(WorkerRuntime, private))
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        broker.join(QueueName.LIVE.value, timeout=60_000)
        broker.join(QueueName.STORM.value, timeout=60_000)  # past a clinic's storm limit
        worker.join()
    finally:
        worker.stop()
    lost = [pid for pid in accepted if not sandbox.physitrack.by_external_id(pid)]
    figures(
        f"redis outage: {len(answers)} webhooks; 202: {len(accepted)}, 503: {len(refused)}, "
        f"other: {len(other)}; accepted but lost after the restart: {len(lost)}"
    )
    assert refused, "Redis was stopped, yet nothing was refused"
    assert other == []
    assert lost == []
    client.close()


def test_workers_killed_every_few_seconds_lose_nothing_and_double_nothing(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    workers: list[subprocess.Popen[bytes]],  # noqa: F811  (the fixture)
    tmp_path: Path,
    figures: Callable[[str], None],
) -> None:
    clinics, per_clinic, callbacks = 5, 100, 50
    # Slow enough upstreams that the kills land in the middle of the work.
    sandbox.halaxy.faults.latency = 0.08
    sandbox.physitrack.faults.latency = 0.05
    connections = [
        sandbox_connection(store, sandbox, verify_key, name=f"C{n}") for n in range(clinics)
    ]
    for _ in range(2):
        workers.append(start_worker(settings, tmp_path / "workers.log", threads=4))
    stop = threading.Event()
    # What the scheduler does every few seconds: bring back a killed worker's messages.
    maintaining = threading.Thread(target=lambda: _maintain(settings, stop))
    maintaining.start()
    kills = 0
    note_ids: list[tuple[str, str]] = []
    try:
        with TestClient(create_app(settings, verify_key=verify_key)) as app_client:
            for index, conn in enumerate(connections):
                ids = [f"{index}-{n}" for n in range(per_clinic)]
                for patient_id in ids:
                    sandbox.halaxy.patients[patient_id] = patient_resource(
                        patient_id, family=f"F{patient_id}"
                    )
                body = notification(conn.halaxy_base_url, "Patient", ids)
                assert (
                    app_client.post(
                        f"/webhooks/halaxy/{conn.id}/patient-created",
                        content=orjson.dumps(body),
                        headers={"Content-Type": "application/json", **auth(conn)},
                    ).status_code
                    == 202
                )
            for number in range(callbacks):
                conn = connections[number % clinics]
                url = sandbox.physitrack_url.removesuffix("/api/v2") + (
                    sandbox.physitrack.publish_pdf(make_pdf())
                )
                response = app_client.post(
                    f"/webhooks/programs/{conn.id}",
                    content=orjson.dumps(
                        program_callback(
                            api_key=conn.program_api_key.get_secret_value(),
                            file_url=url,
                            patient_id=f"{number % clinics}-{number}",
                            name=f"Program {number}",
                        )
                    ),
                    headers={"Content-Type": "application/json"},
                )
                assert response.status_code == 202
                note_ids.append((conn.id, response.json()["accepted"][0]))
        started = time.monotonic()
        progress = []
        while time.monotonic() - started < 12:
            time.sleep(3)
            progress.append(len(sandbox.physitrack.clients))
            victim = workers[kills % 2]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            workers[kills % 2] = start_worker(settings, tmp_path / "workers.log", threads=4)
            kills += 1
        keys = Keys(settings.redis_namespace)
        outbox = NoteOutbox(redis_server_client, keys, settings.fernet)

        def settled() -> bool:
            queues = queue_status(redis_server_client, keys)
            synced = sum(1 for c in sandbox.physitrack.clients.values() if c)
            notes = [outbox.get(c, n) for c, n in note_ids]
            return (
                synced >= clinics * per_clinic
                and all(
                    n is not None and n.state in (NoteState.POSTED, NoteState.PARKED) for n in notes
                )
                and all(q["depth"] == 0 and q["delayed"] == 0 for q in queues)
            )

        wait_until(settled, 150, "all work to settle after the kills")
    finally:
        stop.set()
        maintaining.join()
    expected = {f"{i}-{n}" for i in range(clinics) for n in range(per_clinic)}
    by_external: dict[str, int] = {}
    for client in sandbox.physitrack.clients.values():
        by_external[client["external_id"]] = by_external.get(client["external_id"], 0) + 1
    duplicates = [pid for pid, count in by_external.items() if count > 1]
    missing = expected - set(by_external)
    wrong = [
        c for c in sandbox.physitrack.clients.values() if c["last_name"] != f"F{c['external_id']}"
    ]
    notes = [outbox.get(c, n) for c, n in note_ids]
    posted = sum(1 for n in notes if n is not None and n.state is NoteState.POSTED)
    parked = sum(1 for n in notes if n is not None and n.state is NoteState.PARKED)
    titles = [n["description"] for n in sandbox.halaxy.notes]
    figures(
        f"kill chaos: {clinics * per_clinic} patient events, {callbacks} program callbacks, "
        f"{kills} SIGKILLs (patients synced at each kill: {progress}); "
        f"patients missing {len(missing)}, duplicated {len(duplicates)}, "
        f"wrong {len(wrong)}; notes posted {posted}, parked {parked}, duplicate notes "
        f"{len(titles) - len(set(titles))}"
    )
    assert (sorted(missing), duplicates, wrong) == ([], [], [])
    assert posted + parked == callbacks
    assert len(titles) == len(set(titles))


def _maintain(settings: Settings, stop: threading.Event) -> None:
    maintenance = WorkerMaintenance(settings)
    while not stop.is_set():
        maintenance.requeue_from_dead_workers()
        stop.wait(2.0)

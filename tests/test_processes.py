"""The real processes of the Procfile: uvicorn receiver and a Dramatiq worker, end to end."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from services.sandbox.halaxy import patient_resource
from services.sandbox.samples import notification
from services.sandbox.serve import free_port
from services.workers.messaging import DramatiqJobQueue, build_broker
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.jobs import ActorName, Job, QueueName
from shared.infra.store import Keys
from tests.helpers import BIN, auth, process_env, queued_messages, wait_until
from tests.workers import Sandbox, sandbox_connection

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "receiver.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "uvicorn"), "services.webhook_receiver.app:app", "--port", str(port)],
        env=process_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 20, "the receiver to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def worker_log(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.log"
    with path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "dramatiq"), "services.workers", "--processes", "1", "--threads", "2"],
            env=process_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield path
        finally:
            process.terminate()
            process.wait(timeout=20)


def test_a_webhook_travels_from_the_receiver_process_to_a_worker_process(
    receiver: str,
    worker_log: Path,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    connection = sandbox_connection(store, sandbox, verify_key)
    sandbox.halaxy.patients["4242"] = patient_resource("4242")
    body = notification(connection.halaxy_base_url, "Patient", ["4242"])
    event_id = body["entry"][0]["resource"]["notificationEvent"][0]["id"]
    response = httpx.post(
        f"{receiver}/webhooks/halaxy/{connection.id}/patient-created",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth(connection)},
    )
    assert response.status_code == 202
    assert response.json()["accepted"] == [event_id]

    def synced() -> list[dict[str, object]]:
        lines = worker_log.read_text(errors="replace").splitlines()
        records = [orjson.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("event") == "patient.synced"]

    wait_until(synced, 30, "the worker to sync the patient")
    [record] = synced()
    assert record["event_id"] == event_id
    assert record["connection_id"] == connection.id
    assert record["outcome"] == "created"
    assert [c["external_id"] for c in sandbox.physitrack.clients.values()] == ["4242"]
    wait_until(lambda: not queued_messages(redis_server_client, keys), 10, "the queue to drain")


def test_the_receiver_logs_each_request_once(
    receiver: str, store: ConnectionStore, sandbox: Sandbox, verify_key: KeyVerifier, tmp_path: Path
) -> None:
    """An accepted Halaxy webhook is logged by its handler only; a refusal, and any other
    route, by the receiver's access line (uvicorn's is off)."""
    connection = sandbox_connection(store, sandbox, verify_key)
    url = f"{receiver}/webhooks/halaxy/{connection.id}/patient-created"
    body = orjson.dumps(notification(connection.halaxy_base_url, "Patient", ["77"]))
    json_type = {"Content-Type": "application/json"}
    assert httpx.post(url, content=body, headers={**json_type, **auth(connection)}).is_success
    wrong = {**json_type, "Authorization": "Bearer wrong"}
    assert httpx.post(url, content=body, headers=wrong).status_code == 401
    assert httpx.get(f"{receiver}/healthz?key=not-for-logs").status_code == 200

    def records() -> list[dict[str, object]]:
        lines = (tmp_path / "receiver.log").read_text(errors="replace").splitlines()
        return [orjson.loads(line) for line in lines if line.startswith("{")]

    def request_lines() -> list[dict[str, object]]:
        return [r for r in records() if r["event"] == "http.request"]

    # The fixture's readiness probe, then ours: after it, every line above is written.
    wait_until(lambda: [r["path"] for r in request_lines()].count("/healthz") >= 2, 10, "logs")
    on_the_webhook = [r["status"] for r in request_lines() if connection.id in str(r["path"])]
    assert on_the_webhook == [401]
    assert not [r for r in records() if r.get("logger") == "uvicorn.access"]
    assert "not-for-logs" not in (tmp_path / "receiver.log").read_text()  # no query strings
    by_handler = [r["event"] for r in records() if r.get("connection_id") == connection.id]
    assert by_handler == ["webhook.accepted", "webhook.unauthorized"]


def test_the_receiver_refuses_to_start_with_a_bad_secret_key(settings: Settings) -> None:
    result = subprocess.run(
        [str(BIN / "uvicorn"), "services.webhook_receiver.app:app", "--port", str(free_port())],
        env=process_env(settings, BRIDGE_SECRET_KEY="not-a-fernet-key"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"BRIDGE_SECRET_KEY: is not a Fernet key" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("redis_url", ["env", "redis://127.0.0.1:1/0"])
def test_demo_syncs_a_patient_and_writes_back_a_program_note(
    settings: Settings, redis_url: str, redis_server_client: redis.Redis
) -> None:
    url = settings.redis_url if redis_url == "env" else redis_url
    env = {**process_env(settings), "REDIS_URL": url}
    env.pop("BRIDGE_SECRET_KEY")
    result = subprocess.run(
        [str(BIN / "halaxy-bridge"), "demo"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    for hop in (
        "receiver answered 202",
        "receiver queued sync_patient(patient 1001)",
        "worker fetched Patient/1001 from Halaxy",
        "worker created the client in Physitrack (POST /api/v2/clients -> 201)",
        "worker updated the client in Physitrack (PUT /api/v2/clients/",
        "receiver recorded the note and queued write_program_note",
        "worker fetched the program PDF",
        "worker posted the note to Halaxy: DR-1 'Home program: Knee Rehab Program (assigned",
    ):
        assert hop in output
    assert output.rstrip().endswith("demo: ok")
    if redis_url == "env":
        namespace = re.search(r"namespace (hb-demo-[0-9a-f]+)", output)
        assert namespace is not None
        assert not list(redis_server_client.scan_iter(match=f"{namespace.group(1)}*"))


def test_two_worker_processes_share_one_halaxy_token(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    tmp_path: Path,
) -> None:
    connection = sandbox_connection(store, sandbox, verify_key)
    ids = [str(1000 + i) for i in range(30)]
    for patient_id in ids:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
    workers = [
        subprocess.Popen(
            [str(BIN / "dramatiq"), "services.workers", "--processes", "1", "--threads", "4"],
            env=process_env(settings),
            stdout=(tmp_path / f"worker{n}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for n in range(2)
    ]
    sandbox.halaxy.faults.latency = 0.02  # spread the jobs over both processes
    try:
        wait_until(
            lambda: all(
                "ready for action" in (tmp_path / f"worker{n}.log").read_text() for n in range(2)
            ),
            30,
            "both workers to boot",
        )
        queue = DramatiqJobQueue(build_broker(settings))
        queue.enqueue(
            [
                Job(
                    ActorName.SYNC_PATIENT,
                    QueueName.LIVE,
                    {
                        "connection_id": connection.id,
                        "resource_id": pid,
                        "event": "patient-created",
                        "event_id": f"ev-{pid}",
                    },
                )
                for pid in ids
            ]
        )
        wait_until(lambda: len(sandbox.physitrack.clients) == len(ids), 60, "30 patients synced")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=20)
    served_by = {r.client_id for r in sandbox.halaxy.requests if r.path.startswith("/main/Patient")}
    assert served_by == {connection.halaxy_client_id}
    assert len(sandbox.halaxy.token_requests()) == 1
    logs = "".join((tmp_path / f"worker{n}.log").read_text() for n in range(2))
    assert logs.count('"patient.synced"') == len(ids)
    # both processes did part of the work with the one token
    assert all('"patient.synced"' in (tmp_path / f"worker{n}.log").read_text() for n in range(2))

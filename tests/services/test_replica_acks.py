"""BRIDGE_REPLICA_ACK_MS with a replica that does not acknowledge (SIGSTOPped: connected,
silent): the receiver answers 503 + Retry-After, never a 2xx for a write a failover could
lose, and the sender's retry once the replica is back is taken exactly once; a worker makes no
platform client and posts no note until its guard is on a replica. Real redis-server and
sentinel processes (`tests/redis_server.py`)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.sandbox.samples import notification
from services.webhook_receiver.app import create_app
from services.workers.runtime import WorkerRuntime
from shared.connections import roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import NotReplicated
from shared.infra.store import Keys, redis_client
from shared.notes import NoteState, note_id_for, parse_callback, write_note
from shared.patients import SyncOutcome, sync_patient
from tests.conftest import make_connection
from tests.helpers import audit_of, auth, queued_messages, wait_until
from tests.redis_server import SentinelGroup
from tests.workers import Sandbox, sandbox_connection

pytestmark = pytest.mark.redis

PHYSITRACK_KEY = "physitrack-" + secrets.token_urlsafe(24)
PDF_URL = "https://physitrackuploads.s3.amazonaws.com/pdfs/abc.pdf"


@pytest.fixture
def master(sentinel_settings: Settings) -> Iterator[redis.Redis]:
    client = redis_client(sentinel_settings)
    yield client
    client.close()


@pytest.fixture
def store(master: redis.Redis, sentinel_settings: Settings) -> ConnectionStore:
    keys = Keys(sentinel_settings.redis_namespace)
    return ConnectionStore(master, keys, sentinel_settings.fernet)


@pytest.fixture
def receiver(sentinel_settings: Settings, verify_key: KeyVerifier) -> Iterator[TestClient]:
    settings = sentinel_settings.model_copy(
        update={"physitrack_webhook_keys": SecretStr(PHYSITRACK_KEY)}
    )
    with TestClient(create_app(settings, verify_key=verify_key)) as client:
        yield client


def replica_port(group: SentinelGroup) -> int:
    [port] = [p for p in group.node_ports if p != group.master_port()]
    return port


def halaxy_webhook(receiver: TestClient, connection: Connection, body: dict[str, Any]) -> Any:
    return receiver.post(
        f"/webhooks/halaxy/{connection.id}/patient-created",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth(connection)},
    )


def program_post(receiver: TestClient, store: ConnectionStore, connection: Connection) -> Any:
    """The clinic's own program URL."""
    body = program_callback(
        api_key=connection.program_api_key.get_secret_value(), file_url=PDF_URL, patient_id="1001"
    )
    return receiver.post(f"/webhooks/programs/{connection.id}", json=body)


def physitrack_post(receiver: TestClient, store: ConnectionStore, connection: Connection) -> Any:
    """The deployment's one Physitrack endpoint, routed by the practitioner's token."""
    token = f"token-{connection.id}"
    if not store.get(connection.id).physitrack_practitioners:  # type: ignore[union-attr]
        request = roster.parse_practitioner(
            {"token": token, "halaxy_practitioner": "PR-2001", "api_key": "pt-k", "verify": False}
        )
        roster.add_practitioner(
            store, lambda _: None, connection, request, utcnow(), audit_of(store), "test"
        )
    body = program_callback(
        api_key=PHYSITRACK_KEY, file_url=PDF_URL, patient_id="1001", token=token
    )
    return receiver.post("/webhooks/physitrack/programs", json=body)


def test_a_webhook_no_replica_acknowledged_is_503_and_its_retry_is_queued_once(
    sentinel_group: SentinelGroup,
    receiver: TestClient,
    store: ConnectionStore,
    master: redis.Redis,
    fake_halaxy: Any,
    verify_key: KeyVerifier,
) -> None:
    connection = make_connection(store, fake_halaxy, verify_key)
    first, second = (
        notification(connection.halaxy_base_url, "Patient", [patient_id])
        for patient_id in ("1001", "1002")
    )
    assert halaxy_webhook(receiver, connection, first).status_code == 202
    replica = replica_port(sentinel_group)

    sentinel_group.pause(replica)
    try:
        refused = halaxy_webhook(receiver, connection, second)
        again = halaxy_webhook(receiver, connection, second)  # as a duplicate: no 2xx either
    finally:
        sentinel_group.resume(replica)
    retried = halaxy_webhook(receiver, connection, second)

    assert (refused.status_code, again.status_code) == (503, 503)
    assert refused.headers["Retry-After"]
    assert refused.json()["error"] == "unavailable"
    assert retried.status_code == 202
    assert retried.json()["accepted"] == []  # taken when refused: the retry is its duplicate
    queued = [m["kwargs"]["resource_id"] for m in queued_messages(master, store.keys)]
    assert sorted(queued) == ["1001", "1002"]  # the refused one was kept, and queued once


@pytest.mark.parametrize("post", [program_post, physitrack_post], ids=["own-url", "physitrack"])
def test_a_program_callback_no_replica_acknowledged_is_503_and_its_retry_is_one_note(
    sentinel_group: SentinelGroup,
    receiver: TestClient,
    store: ConnectionStore,
    master: redis.Redis,
    fake_halaxy: Any,
    verify_key: KeyVerifier,
    post: Any,
) -> None:
    connection = make_connection(store, fake_halaxy, verify_key)
    replica = replica_port(sentinel_group)

    sentinel_group.pause(replica)
    try:
        refused = post(receiver, store, connection)
    finally:
        sentinel_group.resume(replica)
    retried = post(receiver, store, connection)

    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert retried.status_code in (200, 202)
    notes = [m["kwargs"]["note_id"] for m in queued_messages(master, store.keys)]
    assert len(set(notes)) == 1


def test_a_worker_creates_no_client_and_posts_no_note_until_its_guard_is_on_a_replica(
    sentinel_group: SentinelGroup,
    sentinel_settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
) -> None:
    connection = sandbox_connection(store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    runtime = WorkerRuntime(sentinel_settings)
    services = runtime.services(connection.id)
    path = sandbox.physitrack.publish_pdf(make_pdf("Knee Rehab Program"))
    file_url = sandbox.physitrack_url.removesuffix("/api/v2") + path
    callback = parse_callback(program_callback(api_key="k", file_url=file_url, patient_id="1001"))
    note_id = note_id_for(connection.id, callback, None)
    assert runtime.outbox.create(connection.id, note_id, callback)

    def sync() -> SyncOutcome:
        links, audit = services.links, runtime.audit
        return sync_patient(services.halaxy, services.accounts, links, audit, "1001")

    def write() -> Any:
        return write_note(
            connection=connection,
            note_id=note_id,
            outbox=runtime.outbox,
            fetcher=services.pdfs,
            halaxy=services.halaxy,
            audit=runtime.audit,
            now=utcnow(),
        )

    replica = replica_port(sentinel_group)
    sentinel_group.pause(replica)
    try:
        with pytest.raises(NotReplicated):
            sync()
        with pytest.raises(NotReplicated):
            write()
    finally:
        sentinel_group.resume(replica)
    assert sandbox.physitrack.by_external_id("1001") == []
    assert sandbox.halaxy.notes == []
    record = runtime.outbox.get(connection.id, note_id)
    assert record is not None
    assert record.state is NoteState.QUEUED  # back, not left `posting` to be parked

    assert sync() is SyncOutcome.CREATED
    assert write().outcome.value == "posted"
    assert len(sandbox.physitrack.by_external_id("1001")) == 1
    assert len(sandbox.halaxy.notes) == 1
    runtime.close()


def test_readyz_warns_when_no_replica_is_there_to_acknowledge(
    sentinel_group: SentinelGroup, receiver: TestClient
) -> None:
    def warnings() -> list[str]:
        response = receiver.get("/readyz")
        assert response.status_code == 200
        found: list[str] = response.json()["warnings"]
        return found

    assert not any("no Redis replica is connected" in w for w in warnings())
    sentinel_group.kill(replica_port(sentinel_group))

    wait_until(
        lambda: any("no Redis replica is connected" in w for w in warnings()),
        10,
        "the warning on /readyz",
    )


def test_a_duplicate_refreshes_its_seen_key_so_the_wait_covers_a_write_of_its_own(
    receiver: TestClient,
    store: ConnectionStore,
    master: redis.Redis,
    fake_halaxy: Any,
    verify_key: KeyVerifier,
) -> None:
    connection = make_connection(store, fake_halaxy, verify_key)
    body = notification(connection.halaxy_base_url, "Patient", ["1001"])
    assert halaxy_webhook(receiver, connection, body).status_code == 202
    [seen] = master.scan_iter(match=store.keys.seen_event(connection.id, "*"))
    full = master.ttl(seen)
    master.expire(seen, 100)

    again = halaxy_webhook(receiver, connection, body)

    assert again.status_code == 202
    assert again.json()["accepted"] == []
    assert master.ttl(seen) > full - 60

"""The Halaxy webhook route through the real app, real Redis and the real Dramatiq broker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import orjson
import pytest
import redis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.samples import notification
from services.webhook_receiver.app import create_app
from shared.connections import onboarding
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from tests.conftest import make_connection
from tests.helpers import auth, post_notification, queued_messages
from tests.redis_server import RedisServer

UNAUTHORIZED = {
    "error": "unauthorized",
    "detail": "missing or wrong Authorization for this connection",
}


def test_accepted_event_is_queued_with_ids_only(
    client: TestClient, connection: Connection, redis_server_client: redis.Redis, keys: Keys
) -> None:
    body = notification(connection.halaxy_base_url, "Patient", ["1001", "1002"])
    response = post_notification(client, connection, body=body)
    assert response.status_code == 202
    event_ids = [e["id"] for e in body["entry"][0]["resource"]["notificationEvent"]]
    assert response.json() == {"accepted": event_ids, "duplicates": []}
    messages = queued_messages(redis_server_client, keys)
    assert [m["actor_name"] for m in messages] == ["sync_patient", "sync_patient"]
    assert [m["kwargs"] for m in messages] == [
        {
            "connection_id": connection.id,
            "resource_id": rid,
            "event": "patient-created",
            "event_id": eid,
        }
        for rid, eid in zip(["1001", "1002"], event_ids, strict=True)
    ]


@pytest.mark.parametrize(
    ("event", "resource_type", "actor"),
    [
        ("patient-updated", "Patient", "sync_patient"),
        ("appointment-created", "Appointment", "sync_appointment"),
        ("appointment-deleted", "Appointment", "sync_appointment"),
        ("invoice-updated", "Invoice", "record_invoice"),
    ],
)
def test_each_event_goes_to_its_actor(
    client: TestClient,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
    event: str,
    resource_type: str,
    actor: str,
) -> None:
    body = notification(connection.halaxy_base_url, resource_type, ["77"])
    assert post_notification(client, connection, event, body).status_code == 202
    [message] = queued_messages(redis_server_client, keys)
    assert message["actor_name"] == actor
    assert message["kwargs"]["event"] == event


@pytest.mark.parametrize("bearer", [True, False])
def test_secret_is_accepted_as_bearer_or_bare(
    client: TestClient, connection: Connection, bearer: bool
) -> None:
    response = post_notification(client, connection, headers=auth(connection, bearer=bearer))
    assert response.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": "wrong-secret"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_missing_or_wrong_auth_is_401_with_one_body(
    client: TestClient,
    connection: Connection,
    headers: dict[str, str],
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    body = notification(connection.halaxy_base_url, "Patient", ["1"])
    response = client.post(
        f"/webhooks/halaxy/{connection.id}/patient-created",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert queued_messages(redis_server_client, keys) == []


def test_another_connections_secret_is_refused(
    client: TestClient,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    connection: Connection,
) -> None:
    other = make_connection(store, fake_halaxy, verify_key, name="Clinic Two")
    response = post_notification(client, connection, headers=auth(other))
    assert response.status_code == 401


def test_rotated_secret_keeps_the_old_one_for_the_grace_period_only(
    client: TestClient, store: ConnectionStore, connection: Connection
) -> None:
    now = utcnow()
    rotated = onboarding.rotate(
        connection, onboarding.RotateRequest(webhook_secret=True, grace_hours=1), now
    )
    store.save(rotated)
    assert post_notification(client, rotated).status_code == 202
    assert post_notification(client, rotated, headers=auth(connection)).status_code == 202
    assert rotated.retired_webhook_secret is not None
    expired = rotated.model_copy(
        update={
            "retired_webhook_secret": rotated.retired_webhook_secret.model_copy(
                update={"valid_until": now - timedelta(seconds=1)}
            )
        }
    )
    store.save(expired)
    assert post_notification(client, expired, headers=auth(connection)).status_code == 401


def test_unknown_and_disabled_connections_get_the_same_404(
    client: TestClient, store: ConnectionStore, connection: Connection
) -> None:
    unknown = connection.model_copy(update={"id": "cn_doesnotexist"})
    first = post_notification(client, unknown)
    store.save(onboarding.disable(connection, utcnow()))
    second = post_notification(client, connection)
    assert first.status_code == second.status_code == 404
    assert (
        first.json()
        == second.json()
        == {
            "error": "unknown_connection",
            "detail": "no such connection",
        }
    )


def test_unknown_event_is_404(client: TestClient, connection: Connection) -> None:
    response = post_notification(client, connection, event="patient-deleted")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_event"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_non_json_is_415(client: TestClient, connection: Connection, content_type: str) -> None:
    response = post_notification(client, connection, headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_fhir_json_content_type_is_accepted(client: TestClient, connection: Connection) -> None:
    response = post_notification(
        client, connection, headers={"Content-Type": "application/fhir+json; charset=utf-8"}
    )
    assert response.status_code == 202


def test_declared_oversize_body_is_refused_before_reading(
    client: TestClient, connection: Connection
) -> None:
    response = post_notification(
        client, connection, body=b"{}", headers={"Content-Length": str(256 * 1024 + 1)}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_streamed_oversize_body_is_cut_off_at_the_cap(
    app: Starlette, connection: Connection
) -> None:
    """At the ASGI level, so we can count how much of an endless body the app pulls."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * 16384, "more_body": pulled < 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    secret = connection.webhook_secret.get_secret_value()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": f"/webhooks/halaxy/{connection.id}/patient-created",
        "raw_path": f"/webhooks/halaxy/{connection.id}/patient-created".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {secret}".encode()),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 443),
        "state": {},
        "app": app,
    }
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert pulled == 256 // 16 + 1, "the receiver kept reading past the cap"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "malformed_json"),
        (b'{"resourceType": "Patient"}', 422, "not_a_notification"),
        (b'"just a string"', 422, "not_a_notification"),
    ],
)
def test_bad_bodies(
    client: TestClient, connection: Connection, body: bytes, status: int, code: str
) -> None:
    response = post_notification(client, connection, body=body)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert set(response.json()) == {"error", "detail"}


def test_focus_on_another_host_is_422_and_nothing_is_queued(
    client: TestClient, connection: Connection, redis_server_client: redis.Redis, keys: Keys
) -> None:
    body = notification("https://eu-api.halaxy.com/main", "Patient", ["1"])
    response = post_notification(client, connection, body=body)
    assert response.status_code == 422
    assert response.json()["error"] == "focus_host"
    assert queued_messages(redis_server_client, keys) == []


@pytest.mark.parametrize("resource_id", [".", "..", "9" * 65])
def test_a_focus_id_of_dots_or_too_long_is_422_and_nothing_is_queued_or_requested(
    client: TestClient,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
    fake_halaxy: FakeHalaxy,
    resource_id: str,
) -> None:
    """`Patient/.` would reach Halaxy as `GET {base}/Patient` (every patient's details) and
    `Patient/..` as `GET {base}`: httpx resolves dot segments."""
    fake_halaxy.requests.clear()
    body = notification(connection.halaxy_base_url, "Patient", [resource_id])
    response = post_notification(client, connection, body=body)
    assert response.status_code == 422
    assert response.json()["error"] == "focus_id"
    assert queued_messages(redis_server_client, keys) == []
    assert fake_halaxy.requests == []


def test_focus_of_the_wrong_type_is_422(client: TestClient, connection: Connection) -> None:
    body = notification(connection.halaxy_base_url, "Invoice", ["1"])
    response = post_notification(client, connection, "patient-created", body)
    assert response.status_code == 422
    assert response.json()["error"] == "focus_type"


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    response = client.get("/webhooks/halaxy/cn_x/patient-created")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_a_redelivered_event_is_queued_once_even_across_an_app_restart(
    settings: Settings,
    verify_key: KeyVerifier,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    body = notification(connection.halaxy_base_url, "Patient", ["1001"])
    with TestClient(create_app(settings, verify_key=verify_key)) as first:
        assert post_notification(first, connection, body=body).json()["duplicates"] == []
    with TestClient(create_app(settings, verify_key=verify_key)) as second:
        response = post_notification(second, connection, body=body)
    event_id = body["entry"][0]["resource"]["notificationEvent"][0]["id"]
    assert response.status_code == 202
    assert response.json() == {"accepted": [], "duplicates": [event_id]}
    assert len(queued_messages(redis_server_client, keys)) == 1
    [seen_key] = list(redis_server_client.scan_iter(match=f"{keys.namespace}:seen:*"))
    assert redis_server_client.ttl(seen_key) >= 7 * 24 * 3600


@dataclass(frozen=True)
class PrivateClinic:
    """A connection on a redis-server of the test's own, which the test may stop or starve."""

    settings: Settings
    redis: redis.Redis
    keys: Keys
    connection: Connection


@pytest.fixture
def private_clinic(
    settings: Settings,
    private_redis: RedisServer,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
) -> Iterator[PrivateClinic]:
    private = settings.model_copy(update={"redis_url": private_redis.url})
    client = redis.Redis.from_url(private_redis.url)
    keys = Keys(private.redis_namespace)
    connection = make_connection(
        ConnectionStore(client, keys, private.fernet), fake_halaxy, verify_key
    )
    yield PrivateClinic(private, client, keys, connection)
    client.close()


def test_an_event_redis_refused_to_queue_is_not_marked_seen(
    private_clinic: PrivateClinic, verify_key: KeyVerifier
) -> None:
    server, keys, connection = private_clinic.redis, private_clinic.keys, private_clinic.connection
    body = notification(connection.halaxy_base_url, "Patient", ["1001"])
    with TestClient(create_app(private_clinic.settings, verify_key=verify_key)) as client:
        server.config_set("maxmemory", 1)  # noeviction: every write is refused, reads work
        try:
            refused = post_notification(client, connection, body=body)
        finally:
            server.config_set("maxmemory", 0)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"].isdigit()
        assert list(server.scan_iter(match=f"{keys.namespace}:seen:*")) == []
        assert queued_messages(server, keys) == []
        taken = post_notification(client, connection, body=body)
    assert taken.status_code == 202
    assert taken.json()["duplicates"] == []
    assert len(queued_messages(server, keys)) == 1


def test_changes_made_elsewhere_apply_to_the_very_next_webhook(
    store: ConnectionStore, connection: Connection, client: TestClient
) -> None:
    """The receiver authenticates against the record it read last, so a rotation, a disable,
    a re-enable or a new base URL made by another process (the CLI, another receiver) must
    not be missed."""

    def post(secret: SecretStr, base_url: str = connection.halaxy_base_url) -> int:
        bearer = {"Authorization": f"Bearer {secret.get_secret_value()}"}
        body = notification(base_url, "Patient", [secrets.token_hex(4)])
        return int(post_notification(client, connection, body=body, headers=bearer).status_code)

    old = connection.webhook_secret
    assert post(old) == 202  # the record is now the one last read
    request = onboarding.RotateRequest(webhook_secret=True, grace_hours=0)
    rotated = onboarding.rotate(connection, request, utcnow())
    store.save(rotated)
    assert (post(rotated.webhook_secret), post(old)) == (202, 401)
    bearer_old = {"Authorization": f"Bearer {old.get_secret_value()}"}
    empty = notification(connection.halaxy_base_url, "Patient", [])  # status only: no events
    for body in (empty, b"{not json", b"x" * (300 * 1024)):
        refused = post_notification(client, connection, body=body, headers=bearer_old)
        assert refused.status_code == 401  # never a 202, 400 or 413 on the revoked secret
    assert post(rotated.webhook_secret) == 202  # the rotated record is now the one last read
    store.save(onboarding.disable(rotated, utcnow()))
    headers = {"Authorization": f"Bearer {rotated.webhook_secret.get_secret_value()}"}
    assert post_notification(client, connection, body=empty, headers=headers).status_code == 404
    assert post(rotated.webhook_secret) == 404
    store.save(rotated)
    assert post(rotated.webhook_secret) == 202
    moved = "https://au-api.halaxy.com/moved"  # focus references are checked against it
    store.save(rotated.model_copy(update={"halaxy_base_url": moved}))
    assert post(rotated.webhook_secret, moved) == 202


def test_503_while_redis_is_down_and_202_once_it_is_back(
    private_clinic: PrivateClinic, private_redis: RedisServer, verify_key: KeyVerifier
) -> None:
    connection = private_clinic.connection
    with TestClient(create_app(private_clinic.settings, verify_key=verify_key)) as client:
        assert post_notification(client, connection).status_code == 202
        private_redis.stop()
        down = [post_notification(client, connection) for _ in range(3)]
        assert [r.status_code for r in down] == [503, 503, 503]
        assert all(r.headers["Retry-After"] == "5" for r in down)
        assert down[0].json()["error"] == "unavailable"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        private_redis.start()
        body = notification(connection.halaxy_base_url, "Patient", ["2002"])
        response = post_notification(client, connection, body=body)
        assert response.status_code == 202
        assert response.json()["accepted"]
        queued = queued_messages(private_clinic.redis, private_clinic.keys)
        # The event accepted before the stop survived it (AOF), and the new one is there too.
        assert [m["kwargs"]["resource_id"] for m in queued] == ["1001", "2002"]


def test_readyz_reports_durability_warnings_of_the_shared_redis(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert isinstance(response.json()["warnings"], list)

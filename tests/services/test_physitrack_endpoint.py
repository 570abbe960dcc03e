"""`POST /webhooks/physitrack/programs`: one endpoint for the deployment, routed by token,
through the real app, real Redis and the real broker (messages queued, not run)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import program_callback
from services.webhook_receiver.app import create_app
from shared.connections import onboarding, roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import AlreadyConnected
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox, NoteState
from shared.notes.unrouted import UnroutedPrograms, UnroutedReason
from tests.conftest import make_connection
from tests.helpers import audit_of, queued_messages

CURRENT = "physitrack-" + secrets.token_urlsafe(24)
RETIRING = "physitrack-" + secrets.token_urlsafe(24)
PDF_URL = "https://physitrackuploads.s3.amazonaws.com/pdfs/abc.pdf"


@pytest.fixture
def physitrack_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"physitrack_webhook_keys": SecretStr(f"{CURRENT},{RETIRING}")}
    )


@pytest.fixture
def endpoint(physitrack_settings: Settings, verify_key: KeyVerifier) -> Iterator[TestClient]:
    with TestClient(create_app(physitrack_settings, verify_key=verify_key)) as client:
        yield client


def add_practitioner(
    store: ConnectionStore, connection: Connection, pr: str, token: str
) -> Connection:
    request = roster.parse_practitioner(
        {"token": token, "halaxy_practitioner": pr, "api_key": "pt-" + pr, "verify": False}
    )
    current = store.get(connection.id)
    assert current is not None
    return roster.add_practitioner(
        store, lambda _: None, current, request, utcnow(), audit_of(store), "test"
    )


def post(client: TestClient, body: dict[str, Any] | bytes) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(
        "/webhooks/physitrack/programs",
        content=content,
        headers={"Content-Type": "application/json"},
    )


def callback(token: str, api_key: str = CURRENT, **fields: Any) -> dict[str, Any]:
    return program_callback(
        api_key=api_key, file_url=PDF_URL, patient_id="1001", token=token, **fields
    )


def unrouted(settings: Settings, client: redis.Redis) -> UnroutedPrograms:
    return UnroutedPrograms(client, Keys(settings.redis_namespace), settings.fernet)


def test_a_known_token_is_queued_for_its_connection_and_answered_200_with_no_body(
    endpoint: TestClient,
    store: ConnectionStore,
    connection: Connection,
    physitrack_settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    add_practitioner(store, connection, "PR-2001", "token-a-" + secrets.token_hex(8))
    token = store.get(connection.id).physitrack_practitioners[0].token.get_secret_value()  # type: ignore[union-attr]
    response = post(endpoint, callback(token))
    assert response.status_code == 200
    assert response.content == b""
    [message] = queued_messages(redis_server_client, keys)
    assert message["actor_name"] == "write_program_note"
    assert message["kwargs"]["connection_id"] == connection.id
    outbox = NoteOutbox(redis_server_client, keys, physitrack_settings.fernet)
    record = outbox.get(connection.id, message["kwargs"]["note_id"])
    assert record is not None
    assert record.state is NoteState.QUEUED
    # Physitrack's retry of the same post: one note (queued again while it waits: harmless,
    # one worker per note and compare-and-set moves).
    assert post(endpoint, callback(token)).status_code == 200
    notes = {m["kwargs"]["note_id"] for m in queued_messages(redis_server_client, keys)}
    assert notes == {message["kwargs"]["note_id"]}


def test_the_retiring_key_is_accepted_and_a_wrong_or_missing_one_is_401(
    endpoint: TestClient,
    physitrack_settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    assert post(endpoint, callback("nobody-1", api_key=RETIRING)).status_code == 200
    wrong = post(endpoint, callback("nobody-2", api_key="x" * 40))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "unauthorized"
    body = callback("nobody-3")
    del body["api_key"]
    assert post(endpoint, body).status_code == 401
    # Only the post with the right key was kept.
    assert unrouted(physitrack_settings, redis_server_client).count() == 1
    assert queued_messages(redis_server_client, keys) == []


def test_the_endpoint_is_off_while_no_key_is_set(client: TestClient) -> None:
    response = post(client, callback("token-x"))
    assert response.status_code == 404


def test_an_unknown_token_is_kept_once_for_ops_and_answered_200(
    endpoint: TestClient,
    physitrack_settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    body = callback("unknown-token-1234")  # one post, sent twice (Physitrack's retry)
    for _ in range(2):
        response = post(endpoint, body)
        assert response.status_code == 200
        assert response.content == b""
    [kept] = unrouted(physitrack_settings, redis_server_client).oldest_first()
    assert kept.reason is UnroutedReason.UNKNOWN_TOKEN
    shown = kept.shown()
    assert shown["token_ends_with"] == "1234"
    assert "unknown-token" not in orjson.dumps(shown).decode()
    assert PDF_URL not in orjson.dumps(shown).decode()
    # Sealed at rest: neither the token nor the link is in Redis in clear.
    raw = b"".join(bytes(v) for v in redis_server_client.hvals(keys.unrouted_programs()))
    # Every ops surface counts it.
    admin = {"Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"}
    assert endpoint.get("/ops/status", headers=admin).json()["unrouted_programs"] == 1
    page = endpoint.get("/ops", headers=admin).text
    assert re.search(r"Unrouted programs: <a [^>]*>1</a>", page)
    assert "halaxy_bridge_unrouted_programs 1.0" in endpoint.get("/metrics", headers=admin).text
    assert b"unknown-token-1234" not in raw
    assert b"physitrackuploads" not in raw
    assert queued_messages(redis_server_client, keys) == []


def test_a_token_of_a_disabled_connection_is_kept_with_that_reason(
    endpoint: TestClient,
    store: ConnectionStore,
    connection: Connection,
    physitrack_settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    token = "token-d-" + secrets.token_hex(8)
    added = add_practitioner(store, connection, "PR-2001", token)
    onboarding.disable_connection(store, added, utcnow(), audit_of(store), "test")
    assert post(endpoint, callback(token)).status_code == 200
    [kept] = unrouted(physitrack_settings, redis_server_client).oldest_first()
    assert kept.reason is UnroutedReason.CONNECTION_DISABLED
    assert queued_messages(redis_server_client, keys) == []


def test_an_expired_link_is_422_and_nothing_is_queued(
    endpoint: TestClient,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    token = "token-e-" + secrets.token_hex(8)
    add_practitioner(store, connection, "PR-2001", token)
    response = post(endpoint, callback(token, when=utcnow() - timedelta(hours=25)))
    assert response.status_code == 422
    assert "expired" in response.json()["detail"]
    assert queued_messages(redis_server_client, keys) == []


def test_a_missing_token_or_patient_id_is_422_naming_the_field(endpoint: TestClient) -> None:
    for name in ("token", "patient_id"):
        body = callback("token-y")
        del body[name]
        response = post(endpoint, body)
        assert response.status_code == 422
        assert name in response.json()["detail"]


def test_a_post_redis_cannot_keep_is_503_so_physitrack_sends_it_again(
    endpoint: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.infra.errors import StoreUnavailable

    def refuse(*_: object) -> str:
        raise StoreUnavailable("redis away")

    monkeypatch.setattr(endpoint.app.state.deps.unrouted, "keep", refuse)  # type: ignore[attr-defined]
    response = post(endpoint, callback("unknown-token-5678"))
    assert response.status_code == 503
    assert response.headers["retry-after"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["token", "patient_id", "file_url", "name", "date", "date_iso", "updated", "extra"]
        ),
        json_values,
        max_size=4,
    )
)
def test_any_body_with_the_right_key_is_taken_or_refused_never_lost(
    endpoint: TestClient,
    physitrack_settings: Settings,
    redis_server_client: redis.Redis,
    changes: dict[str, Any],
) -> None:
    kept = unrouted(physitrack_settings, redis_server_client)
    before = kept.count()
    response = post(endpoint, {**callback("fuzz-token-0000"), **changes})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert kept.count() in (before, before + 1)  # kept (once per distinct post)
        assert kept.count() >= 1
    else:
        assert kept.count() == before
        assert response.json()["error"] == "invalid"


def test_the_endpoint_is_in_the_openapi_document(endpoint: TestClient) -> None:
    paths = endpoint.get("/openapi.json").json()["paths"]
    assert "post" in paths["/webhooks/physitrack/programs"]


def test_tokens_are_unique_across_the_deployment(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    one = make_connection(store, fake_halaxy, verify_key)
    two = make_connection(store, fake_halaxy, verify_key)
    add_practitioner(store, one, "PR-1", "shared-token-" + "x" * 8)
    with pytest.raises(AlreadyConnected) as refused:
        add_practitioner(store, two, "PR-2", "shared-token-" + "x" * 8)
    assert refused.value.connection_id == one.id

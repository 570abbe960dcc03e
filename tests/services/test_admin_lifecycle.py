"""The admin API of a connection's lifecycle: POST …/enable, PATCH …, POST …/pause, …/resume,
…/offboard. Bad bodies are 422 naming their fields (hand-picked and Hypothesis-made), an
unknown id is 404, and neither changes anything."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.config import Settings
from shared.infra.store import Keys
from tests.helpers import audit_of
from tests.services.test_admin_api import admin_headers, create, post_webhook, request_body

LIFECYCLE = [
    ("POST", "/enable"),
    ("PATCH", ""),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("POST", "/offboard"),
]
hypothesis_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def made(client: TestClient, fake_halaxy: FakeHalaxy) -> dict[str, Any]:
    token = "pt-tok-" + secrets.token_hex(8)
    response = create(client, request_body(fake_halaxy.add_key(), practitioners={token: "PR-2002"}))
    assert response.status_code == 201, response.text
    details: dict[str, Any] = response.json()
    details["token"] = token
    return details


NO_BODY = object()


def call(client: TestClient, method: str, path: str, body: Any = NO_BODY, **headers: str) -> Any:
    content = None if body is NO_BODY else orjson.dumps(body)
    extra = {} if body is NO_BODY else {"Content-Type": "application/json"}
    return client.request(
        method, path, content=content, headers={**admin_headers(), **extra, **headers}
    )


def url(connection_id: str, suffix: str = "") -> str:
    return f"/admin/connections/{connection_id}{suffix}"


def snapshot(client: redis.Redis, settings: Settings) -> dict[bytes, Any]:
    """The namespace's keys and their contents' digests, the audit trail aside (its stream,
    its chain head, and the mark that a refusal was audited within the minute)."""
    return {
        bytes(k): client.dump(k)
        for k in client.scan_iter(match=f"{settings.redis_namespace}:*")
        if not bytes(k).endswith((b":audit", b":audit:head"))
        and b":refusal-audited:" not in bytes(k)
    }


@pytest.mark.parametrize(("method", "suffix"), LIFECYCLE)
def test_without_the_admin_token_nothing_is_done(
    client: TestClient, made: dict[str, Any], method: str, suffix: str
) -> None:
    body = {"confirm": made["id"]} if suffix == "/offboard" else {"name": "x"}
    response = client.request(
        method,
        url(made["id"], suffix),
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": "Bearer wrong"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "suffix"), LIFECYCLE)
def test_an_unknown_connection_is_404_and_nothing_changes(
    client: TestClient,
    made: dict[str, Any],
    method: str,
    suffix: str,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    before = snapshot(redis_server_client, settings)
    body = {"confirm": "cn_doesnotexist"} if suffix == "/offboard" else {"name": "x"}

    response = call(client, method, url("cn_doesnotexist", suffix), body)

    assert response.status_code == 404
    assert response.json() == {"error": "unknown_connection", "detail": "no such connection"}
    assert snapshot(redis_server_client, settings) == before
    # The attempt is in the trail: who, what route, and why it was refused.
    last = AuditTrail(redis_server_client, Keys(settings.redis_namespace)).entries()[-1]
    assert (last.actor, last.action, last.outcome) == (
        "bootstrap-admin",
        "access.refused",
        "refused: unknown_connection",
    )


# --- enable -----------------------------------------------------------------------------------


def test_enable_brings_back_a_disabled_connection_with_its_urls(
    client: TestClient, made: dict[str, Any]
) -> None:
    header = made["halaxy_auth_header"]
    assert call(client, "POST", url(made["id"], "/disable")).status_code == 200
    assert post_webhook(client, made["id"], header).status_code == 404

    enabled = call(client, "POST", url(made["id"], "/enable"))  # no body at all

    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["enabled"], enabled.json()["changed"]) == (True, True)
    assert post_webhook(client, made["id"], header).status_code == 202
    again = call(client, "POST", url(made["id"], "/enable"), {})
    assert (again.status_code, again.json()["changed"]) == (200, False)


def test_enable_is_409_when_the_platform_key_was_taken_unless_sharing_is_meant(
    client: TestClient, fake_halaxy: FakeHalaxy
) -> None:
    platform_key = "pt-key-" + secrets.token_hex(8)
    first = create(client, request_body(fake_halaxy.add_key(), platform_api_key=platform_key))
    first_id = first.json()["id"]
    call(client, "POST", url(first_id, "/disable"))
    second = create(client, request_body(fake_halaxy.add_key(), platform_api_key=platform_key))

    refused = call(client, "POST", url(first_id, "/enable"), {})
    meant = call(client, "POST", url(first_id, "/enable"), {"allow_shared_platform_key": True})

    assert refused.status_code == 409
    assert refused.json()["error"] == "already_connected"
    assert second.json()["id"] in refused.json()["detail"]
    assert meant.status_code == 200


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"allow_shared_platform_key": "perhaps"}, "allow_shared_platform_key"),
        ({"enabled": True}, "enabled"),
        ([], "JSON object"),
    ],
)
def test_a_bad_enable_body_is_422_naming_the_field(
    client: TestClient, made: dict[str, Any], store: ConnectionStore, body: Any, named: str
) -> None:
    call(client, "POST", url(made["id"], "/disable"))
    response = call(client, "POST", url(made["id"], "/enable"), body)
    assert response.status_code == 422
    assert named in response.json()["detail"]
    stored = store.get(made["id"])
    assert stored is not None
    assert not stored.enabled


def test_an_enable_body_that_is_not_json_is_415(client: TestClient, made: dict[str, Any]) -> None:
    response = client.post(url(made["id"], "/enable"), content=b"allow=1", headers=admin_headers())
    assert response.status_code == 415


# --- edit -------------------------------------------------------------------------------------


def test_patch_edits_and_answers_what_changed(
    client: TestClient, made: dict[str, Any], store: ConnectionStore
) -> None:
    new = "pt-tok-" + secrets.token_hex(8)
    response = call(
        client,
        "PATCH",
        url(made["id"]),
        {
            "name": "Clinic Renamed",
            "author": None,
            "practitioners": {new: "PR-3003", made["token"]: None},
            "pdf_hosts": ["files.example.com"],
            "platform_base_url": "https://eu.physitrack.com/api/v2",
        },
    )

    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["changed"] == [
        "name",
        "default_author",
        "practitioners",
        "pdf_hosts",
        "platform_base_url",
    ]
    assert (edited["id"], edited["name"], edited["default_author"]) == (
        made["id"],
        "Clinic Renamed",
        None,
    )
    assert edited["practitioners"] == [{"token_ends_with": new[-4:], "role": "PR-3003"}]
    assert new not in response.text
    stored = store.get(made["id"])
    assert stored is not None
    assert stored.practitioners == {new: "PR-3003"}
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.edited"]
    assert entry.actor == "bootstrap-admin"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "say what to change"),
        ({"name": None}, "name"),
        ({"name": 7}, "name"),
        ({"author": "EP-1"}, "PR-123456"),
        ({"practitioners": ["tok"]}, "practitioners"),
        ({"practitioners": {"tok": 5}}, "practitioners.[key]"),
        ({"pdf_hosts": "one.example.com"}, "pdf_hosts"),
        ({"platform_base_url": "ftp://x"}, "https"),
        ({"webhook_secret": "mine"}, "webhook_secret"),
        ({"id": "cn_other"}, "id"),
    ],
)
def test_a_bad_patch_is_422_naming_the_field_and_changes_nothing(
    client: TestClient, made: dict[str, Any], store: ConnectionStore, body: Any, named: str
) -> None:
    before = store.get(made["id"])
    response = call(client, "PATCH", url(made["id"]), body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid"
    assert named in response.json()["detail"]
    assert store.get(made["id"]) == before


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PATCH_FIELDS = st.sampled_from(
    ["name", "author", "practitioners", "pdf_hosts", "platform_base_url", "enabled"]
)


@hypothesis_settings
@given(body=st.dictionaries(PATCH_FIELDS | st.text(max_size=6), JSON, max_size=4) | JSON)
def test_any_patch_body_is_applied_or_refused_with_its_fields_named(
    client: TestClient, made: dict[str, Any], store: ConnectionStore, body: Any
) -> None:
    before = store.get(made["id"])
    response = call(client, "PATCH", url(made["id"]), body)
    assert response.status_code in {200, 422}, response.text
    if response.status_code == 422:
        assert store.get(made["id"]) == before
        detail = response.json()["detail"]
        named = [str(k) for k in body] if isinstance(body, dict) else []
        assert any(n in detail for n in [*named, "JSON object", "say what to change"]), detail
    else:
        assert response.json()["id"] == made["id"]


# --- pause and resume -------------------------------------------------------------------------


def test_pause_keeps_webhooks_answered_and_resume_lifts_it(
    client: TestClient, made: dict[str, Any]
) -> None:
    paused = call(client, "POST", url(made["id"], "/pause"))
    taken = post_webhook(client, made["id"], made["halaxy_auth_header"])
    shown = client.get("/ops/status", headers=admin_headers()).json()
    metrics = client.get("/metrics", headers=admin_headers()).text
    resumed = call(client, "POST", url(made["id"], "/resume"))

    assert paused.status_code == 200
    assert (paused.json()["paused"], paused.json()["changed"]) == (True, True)
    assert taken.status_code == 202
    [row] = [r for r in shown["connections"] if r["id"] == made["id"]]
    assert row["paused"] is True
    assert f'halaxy_bridge_connection_paused{{connection_id="{made["id"]}"}} 1.0' in metrics
    assert f'halaxy_bridge_connection_held_messages{{connection_id="{made["id"]}"}} 0.0' in metrics
    assert resumed.status_code == 200
    assert (resumed.json()["paused"], resumed.json()["changed"]) == (False, True)
    assert resumed.json()["still_held"] == 0


# --- offboard ---------------------------------------------------------------------------------


def test_offboard_needs_the_id_confirmed_in_the_body(
    client: TestClient,
    made: dict[str, Any],
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    before = snapshot(redis_server_client, settings)
    for body in ({}, {"confirm": "cn_someotherone"}, {"confirm": made["id"], "extra": 1}):
        refused = call(client, "POST", url(made["id"], "/offboard"), body)
        assert refused.status_code == 422, body
        assert "confirm" in refused.json()["detail"] or "extra" in refused.json()["detail"]
    assert snapshot(redis_server_client, settings) == before

    done = call(client, "POST", url(made["id"], "/offboard"), {"confirm": made["id"]})

    assert done.status_code == 200, done.text
    assert (done.json()["id"], done.json()["offboarded"]) == (made["id"], True)
    assert store.get(made["id"]) is None
    assert call(client, "GET", url(made["id"])).status_code == 404
    assert post_webhook(client, made["id"], made["halaxy_auth_header"]).status_code == 404
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.offboarded"]
    assert (entry.actor, entry.connection_id) == ("bootstrap-admin", made["id"])


@hypothesis_settings
@given(
    body=st.dictionaries(st.sampled_from(["confirm"]) | st.text(max_size=6), JSON, max_size=3)
    | JSON
)
def test_any_offboard_body_but_the_confirmation_is_refused_and_erases_nothing(
    client: TestClient, made: dict[str, Any], store: ConnectionStore, body: Any
) -> None:
    if isinstance(body, dict) and body == {"confirm": made["id"]}:
        return  # the one body that confirms (Hypothesis does not find it by chance)
    response = call(client, "POST", url(made["id"], "/offboard"), body)
    assert response.status_code == 422, response.text
    assert store.get(made["id"]) is not None

"""Named admins on the receiver: each admin, ops and metrics operation lets in the roles its
OpenAPI `x-role` names and refuses the others (403, changing nothing); 401s say why (missing,
unknown, revoked, expired) without echoing the token; refused actions are audited under the
name of whoever was refused; actions are audited under the caller's name; `/metrics` needs a
credential unless BRIDGE_METRICS_PUBLIC is set."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from typing import Any

import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.webhook_receiver.app import create_app
from services.webhook_receiver.openapi import SPEC
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.admins import AdminStore, Role
from shared.ops.dead_letters import DeadLetterStore
from tests.helpers import bearer, named_admin
from tests.services.test_console import BROWSER, ORIGIN, HtmlForm, Page, letter, refusal, submit
from tests.services.test_console import basic as console_basic

BOOTSTRAP = os.environ["BRIDGE_ADMIN_TOKEN"]
MISSING = "missing admin credential: send Authorization: Bearer <token>"
OPERATIONS = [
    (method.upper(), path, operation["x-role"])
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
    if "x-role" in operation
]


def filled(path: str, connection: Connection) -> str:
    return path.format(
        connection_id=connection.id,
        halaxy_practitioner="PR-2001",
        note_id="nt_none",
        event_id="ev-none",
    )


def audit(client: redis.Redis, keys: Keys) -> AuditTrail:
    return AuditTrail(client, keys)


def refusals(client: redis.Redis, keys: Keys) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.resource_ids, e.outcome)
        for e in audit(client, keys).entries()
        if e.action == "access.refused"
    ]


def test_every_admin_route_has_a_role() -> None:
    """A route under /admin or /ops added without its role in the OpenAPI document fails here."""
    paths = {path for _, path, _ in OPERATIONS}
    guarded = {p for p in SPEC["paths"] if p.startswith(("/admin", "/ops", "/metrics"))}
    assert guarded == paths
    assert {role for *_, role in OPERATIONS} == {"viewer", "operator", "admin"}


@pytest.mark.parametrize("held", list(Role), ids=str)
@pytest.mark.parametrize(
    ("method", "path", "needed"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_each_operation_lets_in_the_roles_it_names_and_refuses_the_others(
    client: TestClient,
    connection: Connection,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    method: str,
    path: str,
    needed: str,
    held: Role,
) -> None:
    token = named_admin(redis_server_client, keys, f"someone-{held}", held)
    before = (store.list(), [e.action for e in audit(redis_server_client, keys).entries()])

    response = client.request(method, filled(path, connection), json={}, headers=bearer(token))

    if held.allows(Role(needed)):
        assert response.status_code not in (401, 403), response.text
        return
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": f"needs the {needed} role; someone-{held} has the {held} role",
    }
    after = [e.action for e in audit(redis_server_client, keys).entries()]
    assert store.list() == before[0]  # nothing changed
    assert after == [*before[1], "access.refused"]  # only the refusal recorded
    route = path.split("{")[0]
    [(actor, what, outcome)] = refusals(redis_server_client, keys)
    assert (actor, outcome) == (f"someone-{held}", f"refused: needs the {needed} role")
    assert what.startswith(f"{method} {route}")


def test_a_refused_read_is_not_audited(
    client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    for headers in ({}, bearer("hbadm_" + "n" * 43)):
        assert client.get("/ops/status", headers=headers).status_code == 401
    assert refusals(redis_server_client, keys) == []


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing admin credential: send Authorization: Bearer <token>"),
        (
            {"Authorization": "Bearer "},
            "missing admin credential: send Authorization: Bearer <token>",
        ),
        (
            {"Authorization": "Token abc"},
            "missing admin credential: send Authorization: Bearer <token>",
        ),
        (bearer("hbadm_" + "u" * 43), "unknown admin token"),
    ],
    ids=["none", "empty", "other-scheme", "unknown"],
)
def test_a_refused_action_with_no_admin_behind_it_is_logged_not_audited(
    client: TestClient,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
    headers: dict[str, str],
    detail: str,
) -> None:
    """Whoever reaches the port can send these: they name nobody and must not fill the trail."""
    response = client.post(f"/admin/connections/{connection.id}/disable", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": detail}
    assert refusals(redis_server_client, keys) == []


def test_a_revoked_token_is_401_saying_so_and_its_attempt_is_audited(
    client: TestClient,
    connection: Connection,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    settings: Settings,
) -> None:
    token = named_admin(redis_server_client, keys, "rex", Role.ADMIN)
    AdminStore(redis_server_client, keys, audit(redis_server_client, keys)).revoke("rex", "ops")

    read = client.get("/admin/connections", headers=bearer(token))
    action = client.post(f"/admin/connections/{connection.id}/disable", headers=bearer(token))

    for response in (read, action):
        assert response.status_code == 401
        assert response.json()["detail"] == "the admin token of rex was revoked"
        assert token not in response.text
    assert store.get(connection.id) == connection
    assert refusals(redis_server_client, keys) == [
        ("rex", "POST /admin/connections/{connection_id}/disable", "refused: token revoked")
    ]
    [entry] = [e for e in audit(redis_server_client, keys).entries() if e.actor == "rex"]
    assert entry.connection_id == connection.id


def test_an_expired_token_is_401_saying_so_and_its_attempt_is_audited(
    client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    token = named_admin(redis_server_client, keys, "eve", Role.OPERATOR, timedelta(hours=1))
    assert client.get("/ops/status", headers=bearer(token)).status_code == 200

    with time_machine.travel(utcnow() + timedelta(hours=2), tick=False):
        read = client.get("/ops/status", headers=bearer(token))
        action = client.post(
            "/ops/dead-letters/purge", json={"all_matching": True}, headers=bearer(token)
        )

    for response in (read, action):
        assert response.status_code == 401
        assert response.json()["detail"].startswith("the admin token of eve expired at ")
    assert refusals(redis_server_client, keys) == [
        ("eve", "POST /ops/dead-letters/purge", "refused: token expired")
    ]


def test_actions_are_audited_under_the_callers_name(
    client: TestClient,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    ann = bearer(named_admin(redis_server_client, keys, "ann@example.com", Role.ADMIN))
    rotated = client.post(
        f"/admin/connections/{connection.id}/rotate", json={"webhook_secret": True}, headers=ann
    )
    disabled = client.post(f"/admin/connections/{connection.id}/disable", headers=bearer(BOOTSTRAP))

    assert (rotated.status_code, disabled.status_code) == (200, 200)
    changes = [
        (e.actor, e.action)
        for e in audit(redis_server_client, keys).entries()
        if e.action.startswith("connection.") and e.actor != "test"
    ]
    assert changes == [
        ("ann@example.com", "connection.rotated"),
        ("bootstrap-admin", "connection.disabled"),
    ]


def basic(password: str, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_named_admin_opens_the_ops_page_with_basic_auth_but_not_the_api(
    client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    token = named_admin(redis_server_client, keys, "vic", Role.VIEWER)

    assert client.get("/ops", headers=basic(token)).status_code == 200
    api = client.get("/ops/status", headers=basic(token))
    assert api.status_code == 401
    assert api.json()["detail"].startswith("missing admin credential")
    refused = client.get("/ops", headers=basic("hbadm_" + "w" * 43))
    assert refused.json()["detail"] == "unknown admin token"
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")


# --- /metrics ------------------------------------------------------------------------------


def test_metrics_need_a_credential(
    client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    viewer = named_admin(redis_server_client, keys, "prometheus", Role.VIEWER)

    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers=bearer("hbadm_" + "m" * 43))

    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert "halaxy_bridge" not in response.text
    for token in (viewer, BOOTSTRAP):
        scraped = client.get("/metrics", headers=bearer(token))
        assert scraped.status_code == 200
        assert "halaxy_bridge_" in scraped.text


def test_metrics_can_be_public(settings: Settings, verify_key: KeyVerifier) -> None:
    public = create_app(settings.model_copy(update={"metrics_public": True}), verify_key=verify_key)
    with TestClient(public) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "halaxy_bridge_" in response.text


def test_metrics_public_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.infra.config import load_settings

    monkeypatch.setenv("BRIDGE_METRICS_PUBLIC", "true")
    assert load_settings().metrics_public is True
    monkeypatch.delenv("BRIDGE_METRICS_PUBLIC")
    assert load_settings().metrics_public is False


# --- any Authorization header ----------------------------------------------------------------

with_app = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@with_app
@given(
    header=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=120
    ).filter(lambda h: h.strip() == h),
    scheme=st.sampled_from(["", "Bearer ", "Basic ", "bearer ", "Token "]),
)
def test_any_authorization_header_is_a_clear_401_never_a_crash(
    client: TestClient, redis_server_client: redis.Redis, keys: Keys, header: str, scheme: str
) -> None:
    value = scheme + header
    answers: list[Any] = [
        client.get("/ops/status", headers={"Authorization": value}),
        client.post("/ops/dead-letters/purge", json={}, headers={"Authorization": value}),
        client.get("/ops", headers={"Authorization": value}),
        client.get("/metrics", headers={"Authorization": value}),
    ]
    for response in answers:
        assert response.status_code == 401, (value, response.text)
        assert response.json()["error"] == "unauthorized"
        if len(header) >= 8:
            assert header not in response.json()["detail"]
    assert refusals(redis_server_client, keys) == []


# --- the console's forms ----------------------------------------------------------------------


def test_a_viewer_sees_the_console_but_cannot_act_and_each_refusal_is_audited_once(
    client: TestClient, connection: Connection, redis_server_client: redis.Redis, keys: Keys
) -> None:
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(letter(connection.id, "m-1"))
    as_vera = {
        **BROWSER,
        "Authorization": console_basic(named_admin(redis_server_client, keys, "vera", Role.VIEWER)),
    }
    as_oscar = {
        **BROWSER,
        "Authorization": console_basic(
            named_admin(redis_server_client, keys, "oscar", Role.OPERATOR)
        ),
    }
    sent = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}

    def replay_form(headers: dict[str, str]) -> HtmlForm:
        page = client.get("/ops/dead-letters", headers=headers)
        assert page.status_code == 200, page.text
        return Page(page.text).form("Replay", "/ops/dead-letters/replay")

    vera_form = replay_form(as_vera)
    refused = submit(client, vera_form, headers={**as_vera, **sent})
    assert "needs the operator role; vera has the viewer role" in refusal(refused, 403, "forbidden")
    # The operator with the viewer's form: its CSRF token is bound to another credential.
    forged = submit(client, vera_form, headers={**as_oscar, **sent})
    assert forged.status_code == 403
    assert [x.id for x in letters.list()] == ["m-1"]

    done = submit(client, replay_form(as_oscar), headers={**as_oscar, **sent})

    assert done.status_code == 200, done.text
    assert letters.list() == []
    trail = [
        (e.actor, e.action, e.outcome)
        for e in audit(redis_server_client, keys).entries()
        if e.actor in ("vera", "oscar")
    ]
    assert trail == [
        ("vera", "access.refused", "refused: needs the operator role"),
        ("oscar", "console.refused", "csrf_invalid"),
        ("oscar", "dead_letter.replayed", "ok"),
    ]

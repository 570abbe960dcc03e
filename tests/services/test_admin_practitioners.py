"""`/admin/connections/{id}/practitioners`: a Physitrack connection's practitioners over the
admin API, behind BRIDGE_ADMIN_TOKEN.

The app's practitioner key check talks to the in-process fake Physitrack (conftest
`verify_platform_key`), whatever host the connection's platform base URL names.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import FakePhysitrack
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from tests.conftest import make_connection
from tests.helpers import audit_of
from tests.services.test_admin_api import REFUSALS, admin_headers, bad_headers
from tests.services.test_fuzz_receiver import assert_error_body

ROW_KEYS = {
    "halaxy_practitioner",
    "token_ends_with",
    "auth",
    "pms_name",
    "default",
    "added_at",
    "rotated_at",
}


def new_token() -> str:
    return "ptok-" + secrets.token_hex(8)


def path(connection: Connection, *rest: str) -> str:
    return "/".join([f"/admin/connections/{connection.id}/practitioners", *rest])


def body(fake_physitrack: FakePhysitrack, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "token": new_token(),
        "halaxy_practitioner": "PR-2001",
        "api_key": fake_physitrack.add_key(),
    }
    data.update(fields)
    return data


def add(client: TestClient, connection: Connection, data: Any) -> Any:
    return post(client, path(connection), data)


def post(client: TestClient, url: str, data: Any) -> Any:
    """POST `data` as JSON, whatever it is (`json=None` would send no body)."""
    headers = {**admin_headers(), "Content-Type": "application/json"}
    return client.post(url, content=orjson.dumps(data), headers=headers)


@pytest.fixture
def added(
    client: TestClient, connection: Connection, fake_physitrack: FakePhysitrack
) -> dict[str, Any]:
    """PR-2001 added through the API; the body it was added with."""
    data = body(fake_physitrack)
    response = add(client, connection, data)
    assert response.status_code == 201, response.text
    return data


# --- authorization ------------------------------------------------------------------------------

ROUTES = [
    ("GET", ""),
    ("POST", ""),
    ("POST", "/PR-2001/rotate"),
    ("DELETE", "/PR-2001"),
]


@pytest.mark.parametrize("kind", ["none", "wrong-token", "no-bearer-prefix", "basic-scheme"])
@pytest.mark.parametrize(("method", "suffix"), ROUTES, ids=[f"{m} {s}" for m, s in ROUTES])
def test_every_route_needs_the_admin_bearer_token(
    client: TestClient,
    connection: Connection,
    added: dict[str, Any],
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
    method: str,
    suffix: str,
    kind: str,
) -> None:
    before = store.get(connection.id)
    data = body(fake_physitrack, halaxy_practitioner="PR-2002")
    if suffix.endswith("/rotate"):
        data = {"token": new_token()}

    response = client.request(
        method, path(connection) + suffix, json=data, headers=bad_headers(kind)
    )

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": REFUSALS[kind]}
    assert store.get(connection.id) == before


# --- list and add -------------------------------------------------------------------------------


def test_add_checks_the_key_and_answers_the_rows_without_secrets(
    client: TestClient,
    connection: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
) -> None:
    assert client.get(path(connection), headers=admin_headers()).json() == {
        "connection_id": connection.id,
        "practitioners": [],
    }
    pms_key = "PmsKey" + secrets.token_hex(16)
    data = body(
        fake_physitrack,
        api_key=fake_physitrack.add_key(pms=("cliniko", pms_key)),
        pms_name="cliniko",
        pms_key=pms_key,
        default=True,
    )

    response = add(client, connection, data)

    assert response.status_code == 201, response.text
    [row] = response.json()["practitioners"]
    assert set(row) == ROW_KEYS
    assert (row["halaxy_practitioner"], row["auth"], row["default"]) == ("PR-2001", "pms", True)
    assert row["token_ends_with"] == data["token"][-4:]
    assert [(r["path"], r["status"]) for r in fake_physitrack.requests] == [
        ("/api/v2/clients", 200)
    ]
    listed = client.get(path(connection), headers=admin_headers())
    assert listed.json() == response.json()
    for answer in (response, listed):
        for secret in (data["token"], data["api_key"], pms_key):
            assert secret not in answer.text
    stored = store.get(connection.id)
    assert stored is not None
    assert stored.practitioner("PR-2001") is not None
    [entry] = [e for e in audit_of(store).entries() if e.action == "practitioner.added"]
    assert (entry.actor, entry.connection_id, entry.resource_ids) == (
        "bootstrap-admin",
        connection.id,
        "PR-2001",
    )


def test_add_with_a_key_physitrack_refuses_is_422_and_stores_nothing(
    client: TestClient,
    connection: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
) -> None:
    data = body(fake_physitrack, api_key="pt-wrong-" + secrets.token_hex(8))

    response = add(client, connection, data)

    assert_error_body(response, 422, "invalid")
    assert "Physitrack refused the practitioner's key" in response.json()["detail"]
    assert data["api_key"] not in response.text
    assert store.get(connection.id) == connection
    assert [e.action for e in audit_of(store).entries()] == ["connection.added"]


def test_add_while_physitrack_fails_is_503(
    client: TestClient,
    connection: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
) -> None:
    fake_physitrack.faults.script.append(502)

    response = add(client, connection, body(fake_physitrack))

    assert_error_body(response, 503, "unavailable")
    assert response.headers["retry-after"]
    assert store.get(connection.id) == connection


def test_add_a_token_another_connection_holds_is_409_naming_it(
    client: TestClient,
    connection: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
) -> None:
    token = new_token()
    holder = make_connection(
        store, fake_halaxy, verify_key, name="Clinic Two", practitioners={token: "PR-9"}
    )

    response = add(client, connection, body(fake_physitrack, token=token))

    assert_error_body(response, 409, "already_connected")
    assert holder.id in response.json()["detail"]
    assert token not in response.text


def test_add_the_same_practitioner_twice_is_422(
    client: TestClient,
    connection: Connection,
    added: dict[str, Any],
    fake_physitrack: FakePhysitrack,
) -> None:
    response = add(client, connection, body(fake_physitrack))
    assert_error_body(response, 422, "invalid")
    assert "practitioners rotate" in response.json()["detail"]


def test_a_rest_connection_takes_no_practitioners(
    client: TestClient,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    fake_physitrack: FakePhysitrack,
) -> None:
    rest = make_connection(
        store, fake_halaxy, verify_key, platform="rest", platform_base_url="https://rest.example"
    )
    response = add(client, rest, body(fake_physitrack))
    assert_error_body(response, 422, "invalid")
    assert "Physitrack connections" in response.json()["detail"]


@pytest.mark.parametrize(("method", "suffix"), ROUTES, ids=[f"{m} {s}" for m, s in ROUTES])
def test_an_unknown_connection_is_404(
    client: TestClient, fake_physitrack: FakePhysitrack, method: str, suffix: str
) -> None:
    data = {"token": new_token()} if suffix.endswith("rotate") else body(fake_physitrack)
    response = client.request(
        method,
        f"/admin/connections/cn_doesnotexist/practitioners{suffix}",
        json=data,
        headers=admin_headers(),
    )
    assert_error_body(response, 404, "unknown_connection")


def test_add_refuses_malformed_json_and_other_media(
    client: TestClient, connection: Connection
) -> None:
    malformed = client.post(
        path(connection),
        content=b"{",
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    not_json = client.post(
        path(connection),
        content=b"token=x",
        headers={**admin_headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error_body(malformed, 400, "malformed_json")
    assert_error_body(not_json, 415)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=6,
)
bodies = st.dictionaries(
    st.sampled_from(
        ["token", "halaxy_practitioner", "api_key", "pms_name", "pms_key", "default", "verify"]
    )
    | st.text(max_size=12),
    json_values,
    max_size=7,
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=bodies | json_values)
def test_generated_add_bodies_are_201_or_422_and_echo_no_secret(
    client: TestClient, connection: Connection, store: ConnectionStore, data: Any
) -> None:
    secrets_given: list[str] = []
    if isinstance(data, dict):
        # Secrets marked with a character no message holds, so an echo is found, not a word of
        # the message the generator happened to write.
        for name in ("token", "api_key", "pms_key"):
            if isinstance(data.get(name), str):
                data[name] = "\u2603" + data[name]
                secrets_given.append(data[name].strip())
        data = {**data, "verify": False}  # the check is tested above; here, the body
    response = add(client, connection, data)
    if response.status_code == 201:
        stored = store.get(connection.id)
        assert stored is not None
        store.replace(stored, connection)  # back to none, for the next example
        return
    assert_error_body(response, 422, "invalid")
    assert store.get(connection.id) == connection
    for secret in secrets_given:
        assert secret not in response.json()["detail"]


@hypothesis_settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=bodies | json_values)
def test_generated_rotation_bodies_are_200_or_422(
    client: TestClient, connection: Connection, added: dict[str, Any], data: Any
) -> None:
    if isinstance(data, dict):
        data = {**data, "verify": False}
    response = post(client, path(connection, "PR-2001", "rotate"), data)
    if response.status_code != 200:
        assert_error_body(response, 422, "invalid")


# --- rotate and remove --------------------------------------------------------------------------


def test_rotate_checks_a_new_key_and_answers_the_rows(
    client: TestClient,
    connection: Connection,
    added: dict[str, Any],
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
) -> None:
    new_key = fake_physitrack.add_key()

    response = client.post(
        path(connection, "PR-2001", "rotate"),
        json={"api_key": new_key, "default": True},
        headers=admin_headers(),
    )

    assert response.status_code == 200, response.text
    [row] = response.json()["practitioners"]
    assert row["default"] is True
    assert row["rotated_at"] is not None
    assert new_key not in response.text
    assert [r["status"] for r in fake_physitrack.requests] == [200, 200]
    [entry] = [e for e in audit_of(store).entries() if e.action == "practitioner.rotated"]
    assert entry.resource_ids == "PR-2001 api_key default"


@pytest.mark.parametrize(
    ("data", "status", "said"),
    [
        ({}, 422, "say what to replace"),
        ({"api_key": "pt-wrong"}, 422, "Physitrack refused"),
        ({"pms_key": "PmsKey0123456789abcdef0123456789"}, 422, "no PMS name"),
        ({"colour": "blue"}, 422, "colour"),
    ],
)
def test_a_bad_rotation_changes_nothing(
    client: TestClient,
    connection: Connection,
    added: dict[str, Any],
    store: ConnectionStore,
    data: dict[str, Any],
    status: int,
    said: str,
) -> None:
    before = store.get(connection.id)
    response = client.post(
        path(connection, "PR-2001", "rotate"), json=data, headers=admin_headers()
    )
    assert_error_body(response, status, "invalid")
    assert said in response.json()["detail"]
    assert store.get(connection.id) == before


@pytest.mark.parametrize(("method", "suffix"), ROUTES[2:], ids=["rotate", "remove"])
def test_an_unknown_practitioner_is_404(
    client: TestClient, connection: Connection, added: dict[str, Any], method: str, suffix: str
) -> None:
    response = client.request(
        method,
        path(connection) + suffix.replace("PR-2001", "PR-404"),
        json={"token": new_token()},
        headers=admin_headers(),
    )
    assert_error_body(response, 404, "unknown_practitioner")


def test_remove_answers_the_rows_left_and_is_audited(
    client: TestClient, connection: Connection, added: dict[str, Any], store: ConnectionStore
) -> None:
    response = client.delete(path(connection, "PR-2001"), headers=admin_headers())

    assert response.status_code == 200, response.text
    assert response.json() == {"connection_id": connection.id, "practitioners": []}
    assert client.delete(path(connection, "PR-2001"), headers=admin_headers()).status_code == 404
    actions = [e.action for e in audit_of(store).entries() if e.action.startswith("practitioner.")]
    assert actions == ["practitioner.added", "practitioner.removed"]


def test_show_connection_lists_the_practitioners(
    client: TestClient, connection: Connection, added: dict[str, Any]
) -> None:
    shown = client.get(f"/admin/connections/{connection.id}", headers=admin_headers())
    [row] = shown.json()["physitrack_practitioners"]
    assert row["halaxy_practitioner"] == "PR-2001"
    assert added["token"] not in shown.text
    assert added["api_key"] not in shown.text

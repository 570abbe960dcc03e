"""`/admin/connections`: the admin API behind BRIDGE_ADMIN_TOKEN, on the receiver app.

The app's key verifier talks to the in-process fake Halaxy (conftest `verify_key`), whatever
host a connection's Halaxy base URL names.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import Any

import orjson
import pytest
import time_machine
from click.testing import CliRunner
from starlette.testclient import TestClient

from services.cli.main import cli
from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.samples import notification
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from tests.helpers import (
    EVENTS,
    PUBLIC_URL,
    SETUP_KEYS,
    WITHHELD,
    assert_key_checked,
    assert_lacks,
    audit_of,
)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"}


def request_body(halaxy_key: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Clinic One",
        "halaxy_key": halaxy_key,
        "region": "au",
        "platform": "physitrack",
        "platform_base_url": "https://au.physitrack.com/api/v2",
        "platform_api_key": "pt-key-" + secrets.token_hex(12),
        "author": "PR-1001",
    }
    body.update(fields)
    return body


def create(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/admin/connections", json=body, headers=admin_headers())


def post_webhook(
    client: TestClient,
    connection_id: str,
    authorization: str,
    base_url: str = "https://au-api.halaxy.com/main",
) -> Any:
    body = notification(base_url, "Patient", [str(secrets.randbelow(10**6))])
    return client.post(
        f"/webhooks/halaxy/{connection_id}/patient-created",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )


@pytest.fixture
def created(client: TestClient, fake_halaxy: FakeHalaxy) -> dict[str, Any]:
    """A connection created through the API (signing on), with every secret it holds."""
    key = fake_halaxy.add_key()
    body = request_body(key, signing=True)
    response = create(client, body)
    assert response.status_code == 201, response.text
    details: dict[str, Any] = response.json()
    details["secrets"] = {
        "webhook secret": details["halaxy_auth_header"].removeprefix("Bearer "),
        "program api key": details["program_api_key"],
        "signing secret": details["signing_secret"],
        "halaxy client secret": key.partition(":")[2],
        "platform api key": body["platform_api_key"],
    }
    return details


def assert_no_secret(text: str, details: dict[str, Any]) -> None:
    for what, secret in details["secrets"].items():
        assert secret not in text, f"the {what} is in the answer"


# --- authorization --------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/admin/connections"),
    ("POST", "/admin/connections"),
    ("GET", "/admin/connections/{id}"),
    ("POST", "/admin/connections/{id}/disable"),
    ("POST", "/admin/connections/{id}/rotate"),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong-token": {"Authorization": "Bearer " + "x" * 40},
    "no-bearer-prefix": None,  # the right token, bare
    "basic-scheme": None,  # the right token, under another scheme
    "empty-bearer": {"Authorization": "Bearer "},
}
MISSING = "missing admin credential: send Authorization: Bearer <token>"
# What each 401 says: the caller learns what to send, or that the token is not known.
REFUSALS = dict.fromkeys(BAD_CREDENTIALS, MISSING) | {"wrong-token": "unknown admin token"}


def bad_headers(kind: str) -> dict[str, str]:
    token = os.environ["BRIDGE_ADMIN_TOKEN"]
    if kind == "no-bearer-prefix":
        return {"Authorization": token}
    if kind == "basic-scheme":
        return {"Authorization": f"Basic {token}"}
    return dict(BAD_CREDENTIALS[kind] or {})


@pytest.mark.parametrize("kind", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_every_endpoint_needs_the_admin_bearer_token(
    client: TestClient,
    created: dict[str, Any],
    fake_halaxy: FakeHalaxy,
    store: ConnectionStore,
    method: str,
    path: str,
    kind: str,
) -> None:
    before = store.list()
    body = request_body(fake_halaxy.add_key(), verify=False)
    if path.endswith("/rotate"):
        body = {"webhook_secret": True}

    response = client.request(
        method, path.format(id=created["id"]), json=body, headers=bad_headers(kind)
    )

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": REFUSALS[kind]}
    assert store.list() == before  # nothing created, disabled or rotated


# --- create ---------------------------------------------------------------------------------


def test_create_answers_the_setup_values(client: TestClient, store: ConnectionStore) -> None:
    response = create(client, request_body("cid-unknown:secret", verify=False))

    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    details = response.json()
    assert set(details) >= SETUP_KEYS
    connection_id = details["id"]
    assert details["webhook_urls"] == {
        event: f"{PUBLIC_URL}/webhooks/halaxy/{connection_id}/{event}" for event in EVENTS
    }
    assert details["program_webhook_url"] == f"{PUBLIC_URL}/webhooks/programs/{connection_id}"
    assert details["halaxy_auth_header"].startswith("Bearer ")
    assert details["signing_secret"] is None
    assert details["default_author"] == "PR-1001"
    [stored] = store.list()
    assert stored.id == connection_id
    assert details["halaxy_auth_header"] == f"Bearer {stored.webhook_secret.get_secret_value()}"
    assert details["program_api_key"] == stored.program_api_key.get_secret_value()


def test_created_auth_header_authenticates_a_webhook(
    client: TestClient, created: dict[str, Any]
) -> None:
    accepted = post_webhook(client, created["id"], created["halaxy_auth_header"])
    refused = post_webhook(client, created["id"], "Bearer " + secrets.token_urlsafe(32))

    assert accepted.status_code == 202, accepted.text
    assert len(accepted.json()["accepted"]) == 1
    assert refused.status_code == 401


def test_create_with_signing_answers_a_whsec_secret(created: dict[str, Any]) -> None:
    assert created["signing_secret"].startswith("whsec_")
    assert created["signing"] is True


def test_create_verifies_the_halaxy_key(
    client: TestClient, fake_halaxy: FakeHalaxy, settings: Settings
) -> None:
    response = create(client, request_body(fake_halaxy.add_key()))

    assert response.status_code == 201, response.text
    assert_key_checked(fake_halaxy, settings.user_agent)


@pytest.mark.parametrize("withheld", WITHHELD.values(), ids=WITHHELD.keys())
def test_create_with_a_key_lacking_permissions_names_each_and_stores_nothing(
    client: TestClient, fake_halaxy: FakeHalaxy, store: ConnectionStore, withheld: frozenset[str]
) -> None:
    response = create(client, request_body(fake_halaxy.add_key(withheld=withheld)))

    assert response.status_code == 422
    assert response.json()["error"] == "invalid"
    assert_lacks(response.json()["detail"], withheld)
    assert store.list() == []
    assert audit_of(store).entries() == []
    assert fake_halaxy.notes == []


def test_create_with_verify_false_makes_no_token_request(
    client: TestClient, fake_halaxy: FakeHalaxy
) -> None:
    response = create(client, request_body("cid-unknown:secret", verify=False))

    assert response.status_code == 201
    assert fake_halaxy.requests == []


def test_create_with_a_refused_key_stores_nothing(
    client: TestClient, fake_halaxy: FakeHalaxy, store: ConnectionStore
) -> None:
    client_id = fake_halaxy.add_key().partition(":")[0]

    response = create(client, request_body(f"{client_id}:wrong-secret"))

    assert response.status_code == 422
    assert response.json()["error"] == "invalid"
    assert "Halaxy key could not be verified" in response.json()["detail"]
    assert "wrong-secret" not in response.text
    assert store.list() == []


INVALID_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "missing-name": ({"name": None}, "name"),
    "unknown-platform": ({"platform": "zoom"}, "platform"),
    "unknown-field": ({"colour": "blue"}, "colour"),
    "external-author": ({"author": "EP-123"}, "author"),
    "external-practitioner": ({"practitioners": {"tok": "EP-1"}}, "practitioner role"),
    "key-without-colon": ({"halaxy_key": "nocolon"}, "CLIENT_ID:CLIENT_SECRET"),
    "region-and-base-url": ({"halaxy_base_url": "https://eu-api.halaxy.com/main"}, "not both"),
    "http-platform-url": ({"platform_base_url": "http://platform.example.test"}, "https"),
    "pdf-hosts-not-a-list": ({"pdf_hosts": "files.example.test"}, "pdf_hosts"),
    "pdf-host-garbage": ({"pdf_hosts": ["bad host!"]}, "host:port"),
    "verify-not-a-bool": ({"verify": "perhaps"}, "verify"),
}


@pytest.mark.parametrize(("change", "named"), INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_create_refuses_an_invalid_body_naming_the_problem(
    client: TestClient,
    store: ConnectionStore,
    change: dict[str, Any],
    named: str,
) -> None:
    body = {**request_body("cid:secret", verify=False), **change}
    body = {key: value for key, value in body.items() if value is not None}

    response = create(client, body)

    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}
    assert response.json()["error"] == "invalid"
    assert named in response.json()["detail"]
    assert store.list() == []


def test_create_refuses_a_body_that_is_not_an_object(client: TestClient) -> None:
    response = client.post("/admin/connections", json=[1, 2], headers=admin_headers())

    assert response.status_code == 422
    assert response.json() == {"error": "invalid", "detail": "the body must be a JSON object"}


def test_create_refuses_malformed_json(client: TestClient) -> None:
    response = client.post(
        "/admin/connections",
        content=b'{"name": ',
        headers={**admin_headers(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_create_refuses_a_body_that_is_not_json(
    client: TestClient, store: ConnectionStore, content_type: str | None
) -> None:
    headers = admin_headers()
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = client.post(
        "/admin/connections",
        content=orjson.dumps(request_body("cid:secret", verify=False)),
        headers=headers,
    )

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert store.list() == []


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_create_refuses_a_halaxy_base_url_with_a_bad_port(
    client: TestClient, store: ConnectionStore, verify: bool
) -> None:
    body = request_body(
        "cid:secret",
        region=None,
        halaxy_base_url="https://halaxy.example.test:abc/main",
        verify=verify,
    )

    response = create(client, body)

    assert response.status_code == 422, response.text
    assert store.list() == []


# --- list and show --------------------------------------------------------------------------


def test_list_and_show_answer_no_secret(client: TestClient, created: dict[str, Any]) -> None:
    listed = client.get("/admin/connections", headers=admin_headers())
    shown = client.get(f"/admin/connections/{created['id']}", headers=admin_headers())

    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["connections"]] == [created["id"]]
    assert shown.status_code == 200
    assert shown.json()["id"] == created["id"]
    assert shown.json()["enabled"] is True
    assert shown.json()["signing"] is True
    assert not set(shown.json()) & {"halaxy_auth_header", "program_api_key", "signing_secret"}
    assert_no_secret(listed.text, created)
    assert_no_secret(shown.text, created)


def test_list_is_empty_at_first(client: TestClient) -> None:
    response = client.get("/admin/connections", headers=admin_headers())

    assert response.status_code == 200
    assert response.json() == {"connections": []}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("POST", "/disable"), ("POST", "/rotate")],
    ids=["show", "disable", "rotate"],
)
def test_unknown_connection_is_404(client: TestClient, method: str, path: str) -> None:
    response = client.request(
        method,
        f"/admin/connections/cn_doesnotexist{path}",
        json={"webhook_secret": True},
        headers=admin_headers(),
    )

    assert response.status_code == 404
    assert response.json() == {"error": "unknown_connection", "detail": "no such connection"}


# --- disable --------------------------------------------------------------------------------


def test_disable_makes_webhooks_404_like_an_unknown_connection(
    client: TestClient, created: dict[str, Any]
) -> None:
    header = created["halaxy_auth_header"]
    assert post_webhook(client, created["id"], header).status_code == 202

    response = client.post(f"/admin/connections/{created['id']}/disable", headers=admin_headers())

    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert_no_secret(response.text, created)
    gone = post_webhook(client, created["id"], header)
    unknown = post_webhook(client, "cn_doesnotexist", header)
    assert gone.status_code == unknown.status_code == 404
    assert gone.json() == unknown.json()
    shown = client.get(f"/admin/connections/{created['id']}", headers=admin_headers())
    assert shown.json()["enabled"] is False


# --- rotate ---------------------------------------------------------------------------------


def rotate(client: TestClient, connection_id: str, body: dict[str, Any]) -> Any:
    return client.post(
        f"/admin/connections/{connection_id}/rotate", json=body, headers=admin_headers()
    )


def test_rotate_webhook_secret_keeps_the_old_one_for_the_grace_period(
    client: TestClient, created: dict[str, Any]
) -> None:
    old = created["halaxy_auth_header"]

    response = rotate(client, created["id"], {"webhook_secret": True})

    assert response.status_code == 200, response.text
    new = response.json()["halaxy_auth_header"]
    assert new != old
    assert set(response.json()) >= SETUP_KEYS
    assert response.json()["program_api_key"] == created["program_api_key"]
    assert post_webhook(client, created["id"], new).status_code == 202
    assert post_webhook(client, created["id"], old).status_code == 202


@pytest.mark.parametrize("grace_hours", [1, 24])
def test_the_old_webhook_secret_is_refused_once_its_grace_has_run_out(
    client: TestClient, created: dict[str, Any], grace_hours: int
) -> None:
    old = created["halaxy_auth_header"]
    rotated = utcnow()
    response = rotate(client, created["id"], {"webhook_secret": True, "grace_hours": grace_hours})
    assert response.status_code == 200, response.text
    new = response.json()["halaxy_auth_header"]
    with time_machine.travel(rotated + timedelta(hours=grace_hours, minutes=-1)):
        assert post_webhook(client, created["id"], old).status_code == 202
    with time_machine.travel(rotated + timedelta(hours=grace_hours, minutes=1)):
        assert post_webhook(client, created["id"], old).status_code == 401
        assert post_webhook(client, created["id"], new).status_code == 202


def test_rotate_webhook_secret_without_grace_refuses_the_old_one(
    client: TestClient, created: dict[str, Any]
) -> None:
    old = created["halaxy_auth_header"]

    response = rotate(client, created["id"], {"webhook_secret": True, "grace_hours": 0})

    assert response.status_code == 200
    assert (
        post_webhook(client, created["id"], response.json()["halaxy_auth_header"]).status_code
        == 202
    )
    assert post_webhook(client, created["id"], old).status_code == 401


@pytest.mark.parametrize(
    ("field", "what"), [("webhook_secret", "webhook secret"), ("program_api_key", "program key")]
)
def test_a_second_rotation_within_the_grace_is_refused_unless_without_grace(
    client: TestClient, created: dict[str, Any], field: str, what: str
) -> None:
    """It would drop the first value at once, while Halaxy (or the platform) may still send
    it: those deliveries would be refused and gone."""
    first = rotate(client, created["id"], {field: True})
    assert first.status_code == 200

    again = rotate(client, created["id"], {field: True})

    assert again.status_code == 422
    assert f"the {what} was rotated recently" in again.json()["detail"]
    if field == "webhook_secret":
        assert post_webhook(client, created["id"], created["halaxy_auth_header"]).status_code == 202
    cut_off = rotate(client, created["id"], {field: True, "grace_hours": 0})  # a leak: cut it off
    assert cut_off.status_code == 200
    if field == "webhook_secret":
        assert post_webhook(client, created["id"], created["halaxy_auth_header"]).status_code == 401


def test_rotate_program_key_and_signing_secret(client: TestClient, created: dict[str, Any]) -> None:
    response = rotate(client, created["id"], {"program_api_key": True, "signing_secret": True})

    assert response.status_code == 200
    assert response.json()["program_api_key"] != created["program_api_key"]
    assert response.json()["signing_secret"] != created["signing_secret"]
    assert response.json()["halaxy_auth_header"] == created["halaxy_auth_header"]


def test_rotate_with_nothing_to_rotate_is_422(
    client: TestClient, created: dict[str, Any], store: ConnectionStore
) -> None:
    before = store.get(created["id"])

    response = rotate(client, created["id"], {})

    assert response.status_code == 422
    assert response.json()["error"] == "invalid"
    assert "say what to rotate" in response.json()["detail"]
    assert store.get(created["id"]) == before


def test_rotate_halaxy_key_refused_leaves_the_connection_unchanged(
    client: TestClient, created: dict[str, Any], store: ConnectionStore, fake_halaxy: FakeHalaxy
) -> None:
    before = store.get(created["id"])
    client_id = fake_halaxy.add_key().partition(":")[0]

    response = rotate(client, created["id"], {"halaxy_key": f"{client_id}:wrong"})

    assert response.status_code == 422
    assert "new Halaxy key could not be verified" in response.json()["detail"]
    assert store.get(created["id"]) == before


@pytest.mark.parametrize("withheld", WITHHELD.values(), ids=WITHHELD.keys())
def test_rotate_to_a_halaxy_key_lacking_permissions_leaves_the_connection_unchanged(
    client: TestClient,
    created: dict[str, Any],
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    withheld: frozenset[str],
) -> None:
    before = store.get(created["id"])
    audited = audit_of(store).entries()

    response = rotate(client, created["id"], {"halaxy_key": fake_halaxy.add_key(withheld=withheld)})

    assert response.status_code == 422
    assert_lacks(response.json()["detail"], withheld)
    assert store.get(created["id"]) == before
    assert audit_of(store).entries() == audited


def test_rotate_halaxy_key_accepted_is_stored(
    client: TestClient, created: dict[str, Any], store: ConnectionStore, fake_halaxy: FakeHalaxy
) -> None:
    client_id, _, client_secret = fake_halaxy.add_key().partition(":")

    response = rotate(client, created["id"], {"halaxy_key": f"{client_id}:{client_secret}"})

    assert response.status_code == 200, response.text
    assert response.json()["halaxy_client_id"] == client_id
    assert client_secret not in response.text
    stored = store.get(created["id"])
    assert stored is not None
    assert stored.halaxy_client_secret.get_secret_value() == client_secret


INVALID_ROTATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "negative-grace": ({"webhook_secret": True, "grace_hours": -1}, "grace_hours"),
    "grace-too-long": ({"webhook_secret": True, "grace_hours": 24 * 15}, "grace_hours"),
    "grace-not-a-number": ({"webhook_secret": True, "grace_hours": "soon"}, "grace_hours"),
    "unknown-field": ({"webhook_secret": True, "colour": "blue"}, "colour"),
}


@pytest.mark.parametrize(
    ("body", "named"), INVALID_ROTATIONS.values(), ids=INVALID_ROTATIONS.keys()
)
def test_rotate_refuses_an_invalid_body(
    client: TestClient,
    created: dict[str, Any],
    store: ConnectionStore,
    body: dict[str, Any],
    named: str,
) -> None:
    before = store.get(created["id"])

    response = rotate(client, created["id"], body)

    assert response.status_code == 422
    assert set(response.json()) == {"error", "detail"}
    assert response.json()["error"] == "invalid"
    assert store.get(created["id"]) == before


@pytest.mark.parametrize(
    ("body", "named"), INVALID_ROTATIONS.values(), ids=INVALID_ROTATIONS.keys()
)
def test_rotate_invalid_body_detail_names_the_field(
    client: TestClient, created: dict[str, Any], body: dict[str, Any], named: str
) -> None:
    response = rotate(client, created["id"], body)

    assert response.status_code == 422
    assert named in response.json()["detail"]


def test_rotate_refuses_a_body_that_is_not_json(
    client: TestClient, created: dict[str, Any]
) -> None:
    response = client.post(
        f"/admin/connections/{created['id']}/rotate",
        content=b"webhook_secret=true",
        headers={**admin_headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415


def test_create_refuses_a_blank_platform_api_key(
    client: TestClient, store: ConnectionStore
) -> None:
    response = create(client, request_body("cid:secret", verify=False, platform_api_key="   "))

    assert response.status_code == 422, response.text
    assert store.list() == []


def test_connection_changes_are_in_the_audit_trail_with_secret_names_only(
    client: TestClient, fake_halaxy: FakeHalaxy, store: ConnectionStore, settings: Settings
) -> None:
    made = create(client, request_body(fake_halaxy.add_key())).json()
    rotated = client.post(
        f"/admin/connections/{made['id']}/rotate",
        json={"webhook_secret": True, "platform_api_key": "pt-new-key-123456"},
        headers=admin_headers(),
    )
    assert rotated.status_code == 200
    assert client.post(
        f"/admin/connections/{made['id']}/disable", headers=admin_headers()
    ).is_success
    result = CliRunner().invoke(
        cli,
        ["audit", "--connection", made["id"], "--json"],
        env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace},
    )
    assert result.exit_code == 0, result.output
    entries = orjson.loads(result.stdout)["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("bootstrap-admin", "connection.added"),
        ("bootstrap-admin", "connection.rotated"),
        ("bootstrap-admin", "connection.disabled"),
    ]
    assert entries[1]["resource_ids"] == "webhook_secret platform_api_key"
    assert "pt-new-key" not in result.stdout

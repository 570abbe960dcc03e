"""Small helpers shared by tests."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import redis

from services.sandbox.halaxy import (
    APPOINTMENTS_RETRIEVE,
    CLINICAL_NOTES_CREATE,
    PATIENTS_RETRIEVE,
    FakeHalaxy,
)
from services.sandbox.physitrack import program_callback
from services.sandbox.samples import notification
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.notes.callback import note_id_for, parse_callback
from shared.notes.outbox import NoteOutbox
from shared.ops.admins import AdminStore, Role

BIN = Path(sys.executable).parent  # the virtualenv's scripts: uvicorn, dramatiq, halaxy-bridge

# The public contract of `connections add --json` and POST /admin/connections.
PUBLIC_URL = "https://bridge.example.test"  # BRIDGE_PUBLIC_URL, as conftest sets it
EVENTS = (
    "patient-created",
    "patient-updated",
    "appointment-created",
    "appointment-updated",
    "appointment-deleted",
    "invoice-created",
    "invoice-updated",
    "invoice-deleted",
)
SETUP_KEYS = {
    "id",
    "halaxy_auth_header",
    "webhook_urls",
    "program_webhook_url",
    "program_api_key",
    "signing_secret",
}


def auth(connection: Connection, bearer: bool = True) -> dict[str, str]:
    secret = connection.webhook_secret.get_secret_value()
    return {"Authorization": f"Bearer {secret}" if bearer else secret}


def post_notification(
    client: Any,
    connection: Connection,
    event: str = "patient-created",
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    if body is None:
        body = notification(connection.halaxy_base_url, "Patient", ["1001"])
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(
        f"/webhooks/halaxy/{connection.id}/{event}",
        content=content,
        headers={"Content-Type": "application/json", **auth(connection), **(headers or {})},
    )


def queued_messages(client: redis.Redis, keys: Keys, queue: str = "live") -> list[dict[str, Any]]:
    """The Dramatiq messages waiting on `queue`, decoded, oldest first."""
    namespace = keys.dramatiq_namespace()
    ids = client.lrange(f"{namespace}:{queue}", 0, -1)
    if not ids:
        return []
    payloads = client.hmget(f"{namespace}:{queue}.msgs", ids)
    return [orjson.loads(p) for p in payloads if p is not None]


def audit_of(store: ConnectionStore) -> AuditTrail:
    """The audit trail next to a connection store (same Redis, same namespace)."""
    return AuditTrail(store.redis, store.keys)


def named_admin(
    client: redis.Redis, keys: Keys, name: str, role: Role, lifetime: timedelta = timedelta(days=1)
) -> str:
    """The token of a new named admin (its addition is in the audit trail, by `test`)."""
    admins = AdminStore(client, keys, AuditTrail(client, keys))
    return admins.add(name, role, utcnow() + lifetime, "test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def recorded_note(
    outbox: NoteOutbox,
    connection_id: str,
    name: str,
    when: datetime,
    token: str = "practitioner-token-1",  # noqa: S107  (a sandbox practitioner token)
) -> str:
    """A program note recorded in the outbox as `queued`, as the receiver records one."""
    callback = parse_callback(
        program_callback(
            api_key="k",
            file_url="https://files.example.com/p.pdf",
            patient_id="1001",
            name=name,
            token=token,
            when=when,
        )
    )
    note_id = note_id_for(connection_id, callback, None)
    assert outbox.create(connection_id, note_id, callback)
    return note_id


# The key permissions the onboarding check proves, in the order it names them; and the keys
# to refuse: each permission withheld in turn, and all of them.
CHECKED_PERMISSIONS = (PATIENTS_RETRIEVE, APPOINTMENTS_RETRIEVE, CLINICAL_NOTES_CREATE)
WITHHELD = {
    **{f"without {p}": frozenset({p}) for p in CHECKED_PERMISSIONS},
    "without all": frozenset(CHECKED_PERMISSIONS),
}


def assert_lacks(detail: str, withheld: frozenset[str]) -> None:
    """`detail` (an error as the CLI or the admin API gives it) names each withheld permission
    in its sentence and in a problem of its own, and no other."""
    named = [p for p in CHECKED_PERMISSIONS if p in withheld]
    assert detail.startswith(f"the Halaxy key lacks: {', '.join(named)}; "), detail
    for permission in CHECKED_PERMISSIONS:
        assert (f"; {permission}: Halaxy answered 403" in detail) == (permission in withheld)


def bearer_from(http: Any, key: str) -> dict[str, str]:
    """The Authorization header of a fresh token for `key` (CLIENT_ID:CLIENT_SECRET), from the
    fake Halaxy that `http` (a TestClient of its app) talks to."""
    client_id, _, secret = key.partition(":")
    token = http.post(
        "/main/oauth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def assert_key_checked(fake: FakeHalaxy, user_agent: str) -> None:
    """The fake Halaxy saw the onboarding key check and nothing else, each request with
    `user_agent`: a token, one Patient and one Appointment read, and the note that can never be
    stored, answered 422 and not stored."""
    assert [(r.method, r.path, r.query, r.status, r.user_agent) for r in fake.requests] == [
        ("POST", "/main/oauth/token", "", 200, user_agent),
        ("GET", "/main/Patient", "_count=1", 200, user_agent),
        ("GET", "/main/Appointment", "_count=1", 200, user_agent),
        ("POST", "/main/DocumentReference", "", 422, user_agent),
    ]
    assert fake.notes == []


def run_together(target: Callable[[], object], count: int, timeout: float | None = None) -> None:
    """Run `target` on `count` threads at once and wait for them all (each up to `timeout`)."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def public_members(module: ModuleType) -> set[str]:
    """What a package's face holds besides its submodules (as httpx's
    tests/test_exported_members.py checks its own)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a product process started by a test: this run's Redis and namespace."""
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "BRIDGE_REDIS_NAMESPACE": settings.redis_namespace,
        "LOG_FORMAT": "json",
        **extra,
    }


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)

"""Connections in real Redis: round trip, and no secret in clear anywhere in Redis."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis
from cryptography.fernet import Fernet, MultiFernet

from services.sandbox.halaxy import FakeHalaxy
from services.webhook_receiver.admin import call
from services.webhook_receiver.responses import ApiError
from shared.connections import onboarding
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionChangedMeanwhile, ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import ConfigError
from shared.infra.store import Keys
from tests.conftest import make_connection
from tests.helpers import audit_of


def every_value(client: redis.Redis, namespace: str) -> bytes:
    """Everything Redis holds under `namespace`, as DUMP would write it to disk."""
    dumped = b""
    for key in client.scan_iter(match=f"{namespace}*"):
        dumped += key + b"\n" + (client.dump(key) or b"") + b"\n"
    return dumped


def secrets_of(connection: Connection) -> list[str]:
    values = [
        connection.halaxy_client_secret,
        connection.platform_api_key,
        connection.webhook_secret,
        connection.program_api_key,
    ]
    if connection.signing_secret is not None:
        values.append(connection.signing_secret)
    for retired in (connection.retired_webhook_secret, connection.retired_program_api_key):
        if retired is not None:
            values.append(retired.value)
    return [v.get_secret_value() for v in values]


def test_round_trip_keeps_every_field(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    connection = make_connection(
        store,
        fake_halaxy,
        verify_key,
        signing=True,
        practitioners={"tok-1": "PR-2"},
        pdf_hosts=["files.example.com"],
    )
    assert store.get(connection.id) == connection
    assert store.list() == [connection]
    assert store.get("cn_missing") is None


def test_no_secret_is_in_clear_in_redis(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    connection = make_connection(store, fake_halaxy, verify_key, signing=True)
    rotated = onboarding.rotate(
        connection,
        onboarding.RotateRequest(webhook_secret=True, program_api_key=True),
        utcnow(),
    )
    store.save(rotated)
    dumped = every_value(redis_server_client, settings.redis_namespace)
    assert connection.id.encode() in dumped  # the dump did read the connection
    secrets = secrets_of(rotated)
    assert len(secrets) == 7
    for secret in secrets:
        assert secret.encode() not in dumped


def test_a_changed_secret_key_is_a_clear_error(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    connection = make_connection(store, fake_halaxy, verify_key)
    other = ConnectionStore(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        other.get(connection.id)


def test_creating_the_same_id_twice_is_refused(
    store: ConnectionStore, connection: Connection
) -> None:
    with pytest.raises(ValueError, match="exists already"):
        store.create(connection)


def test_the_practitioner_map_is_sealed_and_a_plain_one_saved_before_still_opens(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    keys: Keys,
    settings: Settings,
) -> None:
    token = "pt-tok-9c1d77e2a4"  # the platform's practitioner token: it can sign in as them
    connection = make_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-2"})
    assert token.encode() not in every_value(redis_server_client, settings.redis_namespace)
    record = orjson.loads(redis_server_client.get(keys.connection(connection.id)) or b"")
    # The version before reads `practitioners` as a plain map and ignores fields it does not
    # know: during a rolling deploy or after a rollback it opens the record (default author).
    assert record["practitioners"] == {}
    assert isinstance(record.pop("practitioners_sealed"), str)
    # A record saved before the map was sealed holds it in clear: it opens as it did.
    record["practitioners"] = {token: "PR-2"}
    redis_server_client.set(keys.connection(connection.id), orjson.dumps(record))
    reopened = store.get(connection.id)
    assert reopened is not None
    assert reopened == connection
    assert reopened.practitioners == {token: "PR-2"}
    store.save(reopened)  # any save (a rotation, a disable) seals it
    assert token.encode() not in every_value(redis_server_client, settings.redis_namespace)


def test_of_two_changes_made_to_one_reading_only_the_first_is_stored(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    """Two people rotate at once: each is shown the secrets their rotation made, so the
    second must not overwrite the first (which would leave the first person's printed
    secret unstored) nor be stored on top of it. The second is told to look again."""
    connection = make_connection(store, fake_halaxy, verify_key)
    audit = audit_of(store)
    rotation = onboarding.RotateRequest(program_api_key=True)
    first = onboarding.apply_rotation(store, verify_key, connection, rotation, utcnow(), audit, "a")
    for late in (
        lambda: onboarding.apply_rotation(
            store,
            verify_key,
            connection,
            onboarding.RotateRequest(webhook_secret=True),
            utcnow(),
            audit,
            "b",
        ),
        lambda: onboarding.disable_connection(store, connection, utcnow(), audit, "b"),
    ):
        with pytest.raises(ConnectionChangedMeanwhile, match="look at it again"):
            late()
        # The admin API answers it with 409.
    with pytest.raises(ApiError) as answered:
        asyncio.run(call(onboarding.disable_connection, store, connection, utcnow(), audit, "b"))
    assert (answered.value.status, answered.value.code) == (409, "connection_changed")
    assert store.get(connection.id) == first
    assert [e.actor for e in audit.entries() if e.action != "connection.added"] == ["a"]

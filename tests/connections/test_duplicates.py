"""One Halaxy key, one connection: adding the same credentials twice is refused.

Two connections on one Halaxy key would each sync the same patients into the platform, each
creating its own clients (6 platform clients for 3 patients, in the issue). A platform API key
already in use is refused too, unless the operator says sharing it is meant.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.cli.main import cli
from shared.connections import onboarding
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import AlreadyConnected
from tests.helpers import run_together
from tests.services.test_admin_api import admin_headers, create, request_body

PLATFORM_URL = "https://au.physitrack.com/api/v2"


def new_platform_key() -> str:
    return "pt-key-" + secrets.token_hex(12)


def add(settings: Settings, halaxy_key: str, platform_key: str, *extra: str) -> Result:
    """`halaxy-bridge connections add --json --no-verify` under this test's namespace."""
    args = [
        "connections",
        "add",
        "--json",
        "--no-verify",
        "--name",
        "Clinic " + secrets.token_hex(2),
        f"--halaxy-key={halaxy_key}",
        "--platform",
        "physitrack",
        "--platform-base-url",
        PLATFORM_URL,
        f"--platform-api-key={platform_key}",
        *extra,
    ]
    return CliRunner().invoke(cli, args, env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace})


def added_id(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return str(orjson.loads(result.stdout)["id"])


def refused_by(result: Result) -> dict[str, Any]:
    """The one-line JSON error of a refused add (exit 2, nothing on stdout)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    error: dict[str, Any] = orjson.loads(line)
    assert error["error"] == "already_connected"
    return error


def halaxy_key() -> str:
    return f"client-{secrets.token_hex(4)}:{secrets.token_urlsafe(16)}"


# --- the CLI ----------------------------------------------------------------------------------


def test_the_same_halaxy_key_twice_is_refused_naming_the_connection(
    settings: Settings, store: ConnectionStore
) -> None:
    key = halaxy_key()
    first = added_id(add(settings, key, new_platform_key()))

    # Another secret for the same client id is the same key (a re-copied or renewed secret).
    client_id = key.partition(":")[0]
    error = refused_by(add(settings, f"{client_id}:other-secret", new_platform_key()))

    assert first in error["detail"]
    assert client_id in error["detail"]
    assert "other-secret" not in error["detail"]
    assert [c.id for c in store.list()] == [first]


@pytest.mark.parametrize(
    "where",
    [
        ["--region", "AU"],
        ["--halaxy-base-url", "https://AU-API.halaxy.com/main/"],
    ],
    ids=["region-upper-case", "explicit-url"],
)
def test_the_same_halaxy_key_on_the_same_halaxy_is_refused_however_written(
    settings: Settings, store: ConnectionStore, where: list[str]
) -> None:
    key = halaxy_key()
    first = added_id(add(settings, key, new_platform_key(), "--region", "au"))

    refused_by(add(settings, key, new_platform_key(), *where))

    assert [c.id for c in store.list()] == [first]


def test_the_same_client_id_on_another_halaxy_region_is_another_key(
    settings: Settings, store: ConnectionStore
) -> None:
    key = halaxy_key()
    added_id(add(settings, key, new_platform_key(), "--region", "au"))

    added_id(add(settings, key, new_platform_key(), "--region", "eu"))

    assert len(store.list()) == 2


def test_a_platform_key_in_use_is_refused_unless_sharing_is_meant(
    settings: Settings, store: ConnectionStore
) -> None:
    platform_key = new_platform_key()
    first = added_id(add(settings, halaxy_key(), platform_key))

    error = refused_by(add(settings, halaxy_key(), platform_key))
    assert first in error["detail"]
    assert "--allow-shared-platform-key" in error["detail"]
    assert platform_key not in error["detail"]
    assert len(store.list()) == 1

    added_id(add(settings, halaxy_key(), platform_key, "--allow-shared-platform-key"))
    assert len(store.list()) == 2


def test_the_refusal_reads_as_one_line_for_a_person(settings: Settings) -> None:
    key = halaxy_key()
    first = added_id(add(settings, key, new_platform_key()))
    args = ["connections", "add", "--no-verify", "--name", "Again", f"--halaxy-key={key}"]
    args += ["--platform", "rest", "--platform-base-url", "https://rest.example.test"]
    args += ["--platform-api-key", new_platform_key()]

    result = CliRunner().invoke(cli, args, env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace})

    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: connection ")
    assert first in line


def test_a_disabled_connection_does_not_hold_its_credentials(
    settings: Settings, store: ConnectionStore
) -> None:
    key, platform_key = halaxy_key(), new_platform_key()
    first = added_id(add(settings, key, platform_key))
    disabled = CliRunner().invoke(
        cli,
        ["connections", "disable", first, "--yes"],
        env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace},
    )
    assert disabled.exit_code == 0, disabled.output

    second = added_id(add(settings, key, platform_key))

    assert {c.id: c.enabled for c in store.list()} == {first: False, second: True}


def test_rotating_to_a_halaxy_key_another_connection_holds_is_refused(
    settings: Settings, store: ConnectionStore
) -> None:
    key = halaxy_key()
    first = added_id(add(settings, key, new_platform_key()))
    second = added_id(add(settings, halaxy_key(), new_platform_key()))
    before = store.get(second)

    result = CliRunner().invoke(
        cli,
        ["connections", "rotate", second, "--json", "--no-verify", f"--halaxy-key={key}"],
        env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace},
    )

    assert first in refused_by(result)["detail"]
    assert store.get(second) == before


# --- the admin API ----------------------------------------------------------------------------


def test_the_admin_api_refuses_the_same_credentials_with_409(
    client: TestClient, fake_halaxy: Any
) -> None:
    key = fake_halaxy.add_key()
    first = create(client, request_body(key))
    assert first.status_code == 201, first.text

    again = create(client, request_body(key))

    assert again.status_code == 409
    assert again.json()["error"] == "already_connected"
    assert first.json()["id"] in again.json()["detail"]
    listed = client.get("/admin/connections", headers=admin_headers()).json()
    assert [c["id"] for c in listed["connections"]] == [first.json()["id"]]


def test_the_admin_api_shares_a_platform_key_only_when_asked(
    client: TestClient, fake_halaxy: Any
) -> None:
    platform_key = new_platform_key()
    body = request_body(fake_halaxy.add_key(), platform_api_key=platform_key)
    assert create(client, body).status_code == 201

    second = request_body(fake_halaxy.add_key(), platform_api_key=platform_key)
    assert create(client, second).status_code == 409
    assert create(client, {**second, "allow_shared_platform_key": True}).status_code == 201


# --- two adds at once ---------------------------------------------------------------------------


def connection_for(key: str) -> Connection:
    request = onboarding.parse_request(
        {
            "name": "Racing Clinic",
            "halaxy_key": key,
            "platform": "physitrack",
            "platform_base_url": PLATFORM_URL,
            "platform_api_key": new_platform_key(),
            "verify": False,
        }
    )
    return onboarding.build_connection(request, utcnow())


def test_of_two_adds_at_once_with_one_key_only_one_is_stored(
    settings: Settings, store: ConnectionStore
) -> None:
    """Both adds read the stored connections (none) before either writes: a check made
    apart from the write would let both through. The second must be checked again."""
    key = halaxy_key()
    both_read = threading.Barrier(2, timeout=10)
    refuse = onboarding.duplicate_refusal()
    first_read: set[int] = set()

    def refuse_after_both_read(new: Connection, stored: Sequence[Connection]) -> None:
        refuse(new, stored)
        if threading.get_ident() not in first_read:
            first_read.add(threading.get_ident())
            both_read.wait()

    outcomes: list[str] = []

    def add_one() -> None:
        try:
            store.create(connection_for(key), refuse_after_both_read)
            outcomes.append("stored")
        except AlreadyConnected:
            outcomes.append("refused")

    run_together(add_one, 2, timeout=20)

    assert sorted(outcomes) == ["refused", "stored"]
    assert len(store.list()) == 1


def test_many_adds_at_once_with_one_key_store_one(
    settings: Settings, store: ConnectionStore, redis_server_client: redis.Redis
) -> None:
    key = halaxy_key()
    start = threading.Barrier(8, timeout=10)
    outcomes: list[str] = []

    def add_one() -> None:
        connection = connection_for(key)
        start.wait()
        try:
            store.create(connection, onboarding.duplicate_refusal())
            outcomes.append("stored")
        except AlreadyConnected:
            outcomes.append("refused")

    run_together(add_one, 8, timeout=30)

    assert sorted(outcomes) == ["refused"] * 7 + ["stored"]
    assert len(store.list()) == 1
    assert redis_server_client.scard(f"{settings.redis_namespace}:connections") == 1


# --- the rule itself, on generated keys ----------------------------------------------------------

printable_keys = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
)


def with_platform_key(
    connection: Connection, platform_key: str, enabled: bool = True
) -> Connection:
    return connection.model_copy(
        update={"platform_api_key": SecretStr(platform_key), "enabled": enabled}
    )


def refusal_of(new: Connection, stored: Sequence[Connection], **checks: bool) -> str | None:
    try:
        onboarding.duplicate_refusal(**checks)(new, stored)
    except AlreadyConnected as exc:
        assert exc.connection_id == stored[0].id
        return str(exc)
    return None


@given(mine=printable_keys, theirs=printable_keys)
def test_a_platform_key_is_refused_exactly_when_equal_and_never_shown(
    mine: str, theirs: str
) -> None:
    new, other = connection_for(halaxy_key()), connection_for(halaxy_key())

    refusal = refusal_of(with_platform_key(new, mine), [with_platform_key(other, theirs)])

    assert (refusal is not None) == (mine == theirs)
    if refusal is not None:
        # The sentence is the same whatever the key: nothing of it is shown.
        fixed = [with_platform_key(other, "fixed-key")]
        assert refusal == refusal_of(with_platform_key(new, "fixed-key"), fixed)
    disabled = [with_platform_key(other, mine, enabled=False)]
    assert refusal_of(with_platform_key(new, mine), disabled) is None
    shared = [with_platform_key(other, mine)]
    assert refusal_of(with_platform_key(new, mine), shared, platform_api_key=False) is None

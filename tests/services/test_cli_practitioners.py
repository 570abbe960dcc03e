"""`halaxy-bridge practitioners add|list|rotate|remove`, run in-process (CliRunner).

Against the real Redis under each test's namespace; the key check goes over real HTTP to the
fake Physitrack served on a loopback port, which the connection's platform base URL names.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from services.cli.main import cli
from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.serve import ServerThread
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from tests.conftest import make_connection
from tests.helpers import audit_of
from tests.services.test_admin_practitioners import ROW_KEYS
from tests.services.test_cli import assert_clean_failure, ok_json, stored_values
from tests.services.test_cli_bad_input import assert_one_line_error

Invoke = Callable[..., Result]


@pytest.fixture
def physitrack_base(fake_physitrack: FakePhysitrack) -> Iterator[str]:
    """The fake Physitrack served by uvicorn on a free loopback port; yields its API base."""
    with ServerThread(fake_physitrack.app()) as server:
        yield f"{server.url}/api/v2"


@pytest.fixture
def clinic(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, physitrack_base: str
) -> Connection:
    return make_connection(store, fake_halaxy, verify_key, platform_base_url=physitrack_base)


@pytest.fixture
def invoke(settings: Settings) -> Invoke:
    """Run `halaxy-bridge practitioners ARGS...` under this test's Redis namespace."""

    def run(*args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(
            cli,
            ["practitioners", *args],
            input=stdin,
            env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace},
        )

    return run


def new_token() -> str:
    return "ptok-" + secrets.token_hex(8)


def add_args(connection_id: str, token: str, api_key: str, *extra: str) -> list[str]:
    return [
        "add",
        connection_id,
        f"--token={token}",
        "--halaxy-practitioner=PR-2001",
        f"--api-key={api_key}",
        *extra,
    ]


def error_of(result: Result) -> dict[str, Any]:
    """The one-line JSON error of a refused command."""
    assert_one_line_error(result, as_json=True)
    error: dict[str, Any] = orjson.loads(result.stderr)
    return error


# --- add ----------------------------------------------------------------------------------------


def test_add_checks_the_key_stores_the_practitioner_and_prints_no_secret(
    invoke: Invoke,
    clinic: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
    settings: Settings,
) -> None:
    token, key = new_token(), fake_physitrack.add_key()

    result = invoke(*add_args(clinic.id, token, key, "--default", "--json"))

    data = ok_json(result)
    assert data["connection_id"] == clinic.id
    [row] = data["practitioners"]
    assert row["halaxy_practitioner"] == "PR-2001"
    assert row["token_ends_with"] == token[-4:]
    assert (row["auth"], row["default"]) == ("api_key", True)
    assert [(r["method"], r["path"], r["status"]) for r in fake_physitrack.requests] == [
        ("GET", "/api/v2/clients", 200)
    ]
    stored = store.get(clinic.id)
    assert stored is not None
    practitioner = stored.practitioner("PR-2001")
    assert practitioner is not None
    assert practitioner.api_key.get_secret_value() == key
    for secret in (token, key):
        assert secret not in result.output
    [entry] = [e for e in audit_of(store).entries() if e.action == "practitioner.added"]
    assert entry.actor not in {"", "admin-api"}  # the user who ran the command
    assert (entry.connection_id, entry.resource_ids) == (clinic.id, "PR-2001")


def test_add_in_the_pms_mode_and_the_text_output(
    invoke: Invoke, clinic: Connection, fake_physitrack: FakePhysitrack
) -> None:
    pms_key = "PmsKey" + secrets.token_hex(16)
    token, key = new_token(), fake_physitrack.add_key(pms=("cliniko", pms_key))

    result = invoke(
        *add_args(clinic.id, token, key, "--pms-name", "cliniko", f"--pms-key={pms_key}")
    )

    assert result.exit_code == 0, result.output
    assert "Added PR-2001: Physitrack accepted the key." in result.stdout
    assert f"…{token[-4:]}" in result.stdout
    assert "pms" in result.stdout
    assert "cliniko" in result.stdout
    for secret in (token, key, pms_key):
        assert secret not in result.output


@pytest.mark.parametrize("flag", ["--api-key", "--token"])
def test_a_secret_given_as_dash_is_read_from_stdin(
    invoke: Invoke,
    clinic: Connection,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
    flag: str,
) -> None:
    token, key = new_token(), fake_physitrack.add_key()
    args = add_args(clinic.id, token, key, "--json")
    args = [f"{flag}=-" if a.startswith(f"{flag}=") else a for a in args]
    piped = key if flag == "--api-key" else token

    result = invoke(*args, stdin=piped + "\n")

    ok_json(result)
    stored = store.get(clinic.id)
    assert stored is not None
    practitioner = stored.practitioner("PR-2001")
    assert practitioner is not None
    assert practitioner.api_key.get_secret_value() == key
    assert practitioner.token.get_secret_value() == token
    assert piped not in result.output


def test_two_secrets_from_stdin_are_refused(
    invoke: Invoke, clinic: Connection, store: ConnectionStore
) -> None:
    result = invoke(*add_args(clinic.id, "-", "-", "--json"), stdin="one\ntwo\n")

    assert "only one secret can be read from stdin" in error_of(result)["detail"]
    assert store.get(clinic.id) == clinic


def test_empty_stdin_is_refused_naming_the_field(
    invoke: Invoke, clinic: Connection, store: ConnectionStore
) -> None:
    result = invoke(*add_args(clinic.id, new_token(), "-", "--no-verify"), stdin="")

    assert "api_key" in assert_one_line_error(result)
    assert store.get(clinic.id) == clinic


def test_a_refused_key_stores_nothing(
    invoke: Invoke,
    clinic: Connection,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    token, wrong_key = new_token(), "pt-not-a-key-" + secrets.token_hex(8)

    result = invoke(*add_args(clinic.id, token, wrong_key, "--json"))

    error = error_of(result)
    assert result.exit_code == 2
    assert error["error"] == "invalid"
    assert "Physitrack refused the practitioner's key" in error["detail"]
    assert "401" in error["detail"]
    assert wrong_key not in result.output
    assert store.get(clinic.id) == clinic
    assert not [e for e in audit_of(store).entries() if e.action.startswith("practitioner.")]
    for value in stored_values(redis_server_client, settings.redis_namespace):
        assert wrong_key.encode() not in value


def test_physitrack_failing_exits_3_and_names_no_verify(
    invoke: Invoke, clinic: Connection, fake_physitrack: FakePhysitrack, store: ConnectionStore
) -> None:
    fake_physitrack.faults.script.append(503)

    result = invoke(*add_args(clinic.id, new_token(), fake_physitrack.add_key()))

    assert_clean_failure(result, exit_code=3)
    assert "--no-verify" in result.stderr
    assert store.get(clinic.id) == clinic


def test_no_verify_makes_no_request(
    invoke: Invoke, clinic: Connection, fake_physitrack: FakePhysitrack
) -> None:
    result = invoke(*add_args(clinic.id, new_token(), "pt-unchecked", "--no-verify"))

    assert result.exit_code == 0, result.output
    assert "key not checked (--no-verify)" in result.stdout
    assert fake_physitrack.requests == []


def test_a_token_another_connection_holds_is_refused_naming_it(
    invoke: Invoke,
    clinic: Connection,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
) -> None:
    token = new_token()
    holder = make_connection(
        store, fake_halaxy, verify_key, name="Clinic Two", practitioners={token: "PR-9"}
    )

    result = invoke(*add_args(clinic.id, token, "pt-k", "--no-verify", "--json"))

    error = error_of(result)
    assert error["error"] == "already_connected"
    assert holder.id in error["detail"]
    assert token not in result.output


def test_a_rest_connection_is_refused(
    invoke: Invoke, store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    rest = make_connection(
        store, fake_halaxy, verify_key, platform="rest", platform_base_url="https://rest.example"
    )
    result = invoke(*add_args(rest.id, new_token(), "pt-k", "--no-verify"))
    assert "Physitrack connections" in assert_one_line_error(result)


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["add", "--token=ptok-0123456789", "--halaxy-practitioner=PR-1", "--api-key=k"],
        ["rotate", "PR-1", "--token=ptok-0123456789"],
        ["remove", "PR-1", "--yes"],
    ],
    ids=["list", "add", "rotate", "remove"],
)
def test_an_unknown_connection_exits_4(invoke: Invoke, args: list[str]) -> None:
    command, *rest = args
    positional = [a for a in rest if not a.startswith("--")]
    flags = [a for a in rest if a.startswith("--")]
    result = invoke(command, "cn_doesnotexist", *positional, *flags, "--json")
    assert error_of(result)["error"] == "unknown_connection"
    assert result.exit_code == 4


text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(token=text, practitioner=text, api_key=text, pms_name=st.none() | text)
def test_any_flag_values_store_a_practitioner_or_are_one_line_without_the_secrets(
    invoke: Invoke,
    clinic: Connection,
    store: ConnectionStore,
    token: str,
    practitioner: str,
    api_key: str,
    pms_name: str | None,
) -> None:
    # Marked with characters no message holds, so an echo of either is found, not a word of
    # the message the generator happened to write.
    token, api_key = "\u2603" + token, "\u2602" + api_key
    extra = [] if pms_name is None else [f"--pms-name={pms_name}"]
    result = invoke(
        "add",
        clinic.id,
        f"--token={token}",
        f"--halaxy-practitioner={practitioner}",
        f"--api-key={api_key}",
        "--no-verify",
        "--json",
        *extra,
    )
    stored = store.get(clinic.id)
    assert stored is not None
    if result.exit_code == 0:
        assert stored.practitioner(practitioner.strip()) is not None
        store.replace(stored, clinic)  # back to none, for the next example
        return
    detail = assert_one_line_error(result, as_json=True)
    assert stored == clinic
    assert token.strip() not in detail
    assert api_key.strip() not in detail


# --- list ---------------------------------------------------------------------------------------


def test_list_prints_rows_without_secrets(
    invoke: Invoke, clinic: Connection, store: ConnectionStore
) -> None:
    assert ok_json(invoke("list", clinic.id, "--json")) == {
        "connection_id": clinic.id,
        "practitioners": [],
    }
    assert invoke("list", clinic.id).stdout.strip() == "(none)"
    tokens = [new_token(), new_token()]
    for n, token in enumerate(tokens):
        args = add_args(clinic.id, token, f"pt-key-{n}", "--no-verify")
        args[3] = f"--halaxy-practitioner=PR-{n + 1}"
        assert invoke(*args).exit_code == 0

    listed = invoke("list", clinic.id, "--json")
    listed_text = invoke("list", clinic.id)

    rows = ok_json(listed)["practitioners"]
    assert [r["halaxy_practitioner"] for r in rows] == ["PR-1", "PR-2"]
    assert [r["token_ends_with"] for r in rows] == [t[-4:] for t in tokens]
    assert set(rows[0]) == ROW_KEYS
    assert listed_text.stdout.splitlines()[0].split() == [
        "PRACTITIONER",
        "TOKEN",
        "AUTH",
        "PMS_NAME",
        "DEFAULT",
        "ADDED_AT",
        "ROTATED_AT",
    ]
    for result in (listed, listed_text):
        for n, token in enumerate(tokens):
            assert token not in result.output
            assert f"pt-key-{n}" not in result.output


# --- rotate -------------------------------------------------------------------------------------


@pytest.fixture
def added(invoke: Invoke, clinic: Connection, fake_physitrack: FakePhysitrack) -> str:
    """PR-2001 added to the clinic (checked); returns its token."""
    token = new_token()
    assert invoke(*add_args(clinic.id, token, fake_physitrack.add_key())).exit_code == 0
    return token


def test_rotate_the_api_key_from_stdin_checks_it(
    invoke: Invoke,
    clinic: Connection,
    added: str,
    fake_physitrack: FakePhysitrack,
    store: ConnectionStore,
) -> None:
    new_key = fake_physitrack.add_key()

    result = invoke("rotate", clinic.id, "PR-2001", "--api-key", "-", "--json", stdin=new_key)

    [row] = ok_json(result)["practitioners"]
    assert row["rotated_at"] is not None
    assert new_key not in result.output
    stored = store.get(clinic.id)
    assert stored is not None
    practitioner = stored.practitioner("PR-2001")
    assert practitioner is not None
    assert practitioner.api_key.get_secret_value() == new_key
    assert [r["status"] for r in fake_physitrack.requests] == [200, 200]


def test_rotate_a_refused_key_changes_nothing(
    invoke: Invoke, clinic: Connection, added: str, store: ConnectionStore
) -> None:
    before = store.get(clinic.id)

    result = invoke("rotate", clinic.id, "PR-2001", "--api-key=pt-wrong", "--json")

    assert "Physitrack refused" in error_of(result)["detail"]
    assert store.get(clinic.id) == before


def test_rotate_default_on_and_off_and_the_token(
    invoke: Invoke, clinic: Connection, added: str
) -> None:
    on = invoke("rotate", clinic.id, "PR-2001", "--default", "--json")
    assert ok_json(on)["practitioners"][0]["default"] is True
    token = new_token()
    off = invoke("rotate", clinic.id, "PR-2001", "--no-default", f"--token={token}")
    assert off.exit_code == 0, off.output
    assert "Rotated PR-2001: token, default." in off.stdout
    [row] = ok_json(invoke("list", clinic.id, "--json"))["practitioners"]
    assert (row["default"], row["token_ends_with"]) == (False, token[-4:])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "say what to replace"),
        (["--pms-key=PmsKey0123456789abcdef0123456789"], "no PMS name"),
    ],
)
def test_a_bad_rotation_is_one_line(
    invoke: Invoke, clinic: Connection, added: str, args: list[str], said: str
) -> None:
    result = invoke("rotate", clinic.id, "PR-2001", *args)
    assert said in assert_one_line_error(result)
    assert result.exit_code == 2


# --- remove -------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_remove_without_yes_is_refused_and_removes_nothing(
    invoke: Invoke, clinic: Connection, added: str, store: ConnectionStore, as_json: bool
) -> None:
    before = store.get(clinic.id)

    result = invoke("remove", clinic.id, "PR-2001", *(["--json"] if as_json else []))

    detail = assert_one_line_error(result, as_json)
    assert result.exit_code == 2
    assert "--yes" in detail
    assert store.get(clinic.id) == before


def test_remove_with_yes(
    invoke: Invoke, clinic: Connection, added: str, store: ConnectionStore
) -> None:
    result = invoke("remove", clinic.id, "PR-2001", "--yes")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["Removed PR-2001.", "(none)"]
    stored = store.get(clinic.id)
    assert stored is not None
    assert stored.physitrack_practitioners == ()
    again = invoke("remove", clinic.id, "PR-2001", "--yes")
    assert "no practitioner 'PR-2001'" in assert_one_line_error(again)
    actions = [e.action for e in audit_of(store).entries() if e.action.startswith("practitioner.")]
    assert actions == ["practitioner.added", "practitioner.removed"]


# --- connections show ---------------------------------------------------------------------------


def test_connections_show_lists_the_practitioners_without_secrets(
    settings: Settings, clinic: Connection, added: str
) -> None:
    def show(*args: str) -> Result:
        return CliRunner().invoke(
            cli,
            ["connections", "show", clinic.id, *args],
            env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace},
        )

    shown, shown_text = show("--json"), show()

    [row] = ok_json(shown)["physitrack_practitioners"]
    assert (row["halaxy_practitioner"], row["token_ends_with"]) == ("PR-2001", added[-4:])
    assert shown_text.exit_code == 0, shown_text.output
    assert "Physitrack practitioners:" in shown_text.stdout
    assert f"PR-2001       …{added[-4:]}" in shown_text.stdout
    for result in (shown, shown_text):
        assert added not in result.output

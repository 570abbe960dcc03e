"""`halaxy-bridge connections enable|edit|pause|resume|offboard`, and `disable`'s question:
the CLI run in-process (CliRunner) against the real Redis, under the test's namespace."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from services.cli.main import cli
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from tests.helpers import audit_of
from tests.services.test_cli import assert_clean_failure, ok_json, post_webhook

Run = Callable[..., Result]
PLATFORM_URL = "https://au.physitrack.com/api/v2"


@pytest.fixture
def run(settings: Settings) -> Run:
    """`halaxy-bridge connections ARGS...`, with `input` typed at its questions."""

    def invoke(*args: str, input: str | None = None) -> Result:
        env = {"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
        return CliRunner().invoke(cli, ["connections", *args], env=env, input=input)

    return invoke


def add(run: Run, halaxy_key: str | None = None, platform_key: str | None = None) -> dict[str, Any]:
    token = "pt-tok-" + secrets.token_hex(8)
    details = ok_json(
        run(
            "add",
            "--name=Clinic One",
            f"--halaxy-key={halaxy_key or 'cid-' + secrets.token_hex(4) + ':s3cret'}",
            "--platform=physitrack",
            f"--platform-base-url={PLATFORM_URL}",
            f"--platform-api-key={platform_key or 'pt-key-' + secrets.token_hex(8)}",
            f"--practitioner={token}=PR-2002",
            "--author=PR-1001",
            "--no-verify",
            "--json",
        )
    )
    details["token"] = token
    return details


@pytest.fixture
def added(run: Run) -> dict[str, Any]:
    return add(run)


def refused(result: Result, code: str, exit_code: int = 2) -> str:
    assert_clean_failure(result, exit_code)
    [line] = result.stderr.splitlines()
    error = orjson.loads(line)
    assert error["error"] == code, error
    return str(error["detail"])


def keys_of(client: redis.Redis, settings: Settings) -> dict[bytes, Any]:
    """Every key of the namespace with its type and size: what 'nothing changed' compares."""
    return {
        bytes(k): (client.type(k), client.memory_usage(k))
        for k in client.scan_iter(match=f"{settings.redis_namespace}:*")
        if not bytes(k).endswith(b":audit")
    }


# --- disable asks first -----------------------------------------------------------------------


def test_disable_asks_and_a_no_changes_nothing(
    run: Run, added: dict[str, Any], store: ConnectionStore
) -> None:
    answered_no = run("disable", added["id"], input="n\n")

    assert answered_no.exit_code == 1
    assert "Disable connection" in answered_no.stderr
    assert added["id"] in answered_no.stderr
    assert answered_no.stdout == ""
    stored = store.get(added["id"])
    assert stored is not None
    assert stored.enabled

    answered_yes = run("disable", added["id"], input="y\n")

    assert answered_yes.exit_code == 0, answered_yes.output
    assert "is disabled" in answered_yes.stdout
    stored = store.get(added["id"])
    assert stored is not None
    assert not stored.enabled


def test_disable_with_json_needs_yes_and_never_waits_for_an_answer(
    run: Run, added: dict[str, Any], store: ConnectionStore
) -> None:
    detail = refused(run("disable", added["id"], "--json"), "confirmation_needed")

    assert "--yes" in detail
    stored = store.get(added["id"])
    assert stored is not None
    assert stored.enabled
    assert ok_json(run("disable", added["id"], "--json", "--yes"))["enabled"] is False


# --- enable -----------------------------------------------------------------------------------


def test_enable_after_disable_keeps_the_id_urls_and_secrets_and_webhooks_work_again(
    run: Run, added: dict[str, Any], client: TestClient
) -> None:
    header = added["halaxy_auth_header"]
    ok_json(run("disable", added["id"], "--yes", "--json"))
    assert post_webhook(client, added, header).status_code == 404

    enabled = ok_json(run("enable", added["id"], "--json"))
    revealed = ok_json(run("show", added["id"], "--reveal", "--json"))

    assert (enabled["id"], enabled["enabled"], enabled["changed"]) == (added["id"], True, True)
    for same in ("webhook_urls", "program_webhook_url", "halaxy_auth_header", "program_api_key"):
        assert revealed[same] == added[same]
    assert post_webhook(client, added, header).status_code == 202
    text = run("enable", added["id"])
    assert text.exit_code == 0
    assert "enabled already" in text.stdout


def test_enable_is_refused_when_another_connection_took_the_halaxy_key(
    run: Run, store: ConnectionStore
) -> None:
    key = "cid-" + secrets.token_hex(4) + ":s3cret"
    first = add(run, halaxy_key=key)
    ok_json(run("disable", first["id"], "--yes", "--json"))
    second = add(run, halaxy_key=key)

    detail = refused(run("enable", first["id"], "--json"), "already_connected")

    assert second["id"] in detail
    stored = store.get(first["id"])
    assert stored is not None
    assert not stored.enabled


def test_enable_with_a_shared_platform_key_needs_saying_so(run: Run) -> None:
    platform_key = "pt-key-" + secrets.token_hex(8)
    first = add(run, platform_key=platform_key)
    ok_json(run("disable", first["id"], "--yes", "--json"))
    add(run, platform_key=platform_key)

    refused(run("enable", first["id"], "--json"), "already_connected")
    enabled = ok_json(run("enable", first["id"], "--allow-shared-platform-key", "--json"))

    assert enabled["enabled"] is True


# --- edit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "field", "shown"),
    [
        (["--name=Clinic Two"], "name", "Clinic Two"),
        (["--author=PR-7007"], "default_author", "PR-7007"),
        (["--no-author"], "default_author", None),
        (
            ["--pdf-hosts=files.example.com,127.0.0.1:9000"],
            "pdf_hosts",
            ["files.example.com", "127.0.0.1:9000"],
        ),
        (
            ["--platform-base-url=https://eu.physitrack.com/api/v2"],
            "platform_base_url",
            "https://eu.physitrack.com/api/v2",
        ),
    ],
)
def test_edit_changes_one_field_and_keeps_the_id(
    run: Run,
    added: dict[str, Any],
    flags: list[str],
    field: str,
    shown: Any,
    store: ConnectionStore,
) -> None:
    edited = ok_json(run("edit", added["id"], *flags, "--json"))

    assert edited["id"] == added["id"]
    assert edited[field] == shown
    assert edited["changed"] == [field]
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.edited"]
    assert entry.resource_ids == field


def test_edit_adds_and_removes_practitioner_mappings_and_goes_back_to_default_pdf_hosts(
    run: Run, added: dict[str, Any], store: ConnectionStore
) -> None:
    new = "pt-tok-" + secrets.token_hex(8)
    ok_json(run("edit", added["id"], "--pdf-hosts=files.example.com", "--json"))

    edited = ok_json(
        run(
            "edit",
            added["id"],
            f"--practitioner={new}=PR-3003",
            f"--remove-practitioner={added['token']}",
            "--default-pdf-hosts",
            "--json",
        )
    )

    assert edited["practitioners"] == [{"token_ends_with": new[-4:], "role": "PR-3003"}]
    assert edited["changed"] == ["practitioners", "pdf_hosts"]
    assert edited["pdf_hosts"] == ["au.physitrack.com", "physitrackuploads.s3.amazonaws.com"]
    stored = store.get(added["id"])
    assert stored is not None
    assert stored.practitioners == {new: "PR-3003"}
    assert new not in orjson.dumps(edited).decode()  # never shown back


def test_a_practitioner_is_removed_from_a_disabled_connection(
    run: Run, added: dict[str, Any], store: ConnectionStore
) -> None:
    ok_json(run("disable", added["id"], "--yes", "--json"))

    edited = ok_json(run("edit", added["id"], f"--remove-practitioner={added['token']}", "--json"))

    assert (edited["enabled"], edited["practitioners"]) == (False, [])


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ([], "say what to change"),
        (["--author=PR-1", "--no-author"], "--author or --no-author"),
        (
            ["--pdf-hosts=a.example.com", "--default-pdf-hosts"],
            "--pdf-hosts or --default-pdf-hosts",
        ),
        (["--practitioner=tok-1=PR-1", "--remove-practitioner=tok-1"], "both mapped and removed"),
        (["--remove-practitioner=not-one-of-its-tokens"], "no such practitioner token"),
        (["--name= "], "name"),
        (["--platform-base-url=http://example.com"], "https"),
    ],
)
def test_a_bad_edit_is_one_line_and_changes_nothing(
    run: Run,
    added: dict[str, Any],
    flags: list[str],
    named: str,
    store: ConnectionStore,
) -> None:
    before = store.get(added["id"])

    detail = refused(run("edit", added["id"], *flags, "--json"), "invalid")

    assert named in detail
    assert "not-one-of-its-tokens" not in detail
    assert store.get(added["id"]) == before


# --- pause and resume -------------------------------------------------------------------------


def test_pause_and_resume_say_what_they_did(
    run: Run, added: dict[str, Any], client: TestClient, store: ConnectionStore
) -> None:
    paused = ok_json(run("pause", added["id"], "--json"))
    again = ok_json(run("pause", added["id"], "--json"))
    accepted = post_webhook(client, added, added["halaxy_auth_header"])  # taken while paused

    assert (paused["paused"], paused["changed"]) == (True, True)
    assert (again["paused"], again["changed"]) == (True, False)
    assert accepted.status_code == 202

    resumed = ok_json(run("resume", added["id"], "--json"))
    text = run("resume", added["id"])

    assert (resumed["paused"], resumed["changed"], resumed["still_held"]) == (False, True, 0)
    assert text.exit_code == 0
    assert "was not paused" in text.stdout
    actions = [e.action for e in audit_of(store).entries(connection_id=added["id"])]
    assert actions.count("connection.paused") == 1
    assert actions.count("connection.resumed") == 1


# --- offboard ---------------------------------------------------------------------------------


def test_offboard_asks_to_type_the_id_and_a_wrong_one_erases_nothing(
    run: Run,
    added: dict[str, Any],
    store: ConnectionStore,
    settings: Settings,
    redis_server_client: redis.Redis,
) -> None:
    before = keys_of(redis_server_client, settings)

    wrong = run("offboard", added["id"], input="cn_someotherone\n")

    assert wrong.exit_code == 1
    assert "Type the connection id" in wrong.stderr
    assert "nothing was erased" in wrong.stderr
    assert keys_of(redis_server_client, settings) == before
    assert store.get(added["id"]) is not None

    typed = run("offboard", added["id"], input=f"{added['id']}\n")

    assert typed.exit_code == 0, typed.output
    assert "is offboarded" in typed.stdout
    assert store.get(added["id"]) is None
    left = list(redis_server_client.scan_iter(match=f"{settings.redis_namespace}:*"))
    prefix = len(settings.redis_namespace) + 1
    # The audit trail and its chain head: kept, never rewritten.
    assert sorted(bytes(k).decode()[prefix:] for k in left) == ["audit", "audit:head"]
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.offboarded"]
    assert entry.connection_id == added["id"]


def test_offboard_with_json_needs_yes(
    run: Run, added: dict[str, Any], store: ConnectionStore
) -> None:
    detail = refused(run("offboard", added["id"], "--json"), "confirmation_needed")
    assert "--yes" in detail
    assert store.get(added["id"]) is not None

    done = ok_json(run("offboard", added["id"], "--yes", "--json"))

    assert (done["id"], done["offboarded"], done["erased"]["connection"]) == (added["id"], True, 1)
    assert store.get(added["id"]) is None


def test_offboarding_an_unknown_id_is_a_clear_error_and_changes_nothing(
    run: Run,
    added: dict[str, Any],
    settings: Settings,
    redis_server_client: redis.Redis,
    store: ConnectionStore,
) -> None:
    before = keys_of(redis_server_client, settings)
    trail = audit_of(store).entries()

    detail = refused(run("offboard", "cn_doesnotexist", "--yes", "--json"), "unknown_connection", 4)

    assert "cn_doesnotexist" in detail
    assert keys_of(redis_server_client, settings) == before
    # The attempt is in the trail (the command and why it was refused), and nothing else.
    *same, attempt = audit_of(store).entries()
    assert same == trail
    assert (attempt.action, attempt.outcome) == ("cli.refused", "unknown_connection")
    assert attempt.resource_ids.endswith("connections offboard")

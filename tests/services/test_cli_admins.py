"""`halaxy-bridge admins add|list|revoke`, `audit verify|export` and the audited `connections
show --reveal`, through the CLI, against real Redis."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis
import time_machine
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from services.cli.main import cli
from shared.connections.model import Connection
from shared.infra.audit import CHAIN_FIELDS, AuditTrail, chain_hash
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from tests.helpers import bearer


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )


def entries(client: redis.Redis, keys: Keys) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.resource_ids) for e in AuditTrail(client, keys).entries()]


# --- admins -----------------------------------------------------------------------------------


def test_add_prints_the_token_once_and_it_opens_the_api(
    settings: Settings, client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    added = run(settings, "admins", "add", "olga", "--role", "operator", "--by", "carol", "--json")

    assert added.exit_code == 0, added.output
    data = orjson.loads(added.stdout)
    assert set(data) == {"name", "role", "expires_at", "added_by", "token"}
    assert (data["name"], data["role"], data["added_by"]) == ("olga", "operator", "carol")
    token = data["token"]
    assert client.get("/ops/status", headers=bearer(token)).status_code == 200
    listed = run(settings, "admins", "list", "--json")
    assert token not in listed.stdout
    [row] = orjson.loads(listed.stdout)["admins"]
    assert (row["name"], row["role"], row["state"]) == ("olga", "operator", "active")
    assert orjson.loads(listed.stdout)["bootstrap_admin"] is True
    assert entries(redis_server_client, keys)[0][:2] == ("carol", "admin.added")
    assert token not in str(entries(redis_server_client, keys))


def test_add_without_json_prints_the_token_and_its_expiry_defaults_to_90_days(
    settings: Settings,
) -> None:
    before = utcnow()
    added = run(settings, "admins", "add", "olga", "--role", "viewer")
    after = utcnow()

    assert added.exit_code == 0, added.output
    assert "shown this once" in added.stdout
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("hbadm_")
    [row] = orjson.loads(run(settings, "admins", "list", "--json").stdout)["admins"]
    expires = datetime.fromisoformat(row["expires_at"])
    assert before + timedelta(days=90) <= expires <= after + timedelta(days=90)


def test_revoke_shuts_the_token_out_and_is_audited(
    settings: Settings, client: TestClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    token = orjson.loads(
        run(settings, "admins", "add", "olga", "--role", "viewer", "--json").stdout
    )["token"]

    revoked = run(settings, "admins", "revoke", "olga", "--by", "carol", "--json")

    assert revoked.exit_code == 0, revoked.output
    assert orjson.loads(revoked.stdout)["state"] == "revoked"
    response = client.get("/ops/status", headers=bearer(token))
    assert (response.status_code, response.json()["detail"]) == (
        401,
        "the admin token of olga was revoked",
    )
    assert entries(redis_server_client, keys)[-1] == ("carol", "admin.revoked", "admin:olga")
    table = run(settings, "admins", "list")
    assert "revoked" in table.stdout
    assert "BRIDGE_ADMIN_TOKEN (bootstrap-admin, role admin): set" in table.stdout


def test_an_expired_token_is_listed_as_expired(settings: Settings) -> None:
    run(settings, "admins", "add", "olga", "--role", "viewer", "--expires-in", "1h")
    with time_machine.travel(utcnow() + timedelta(hours=2), tick=False):
        [row] = orjson.loads(run(settings, "admins", "list", "--json").stdout)["admins"]
    assert row["state"] == "expired"


@pytest.mark.parametrize(
    ("args", "code", "exit_code"),
    [
        (["add", "Olga Smith", "--role", "viewer"], "invalid", 2),
        (["add", "bootstrap-admin", "--role", "admin"], "invalid", 2),
        (["add", "olga", "--role", "viewer", "--expires-in", "0d"], "invalid", 2),
        (["revoke", "nobody"], "unknown_admin", 4),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
    args: list[str],
    code: str,
    exit_code: int,
) -> None:
    result = run(settings, "admins", *args, "--json")

    assert result.exit_code == exit_code, result.output
    assert orjson.loads(result.stderr)["error"] == code
    assert result.stdout == ""
    assert orjson.loads(run(settings, "admins", "list", "--json").stdout)["admins"] == []
    assert entries(redis_server_client, keys) == []


def test_an_active_name_cannot_be_added_twice(settings: Settings) -> None:
    assert run(settings, "admins", "add", "olga", "--role", "viewer").exit_code == 0
    again = run(settings, "admins", "add", "olga", "--role", "admin")
    assert again.exit_code == 2
    assert "already has an active token" in again.stderr
    [row] = orjson.loads(run(settings, "admins", "list", "--json").stdout)["admins"]
    assert row["role"] == "viewer"


# --- audit verify and export ------------------------------------------------------------------


def test_audit_verify_holds_then_fails_naming_the_edited_entry(
    settings: Settings, redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = AuditTrail(redis_server_client, keys)
    for n in range(3):
        trail.record(actor="ops", action="connection.rotated", connection_id=f"cn_{n}")

    holds = run(settings, "audit", "verify", "--json")
    text = run(settings, "audit", "verify")

    assert holds.exit_code == 0, holds.output
    assert orjson.loads(holds.stdout)["holds"] is True
    assert text.stdout.startswith("The audit chain holds: 3 entries")

    stored = redis_server_client.xrange(keys.audit())
    redis_server_client.delete(keys.audit())
    for n, (stream_id, fields) in enumerate(stored):
        if n == 1:
            fields = {**fields, b"actor": b"someone-else"}
        redis_server_client.xadd(keys.audit(), fields, id=stream_id)  # type: ignore[arg-type]
    edited = stored[1][0].decode()

    broken = run(settings, "audit", "verify", "--json")
    broken_text = run(settings, "audit", "verify")

    assert broken.exit_code == 1
    report = orjson.loads(broken.stdout)
    assert (report["holds"], report["broken_id"], report["broken_seq"]) == (False, edited, 2)
    assert broken_text.exit_code == 1
    assert f"broken at entry {edited} (seq 2)" in broken_text.stdout


def test_the_audit_listing_still_runs_without_a_subcommand(
    settings: Settings, redis_server_client: redis.Redis, keys: Keys
) -> None:
    AuditTrail(redis_server_client, keys).record(actor="ops", action="connection.added")
    listed = run(settings, "audit", "--action", "connection.", "--json")
    assert listed.exit_code == 0, listed.output
    [entry] = orjson.loads(listed.stdout)["entries"]
    assert (entry["actor"], entry["seq"]) == ("ops", 1)


def test_audit_export_writes_json_lines_a_siem_can_verify_again(
    settings: Settings, redis_server_client: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    trail = AuditTrail(redis_server_client, keys)
    start = utcnow()
    with time_machine.travel(start - timedelta(days=2), tick=False):
        trail.record(actor="ops", action="old", resource_ids="Patient/1 platform:p-1")
    trail.record(actor="ops", action="new.1", connection_id="cn_a")
    trail.record(actor="worker", action="new.2", outcome="refused: gender")
    output = tmp_path / "audit.jsonl"

    written = run(settings, "audit", "export", "--output", str(output), "--json")
    since = run(settings, "audit", "export", "--since", "1d")

    assert written.exit_code == 0, written.output
    assert orjson.loads(written.stdout) == {"exported": 3, "output": str(output)}
    lines = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert [line["action"] for line in lines] == ["old", "new.1", "new.2"]
    assert [line["action"] for line in map(orjson.loads, since.stdout.splitlines())] == [
        "new.1",
        "new.2",
    ]
    # What a SIEM does with the lines: each hash again from its fields, each prev the hash
    # before it (the field order is the one docs/operations.md gives).
    previous = lines[0]["prev"]
    for line in lines:
        fields = [
            (name, line[name])
            for name in ("actor", "action", "connection_id", "resource_ids", "outcome")
        ]
        assert line["prev"] == previous
        assert chain_hash(line["prev"], str(line["seq"]), line["id"], fields) == line["hash"]
        previous = line["hash"]
    assert set(CHAIN_FIELDS) <= set(lines[0])


def test_audit_export_to_a_path_it_cannot_write_is_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    result = run(settings, "audit", "export", "--output", str(tmp_path / "no" / "such" / "f"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write")


# --- connections show --reveal ------------------------------------------------------------------


def test_reveal_is_audited_with_the_persons_name_and_a_plain_show_is_not(
    settings: Settings, connection: Connection, redis_server_client: redis.Redis, keys: Keys
) -> None:
    before = entries(redis_server_client, keys)

    plain = run(settings, "connections", "show", connection.id, "--json")
    revealed = run(settings, "connections", "show", connection.id, "--reveal", "--by", "rita")
    by_user = run(settings, "connections", "show", connection.id, "--reveal", "--json")

    assert (plain.exit_code, revealed.exit_code, by_user.exit_code) == (0, 0, 0)
    assert connection.webhook_secret.get_secret_value() in revealed.stdout
    after = entries(redis_server_client, keys)[len(before) :]
    [(rita, revealing, shown), (user, also_revealing, _)] = after
    assert (rita, revealing, shown) == (
        "rita",
        "connection.revealed",
        "halaxy_auth_header program_api_key",
    )
    assert also_revealing == "connection.revealed"
    assert user not in {"", "rita", "admin-api"}  # the user who ran the command
    assert connection.webhook_secret.get_secret_value() not in str(after)

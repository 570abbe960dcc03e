"""Dead letters: recorded 30 days with what ops need, listed, replayed as bulk work, purged,
each replay and purge audited; through the CLI and /ops/dead-letters."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner
from starlette.testclient import TestClient

from services.cli.main import cli
from services.sandbox.halaxy import patient_resource
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import epoch_seconds
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.admins import Role
from shared.ops.dead_letters import RETENTION, DeadLetter, DeadLetterStore
from tests.helpers import bearer, named_admin, queued_messages
from tests.workers import Pipeline, Sandbox, sandbox_connection

LETTER = DeadLetter(
    id="m-1",
    actor="sync_patient",
    queue="live",
    connection_id="cn_a",
    event="patient-created",
    resource_id="1001",
    error_class="PatientNotUsable",
    reason="Patient 1001 cannot be synced: birth year (birthDate) is missing or invalid",
    attempts=1,
    first_enqueued_at="2026-11-21T09:00:00+00:00",
    failed_at="2026-11-21T09:00:01+00:00",
    kwargs={
        "connection_id": "cn_a",
        "resource_id": "1001",
        "event": "patient-created",
        "event_id": "ev-1",
    },
)


@pytest.fixture
def letters(redis_server_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    store = DeadLetterStore(redis_server_client, keys)
    store.add(LETTER)
    store.add(
        replace(
            LETTER,
            id="m-2",
            connection_id="cn_b",
            error_class="Permanent",
            reason="Physitrack refused the API key (401)",
            kwargs={**LETTER.kwargs, "connection_id": "cn_b"},
        )
    )
    return store


def audit(client: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(keys.audit())
    ]


def test_a_permanent_failure_is_recorded_with_its_ids_and_reason(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier
) -> None:
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001", birth_date=None)
    pipeline.send(conn, "patient-created", "Patient", ["1001"], event_ids=["ev-77"])
    pipeline.drain()
    [letter] = DeadLetterStore(pipeline.redis, pipeline.keys).list(conn.id)
    assert (letter.actor, letter.connection_id, letter.resource_id) == (
        "sync_patient",
        conn.id,
        "1001",
    )
    assert letter.event == "patient-created"
    assert letter.kwargs["event_id"] == "ev-77"
    assert letter.error_class == "PatientNotUsable"
    assert "birth year" in letter.reason
    assert "Jane" not in orjson.dumps(letter.__dict__).decode()
    assert letter.failed_at >= letter.first_enqueued_at


def test_old_letters_are_trimmed_after_30_days(
    letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    redis_server_client.zadd(
        keys.dead_letter_times(), {"m-1": epoch_seconds() - RETENTION.total_seconds() - 60}
    )
    letters.add(replace(LETTER, id="m-3"))
    assert sorted(x.id for x in letters.list()) == ["m-2", "m-3"]


def cli_run(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(
        cli, ["dead-letters", *args], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )


def test_cli_list_filters(letters: DeadLetterStore, settings: Settings) -> None:
    everything = orjson.loads(cli_run(settings, "list", "--json").stdout)["dead_letters"]
    assert [x["id"] for x in everything] == ["m-1", "m-2"]
    assert "kwargs" not in everything[0]
    by_conn = orjson.loads(cli_run(settings, "list", "--connection", "cn_b", "--json").stdout)
    assert [x["id"] for x in by_conn["dead_letters"]] == ["m-2"]
    by_reason = orjson.loads(cli_run(settings, "list", "--reason", "api key", "--json").stdout)
    assert [x["id"] for x in by_reason["dead_letters"]] == ["m-2"]
    recent = orjson.loads(cli_run(settings, "list", "--since", "1h", "--json").stdout)
    assert len(recent["dead_letters"]) == 2
    assert cli_run(settings, "list", "--since", "yesterday").exit_code == 2


def test_cli_replay_queues_bulk_work_and_audits_it(
    letters: DeadLetterStore, settings: Settings, redis_server_client: redis.Redis, keys: Keys
) -> None:
    result = cli_run(settings, "replay", "m-1", "--by", "carol", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {"replayed": ["m-1"]}
    [message] = queued_messages(redis_server_client, keys, queue="bulk")
    assert message["actor_name"] == "sync_patient_bulk"
    assert message["kwargs"] == LETTER.kwargs
    assert [x.id for x in letters.list()] == ["m-2"]
    [entry] = audit(redis_server_client, keys)
    assert entry["actor"] == "carol"
    assert entry["action"] == "dead_letter.replayed"
    assert entry["connection_id"] == "cn_a"


@pytest.mark.parametrize("by", ["", "carol\nactor=admin", "x" * 101])
def test_cli_replay_and_purge_refuse_a_by_that_is_not_a_name_on_one_line(
    letters: DeadLetterStore,
    settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
    by: str,
) -> None:
    for verb in ("replay", "purge"):
        result = cli_run(settings, verb, "m-1", "--by", by)
        assert result.exit_code == 2, result.output
        assert "--by" in result.stderr
    assert [x.id for x in letters.list()] == ["m-1", "m-2"]
    assert queued_messages(redis_server_client, keys, queue="bulk") == []
    assert audit(redis_server_client, keys) == []


def test_cli_purge_all_matching_and_refusals(
    letters: DeadLetterStore, settings: Settings, redis_server_client: redis.Redis, keys: Keys
) -> None:
    assert cli_run(settings, "purge").exit_code == 2  # neither ids nor --all-matching
    assert cli_run(settings, "purge", "m-1", "--all-matching").exit_code == 2
    assert cli_run(settings, "replay", "nope").exit_code == 2
    result = cli_run(settings, "purge", "--all-matching", "--connection", "cn_b", "--json")
    assert orjson.loads(result.stdout) == {"purged": ["m-2"]}
    assert [x.id for x in letters.list()] == ["m-1"]
    # The replay of a letter that is not there: refused and audited as an attempt.
    assert [(e["action"], e["outcome"]) for e in audit(redis_server_client, keys)] == [
        ("cli.refused", "not_found"),
        ("dead_letter.purged", "ok"),
    ]
    assert queued_messages(redis_server_client, keys, queue="bulk") == []


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"}


def test_ops_endpoints(
    client: TestClient,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    assert client.get("/ops/dead-letters").status_code == 401
    listed = client.get("/ops/dead-letters", params={"connection": "cn_a"}, headers=admin())
    assert [x["id"] for x in listed.json()["dead_letters"]] == ["m-1"]
    assert (
        client.get("/ops/dead-letters", params={"since": "soon"}, headers=admin()).status_code
        == 422
    )
    bad = client.post("/ops/dead-letters/replay", json={"idz": ["m-1"]}, headers=admin())
    assert bad.status_code == 422
    assert "idz" in bad.json()["detail"]
    as_dave = {"ids": ["m-1"], "by": "dave"}
    claimed = client.post("/ops/dead-letters/replay", json=as_dave, headers=admin())
    assert claimed.status_code == 422  # the shared token cannot say it is dave
    assert [x.id for x in letters.list()] == ["m-1", "m-2"]
    dave = bearer(named_admin(redis_server_client, keys, "dave", Role.OPERATOR))
    replayed = client.post("/ops/dead-letters/replay", json=as_dave, headers=dave)
    assert replayed.json() == {"replayed": ["m-1"]}
    purged = client.post("/ops/dead-letters/purge", json={"all_matching": True}, headers=admin())
    assert purged.json() == {"purged": ["m-2"]}
    assert letters.list() == []
    assert [(e["actor"], e["action"]) for e in audit(redis_server_client, keys)] == [
        ("test", "admin.added"),
        ("dave", "dead_letter.replayed"),
        ("bootstrap-admin", "dead_letter.purged"),
    ]
    status = client.get("/ops/status", headers=admin()).json()
    assert [q["queue"] for q in status["queues"]] == ["live", "storm", "bulk"]
    assert status["queues"][2]["depth"] == 1  # the replay, on the bulk queue

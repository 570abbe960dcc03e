"""`halaxy-bridge notes parked|resolve`, in-process, on real Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from services.cli.main import cli
from services.sandbox.physitrack import program_callback
from shared.audit import AuditTrail
from shared.config import Settings
from shared.notes_outbox import WATCH_NEW, NoteOutbox, NoteState
from shared.programs import note_id_for, parse_callback
from shared.store import Keys
from tests.helpers import queued_messages


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["notes", *args], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )


@pytest.fixture
def outbox(settings: Settings, redis_server_client: redis.Redis) -> NoteOutbox:
    return NoteOutbox(redis_server_client, Keys(settings.redis_namespace), settings.fernet)


def parked_note(outbox: NoteOutbox, name: str = "Knee Rehab") -> str:
    callback = parse_callback(
        program_callback(
            api_key="k",
            file_url="https://files.example.com/p.pdf",
            patient_id="1001",
            name=name,
            when=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
        )
    )
    note_id = note_id_for("cn_test", callback, None)
    outbox.create("cn_test", note_id, callback)
    outbox.move("cn_test", note_id, {NoteState.QUEUED}, NoteState.POSTING)
    outbox.move(
        "cn_test", note_id, {NoteState.POSTING}, NoteState.PARKED, reason="Halaxy answered 502"
    )
    return note_id


def test_parked_lists_ids_title_times_and_reason(settings: Settings, outbox: NoteOutbox) -> None:
    note_id = parked_note(outbox)
    result = invoke(settings, "parked", "--json")
    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)["notes"]
    assert row["note_id"] == note_id
    assert row["connection_id"] == "cn_test"
    assert row["title"] == "Home program: Knee Rehab (assigned 2026-11-21)"
    assert row["reason"] == "Halaxy answered 502"
    assert "callback" not in row
    assert "files.example.com" not in str(row)  # the PDF link never leaves the outbox
    assert "practitioner_token" not in row  # it may sign in as the practitioner
    text = invoke(settings, "parked")
    assert note_id in text.stdout
    assert "Halaxy answered 502" in text.stdout


def test_resolve_as_posted_records_who_and_when(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis
) -> None:
    note_id = parked_note(outbox)
    result = invoke(settings, "resolve", note_id, "--posted", "DR-4411", "--by", "alice", "--json")
    assert result.exit_code == 0, result.output
    settled: dict[str, Any] = orjson.loads(result.stdout)
    assert (settled["state"], settled["docref_id"]) == ("posted", "DR-4411")
    assert (settled["resolved_by"], settled["resolution"]) == ("alice", "posted")
    assert "practitioner_token" not in settled
    assert settled["resolved_at"].startswith(str(datetime.now(UTC).year))
    assert invoke(settings, "parked", "--json").stdout.count(note_id) == 0
    [entry] = AuditTrail(redis_server_client, Keys(settings.redis_namespace)).entries()
    assert (entry.actor, entry.action, entry.outcome) == ("alice", "note.resolved", "posted")
    assert entry.resource_ids == f"note:{note_id} DocumentReference/DR-4411"


def test_resolve_retry_queues_it_again(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis
) -> None:
    note_id = parked_note(outbox)
    result = invoke(settings, "resolve", note_id, "--retry", "--by", "bob")
    assert result.exit_code == 0, result.output
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.QUEUED
    [message] = queued_messages(redis_server_client, Keys(settings.redis_namespace))
    assert message["actor_name"] == "write_program_note"
    assert message["kwargs"]["note_id"] == note_id
    # Until it is settled, the scheduler watches for a lost job, as for a new note.
    due = redis_server_client.zscore(
        Keys(settings.redis_namespace).unsettled_notes(), f"cn_test/{note_id}"
    )
    assert due is not None
    assert due <= time.time() + WATCH_NEW.total_seconds()


def test_resolve_drop(settings: Settings, outbox: NoteOutbox) -> None:
    note_id = parked_note(outbox)
    assert invoke(settings, "resolve", note_id, "--drop").exit_code == 0
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.DROPPED
    assert record.resolved_by


@pytest.mark.parametrize(
    "args",
    [
        ("--retry", "--drop"),
        (),
        ("--posted", "DR 1; drop"),
    ],
)
def test_resolve_refuses_unclear_requests(
    settings: Settings, outbox: NoteOutbox, args: tuple[str, ...]
) -> None:
    note_id = parked_note(outbox)
    result = invoke(settings, "resolve", note_id, *args)
    assert result.exit_code == 2
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.PARKED


def test_resolve_of_a_note_that_is_not_parked(settings: Settings) -> None:
    result = invoke(settings, "resolve", "nt_nope", "--drop")
    assert result.exit_code == 2
    assert "no parked note nt_nope" in result.stderr

"""`halaxy-bridge notes parked|failed|resolve` and `/ops/notes`, in-process, on real Redis."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet, MultiFernet
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.cli.main import cli
from services.scheduler.loop import Scheduler
from services.webhook_receiver.ops_page import render
from services.workers.runtime import WorkerRuntime
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.infra.jobs import Job
from shared.infra.store import Keys
from shared.notes.outbox import DONE_TTL, WATCH_NEW, NoteOutbox, NoteState
from shared.notes.resolution import (
    NoteStateConflict,
    Resolution,
    Waiting,
    find_waiting,
    resolve_note,
)
from shared.ops.admins import Role
from shared.ops.status import status
from tests import helpers
from tests.helpers import bearer, named_admin, queued_messages


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["notes", *args], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )


@pytest.fixture
def outbox(settings: Settings, redis_server_client: redis.Redis) -> NoteOutbox:
    return NoteOutbox(redis_server_client, Keys(settings.redis_namespace), settings.fernet)


def an_hour_ago() -> datetime:
    return utcnow().replace(microsecond=0) - timedelta(hours=1)


def recorded_note(outbox: NoteOutbox, name: str, when: datetime) -> str:
    return helpers.recorded_note(outbox, "cn_test", name, when)


def parked_note(outbox: NoteOutbox, name: str = "Knee Rehab", when: datetime | None = None) -> str:
    note_id = recorded_note(outbox, name, when or an_hour_ago())
    outbox.move("cn_test", note_id, {NoteState.QUEUED}, NoteState.POSTING)
    outbox.move(
        "cn_test", note_id, {NoteState.POSTING}, NoteState.PARKED, reason="Halaxy answered 502"
    )
    return note_id


def failed_note(outbox: NoteOutbox, name: str = "Knee Rehab", when: datetime | None = None) -> str:
    """As `shared.notes.writer` fails a note: Halaxy refused it, so nothing was written."""
    note_id = recorded_note(outbox, name, when or an_hour_ago())
    outbox.move("cn_test", note_id, {NoteState.QUEUED}, NoteState.FETCHING)
    outbox.move(
        "cn_test",
        note_id,
        {NoteState.FETCHING},
        NoteState.FAILED,
        reason="Halaxy refused the note: Author not found",
    )
    return note_id


WAITING = {"parked": parked_note, "failed": failed_note}


def test_parked_lists_ids_title_times_and_reason(settings: Settings, outbox: NoteOutbox) -> None:
    when = an_hour_ago()
    note_id = parked_note(outbox, when=when)
    result = invoke(settings, "parked", "--json")
    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)["notes"]
    assert row["note_id"] == note_id
    assert row["connection_id"] == "cn_test"
    assert row["title"] == f"Home program: Knee Rehab (assigned {when.date().isoformat()})"
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
    assert settled["resolved_at"].startswith(str(utcnow().year))
    assert invoke(settings, "parked", "--json").stdout.count(note_id) == 0
    [entry] = AuditTrail(redis_server_client, Keys(settings.redis_namespace)).entries()
    assert (entry.actor, entry.action, entry.outcome) == ("alice", "note.resolved", "posted")
    assert entry.resource_ids == f"note:{note_id} DocumentReference/DR-4411"


# Names the audit trail cannot take as who acts: empty, longer than 100 characters, or not on
# one line (a control character, such as a newline that would forge a second log line, or a
# Unicode line separator).
NOT_A_NAME = st.one_of(
    st.just(""),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=101, max_size=300),
    st.builds(
        lambda before, control, after: before + control + after,
        st.text(max_size=20),
        st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]]),
        st.text(max_size=20),
    ),
)


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(by=NOT_A_NAME)
def test_resolve_refuses_a_by_that_is_not_a_name_on_one_line_and_changes_nothing(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis, by: str
) -> None:
    note_id = parked_note(outbox, f"Knee Rehab {uuid.uuid4()}")
    result = invoke(settings, "resolve", note_id, "--drop", "--by", by, "--json")
    assert result.exit_code == 2, result.output
    error = orjson.loads(result.stderr)
    assert error["error"] == "invalid"
    assert "--by" in error["detail"]
    assert len(by) < 3 or by not in error["detail"]  # the value is not echoed
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.PARKED
    assert AuditTrail(redis_server_client, Keys(settings.redis_namespace)).entries() == []


def test_without_by_the_user_is_the_login_name_or_else_the_uid(
    settings: Settings, outbox: NoteOutbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = parked_note(outbox), parked_note(outbox, "Ankle")
    monkeypatch.setattr("getpass.getuser", lambda: "dana")
    result = invoke(settings, "resolve", first, "--drop", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["resolved_by"] == "dana"

    def no_account() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr("getpass.getuser", no_account)
    result = invoke(settings, "resolve", second, "--drop", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["resolved_by"] == f"uid {os.getuid()}"


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
    assert due <= epoch_seconds() + WATCH_NEW.total_seconds()


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


def test_resolve_of_a_note_that_is_not_waiting(settings: Settings, outbox: NoteOutbox) -> None:
    result = invoke(settings, "resolve", "nt_nope", "--drop")
    assert result.exit_code == 2
    assert "no parked or failed note nt_nope" in result.stderr
    queued = recorded_note(outbox, "Knee Rehab", an_hour_ago())  # a worker's, not a person's
    assert invoke(settings, "resolve", queued, "--drop").exit_code == 2
    record = outbox.get("cn_test", queued)
    assert record is not None
    assert record.state is NoteState.QUEUED


def test_failed_lists_failed_notes_and_keeps_their_link_sealed(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis
) -> None:
    failed = failed_note(outbox)
    parked = parked_note(outbox, name="Shoulder")
    result = invoke(settings, "failed", "--json")
    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)["notes"]
    assert (row["note_id"], row["state"]) == (failed, "failed")
    assert row["reason"] == "Halaxy refused the note: Author not found"
    assert "files.example.com" not in result.stdout
    assert "practitioner_token" not in row
    assert [
        r["note_id"] for r in orjson.loads(invoke(settings, "parked", "--json").stdout)["notes"]
    ] == [parked]
    # The link is kept, sealed, so that the note can be retried while it lasts.
    sealed = redis_server_client.hget(
        Keys(settings.redis_namespace).note("cn_test", failed), "callback"
    )
    assert sealed
    assert b"files.example.com" not in sealed
    callback = outbox.callback("cn_test", failed)
    assert callback is not None
    assert callback.file_url == "https://files.example.com/p.pdf"
    # The practitioner's token, which can sign in as them, is only in the sealed callback.
    stored = redis_server_client.hgetall(Keys(settings.redis_namespace).note("cn_test", failed))
    assert not [v for v in stored.values() if callback.token.encode() in v]


def test_a_failed_note_retried_is_live_again(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis
) -> None:
    keys = Keys(settings.redis_namespace)
    note_id = failed_note(outbox)
    assert redis_server_client.ttl(keys.note("cn_test", note_id)) > 0  # a failed record expires
    result = invoke(
        settings, "resolve", note_id, "--retry", "--state", "failed", "--by", "erin", "--json"
    )
    assert result.exit_code == 0, result.output
    settled = orjson.loads(result.stdout)
    assert (settled["state"], settled["resolved_by"], settled["resolution"]) == (
        "queued",
        "erin",
        "retry",
    )
    [message] = queued_messages(redis_server_client, keys)
    assert message["actor_name"] == "write_program_note"
    assert message["kwargs"]["note_id"] == note_id
    assert redis_server_client.ttl(keys.note("cn_test", note_id)) == -1  # live: kept
    assert outbox.failed() == []
    due = redis_server_client.zscore(keys.unsettled_notes(), f"cn_test/{note_id}")
    assert due is not None
    assert due <= epoch_seconds() + WATCH_NEW.total_seconds()
    assert outbox.callback("cn_test", note_id) is not None
    [entry] = AuditTrail(redis_server_client, keys).entries()
    assert (entry.actor, entry.action, entry.outcome) == ("erin", "note.resolved", "retry")


@pytest.mark.parametrize(("waiting", "named"), [("failed", "parked"), ("parked", "failed")])
def test_resolve_in_the_wrong_state_names_the_state_it_needs(
    settings: Settings, outbox: NoteOutbox, waiting: str, named: str
) -> None:
    note_id = WAITING[waiting](outbox)
    state = [] if named == "parked" else ["--state", named]  # parked is the default

    result = invoke(settings, "resolve", note_id, "--retry", *state)

    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert f"give --state {waiting}" in line
    assert outbox.waiting(NoteState(waiting), note_id) is not None


@pytest.mark.parametrize("waiting", sorted(WAITING))
def test_a_dropped_note_loses_its_link(
    settings: Settings, outbox: NoteOutbox, waiting: str
) -> None:
    note_id = WAITING[waiting](outbox, "Knee Rehab", an_hour_ago())
    assert outbox.callback("cn_test", note_id) is not None
    assert invoke(settings, "resolve", note_id, "--drop", "--state", waiting).exit_code == 0
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.DROPPED
    assert record.resolved_by
    assert outbox.callback("cn_test", note_id) is None
    assert outbox.parked() == outbox.failed() == []


@pytest.mark.parametrize("waiting", sorted(WAITING))
def test_a_retry_that_could_only_fail_is_refused(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis, waiting: str
) -> None:
    expired = WAITING[waiting](outbox, "Knee Rehab", utcnow() - timedelta(hours=25))
    result = invoke(settings, "resolve", expired, "--retry", "--state", waiting)
    assert result.exit_code == 2
    assert "expired" in result.stderr
    # A note that failed before failed notes kept their link.
    linkless = WAITING[waiting](outbox, "Shoulder", an_hour_ago())
    keys = Keys(settings.redis_namespace)
    redis_server_client.hset(keys.note("cn_test", linkless), "callback", "")
    result = invoke(settings, "resolve", linkless, "--retry", "--state", waiting)
    assert result.exit_code == 2
    assert "no longer has its PDF link" in result.stderr
    for note_id in (expired, linkless):
        record = outbox.get("cn_test", note_id)
        assert record is not None
        assert record.state == waiting
    assert queued_messages(redis_server_client, keys) == []
    assert invoke(settings, "resolve", linkless, "--drop", "--state", waiting).exit_code == 0


def test_failed_notes_leave_the_list_when_their_records_expire(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis
) -> None:
    keys = Keys(settings.redis_namespace)
    old, recent = failed_note(outbox, name="Old"), failed_note(outbox, name="Recent")
    redis_server_client.zadd(
        keys.failed_notes(), {f"cn_test/{old}": epoch_seconds() - DONE_TTL.total_seconds() - 60}
    )
    redis_server_client.delete(keys.note("cn_test", old))  # what the record's TTL did
    recorded_note(outbox, "Queued", an_hour_ago())  # not failed: not listed
    assert outbox.per_connection(NoteState.FAILED) == {"cn_test": 1}
    assert [r.note_id for r in outbox.failed()] == [recent]
    assert outbox.page(NoteState.FAILED).total == 1
    outbox.forget_expired()  # the scheduler's pass removes the old entry
    assert redis_server_client.zscore(keys.failed_notes(), f"cn_test/{old}") is None
    assert redis_server_client.zscore(keys.failed_notes(), f"cn_test/{recent}") is not None


def test_a_retry_meant_for_a_failed_note_never_reaches_it_once_it_is_parked(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A saw the note failed. Meanwhile B retried it and its POST ended ambiguously: it is
    parked and may be in Halaxy. A's retry must not post it again."""
    note_id = failed_note(outbox)
    seen_by_a = find_waiting(outbox, note_id, Waiting.FAILED)
    for allowed, to in (
        (NoteState.FAILED, NoteState.QUEUED),  # B's retry
        (NoteState.QUEUED, NoteState.FETCHING),
        (NoteState.FETCHING, NoteState.POSTING),
        (NoteState.POSTING, NoteState.PARKED),  # the POST timed out
    ):
        assert outbox.move("cn_test", note_id, {allowed}, to)[0]
    audit = AuditTrail(redis_server_client, keys)
    queue = RecordingQueue()
    with pytest.raises(NoteStateConflict, match="is parked, not failed"):
        resolve_note(outbox, queue, seen_by_a, Resolution.RETRY, "a", audit)
    result = invoke(settings, "resolve", note_id, "--retry", "--state", "failed")
    assert result.exit_code == 2
    assert "is parked, not failed" in result.stderr
    result = invoke(settings, "resolve", failed_note(outbox, name="Hip"), "--retry")
    assert result.exit_code == 2
    assert "is failed, not parked" in result.stderr  # the default is parked
    record = outbox.get("cn_test", note_id)
    assert record is not None
    assert record.state is NoteState.PARKED
    assert queue.jobs == []
    assert queued_messages(redis_server_client, keys) == []
    # Nothing done; each refused attempt is in the trail, saying why.
    assert [(e.action, e.outcome) for e in audit.entries()] == [("cli.refused", "not_found")] * 2


class RecordingQueue:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def enqueue(self, jobs: Sequence[Job]) -> None:
        self.jobs += jobs


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"}


def test_the_ops_api_lists_and_settles_notes_as_the_cli_does(
    client: TestClient, outbox: NoteOutbox, redis_server_client: redis.Redis, keys: Keys
) -> None:
    parked, failed = parked_note(outbox), failed_note(outbox, name="Shoulder")
    for path in ("/ops/notes/parked", "/ops/notes/failed", f"/ops/notes/{parked}/resolve"):
        method = client.post if path.endswith("/resolve") else client.get
        assert method(path).status_code == 401
    listed = {
        state: client.get(f"/ops/notes/{state}", headers=admin()).json()["notes"]
        for state in ("parked", "failed")
    }
    assert [r["note_id"] for r in listed["parked"]] == [parked]
    assert [r["note_id"] for r in listed["failed"]] == [failed]
    assert "files.example.com" not in str(listed)
    assert "practitioner_token" not in str(listed)

    def resolve(note_id: str, body: Any) -> Any:
        return client.post(f"/ops/notes/{note_id}/resolve", json=body, headers=admin())

    unknown = resolve("nt_nope", {"resolution": "drop"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_note")
    for bad in ({"resolution": "maybe"}, {"resolution": "posted"}, {"resolution": "drop", "x": 1}):
        answer = resolve(parked, bad)
        assert answer.status_code == 422, bad
    assert resolve(parked, ["drop"]).status_code == 422
    as_gina = {"resolution": "posted", "docref_id": "DR-7", "by": "gina"}
    claimed = resolve(parked, as_gina)  # the shared token cannot say it is gina
    assert (claimed.status_code, claimed.json()["error"]) == (422, "invalid")
    assert "bootstrap-admin" in claimed.json()["detail"]
    gina = bearer(named_admin(redis_server_client, keys, "gina", Role.OPERATOR))
    posted = client.post(f"/ops/notes/{parked}/resolve", json=as_gina, headers=gina)
    assert posted.status_code == 200
    assert (posted.json()["state"], posted.json()["docref_id"]) == ("posted", "DR-7")
    moved = resolve(failed, {"resolution": "retry"})  # the state defaults to parked
    assert (moved.status_code, moved.json()["error"]) == (409, "note_state_changed")
    assert "is failed, not parked" in moved.json()["detail"]
    docref_with_retry = {"resolution": "retry", "state": "failed", "docref_id": "DR-1"}
    assert resolve(failed, docref_with_retry).status_code == 422
    assert (
        resolve(failed, {"resolution": "drop", "state": "failed", "by": "a\nb"}).status_code == 422
    )
    retried = resolve(failed, {"resolution": "retry", "state": "failed"})
    assert retried.status_code == 200
    assert retried.json()["state"] == "queued"
    [message] = queued_messages(redis_server_client, keys)
    assert message["kwargs"]["note_id"] == failed
    again = resolve(failed, {"resolution": "drop", "state": "failed"})
    assert (again.status_code, again.json()["error"]) == (404, "unknown_note")
    done = [
        (e.actor, e.outcome)
        for e in AuditTrail(redis_server_client, keys).entries()
        if e.action != "access.refused"
    ]
    assert done == [
        ("test", "ok"),  # gina added
        ("gina", "posted"),
        ("bootstrap-admin", "retry"),
    ]
    refusals = [
        e.outcome
        for e in AuditTrail(redis_server_client, keys).entries()
        if e.action == "access.refused"
    ]
    assert "refused: unknown_note" in refusals  # an attempt on what is not there: audited


def five_parked(settings: Settings, outbox: NoteOutbox) -> list[str]:
    """Five parked notes, in the order a full listing gives them (oldest first, to the
    second, then by id)."""
    ids = {parked_note(outbox, f"Program {number}") for number in range(5)}
    listed = [
        n["note_id"] for n in orjson.loads(invoke(settings, "parked", "--json").stdout)["notes"]
    ]
    assert set(listed) == ids
    return listed


def test_notes_are_listed_a_page_at_a_time(settings: Settings, outbox: NoteOutbox) -> None:
    ids = five_parked(settings, outbox)
    result = invoke(settings, "parked", "--limit", "2", "--offset", "2", "--json")
    assert result.exit_code == 0, result.output
    page = orjson.loads(result.stdout)
    assert [n["note_id"] for n in page["notes"]] == ids[2:4]
    assert (page["total"], page["offset"], page["limit"]) == (5, 2, 2)
    text = invoke(settings, "parked", "--limit", "2", "--offset", "2").stdout
    assert text.splitlines()[-1] == "3 to 4 of 5; the next ones: --offset 4"
    assert ids[2] in text
    assert ids[1] not in text
    assert invoke(settings, "parked").stdout.splitlines()[-1] == "1 to 5 of 5"
    last = invoke(settings, "parked", "--limit", "2", "--offset", "4").stdout
    assert last.splitlines()[-1] == "5 to 5 of 5"
    past = invoke(settings, "parked", "--offset", "5", "--json")
    assert orjson.loads(past.stdout) == {"notes": [], "total": 5, "offset": 5, "limit": 100}
    beyond = invoke(settings, "parked", "--offset", "5").stdout.strip()
    assert beyond == "(nothing from --offset 5: 5 in all)"


@pytest.mark.parametrize(
    "option", [("--limit", "0"), ("--limit", "1001"), ("--offset", "-1"), ("--limit", "ten")]
)
def test_a_page_out_of_range_is_refused(
    settings: Settings, outbox: NoteOutbox, option: tuple[str, str]
) -> None:
    parked_note(outbox)
    result = invoke(settings, "parked", *option)
    assert result.exit_code == 2
    assert option[0] in result.output


def test_the_ops_api_lists_notes_a_page_at_a_time(
    client: TestClient, settings: Settings, outbox: NoteOutbox
) -> None:
    ids = five_parked(settings, outbox)
    page = client.get("/ops/notes/parked?limit=2&offset=1", headers=admin()).json()
    assert [n["note_id"] for n in page["notes"]] == ids[1:3]
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 2)
    default = client.get("/ops/notes/parked", headers=admin()).json()
    assert ([n["note_id"] for n in default["notes"]], default["limit"]) == (ids, 100)


QUERY_VALUE = st.one_of(
    st.integers(min_value=-5, max_value=2 * 10**9).map(str),
    st.text(max_size=12),
    st.sampled_from(
        ["1e3", "0x10", " 7", "1.0", "-0", "1_0", "\u0663", "\uff17", "99999999999999999999999"]
    ),
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=st.dictionaries(
        st.sampled_from(["limit", "offset", "page", "order"]), QUERY_VALUE, max_size=3
    )
)
@example(query={"limit": "1.0"})  # pydantic alone takes it
@example(query={"offset": "\u0663"})  # int() takes it; pydantic does not
def test_any_notes_query_is_a_page_or_a_clear_422(
    client: TestClient, outbox: NoteOutbox, query: dict[str, str]
) -> None:
    if not outbox.failed():
        failed_note(outbox, name="Shoulder")
    response = client.get("/ops/notes/failed", params=query, headers=admin())
    limit, offset = query.get("limit", "100"), query.get("offset", "0")

    def within(value: str, low: int, high: int) -> bool:
        return re.fullmatch(r"[0-9]{1,10}", value) is not None and low <= int(value) <= high

    if set(query) <= {"limit", "offset"} and within(limit, 1, 1000) and within(offset, 0, 10**9):
        assert response.status_code == 200, response.text
        page = response.json()
        assert (page["total"], page["offset"], page["limit"]) == (1, int(offset), int(limit))
        assert len(page["notes"]) == (1 if int(offset) == 0 else 0)
    else:
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid"


def test_status_and_the_ops_page_count_the_notes_waiting_for_a_person(
    outbox: NoteOutbox,
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    connection: Connection,
) -> None:
    parked_note(outbox)
    failed_note(outbox, name="Shoulder")
    failed_note(outbox, name="Hip")
    # And the connection's own: two parked, one failed.
    for name in ("Knee", "Ankle", "Wrist"):
        note_id = helpers.recorded_note(outbox, connection.id, name, an_hour_ago())
        outbox.move(connection.id, note_id, {NoteState.QUEUED}, NoteState.POSTING)
        outcome = NoteState.FAILED if name == "Wrist" else NoteState.PARKED
        outbox.move(connection.id, note_id, {NoteState.POSTING}, outcome, reason="test")
    found = status(redis_server_client, keys, store, outbox)
    assert (found["parked_notes"], found["failed_notes"]) == (3, 3)
    [row] = [r for r in found["connections"] if r["id"] == connection.id]
    assert (row["parked_notes"], row["failed_notes"]) == (2, 1)
    assert re.search(r"Failed notes: <a [^>]*>3</a>", render(found))


def test_a_waiting_notes_link_is_erased_once_it_expires(
    settings: Settings, outbox: NoteOutbox, redis_server_client: redis.Redis, keys: Keys
) -> None:
    live = failed_note(outbox, name="Live")  # assigned an hour ago: 23 hours left
    expired = utcnow() - timedelta(hours=25)
    dead = failed_note(outbox, name="Dead", when=expired)
    dead_parked = parked_note(outbox, name="Dead parked", when=expired)
    # Made before the link's expiry was recorded, and by a version that kept the practitioner's
    # token in clear: the link is kept a day at most, the token goes at the first move.
    legacy = recorded_note(outbox, "Legacy", an_hour_ago())
    redis_server_client.hdel(keys.note("cn_test", legacy), "link_expires_at")
    redis_server_client.hset(keys.note("cn_test", legacy), "practitioner_token", "tok-9")
    outbox.move("cn_test", legacy, {NoteState.QUEUED}, NoteState.FAILED, reason="r")
    assert not redis_server_client.hexists(keys.note("cn_test", legacy), "practitioner_token")
    Scheduler(settings, WorkerRuntime(settings)).tick()  # the scheduler's pass, every tick
    for gone in (dead, dead_parked):
        assert outbox.callback("cn_test", gone) is None
    for kept in (live, legacy):
        assert outbox.callback("cn_test", kept) is not None
    legacy_expiry = redis_server_client.zscore(keys.waiting_note_links(), f"cn_test/{legacy}")
    assert legacy_expiry is not None
    assert epoch_seconds() + 23.9 * 3600 < legacy_expiry <= epoch_seconds() + 24 * 3600
    assert outbox.forget_expired() == 0  # each is looked at once
    assert {r.note_id for r in outbox.failed()} == {live, dead, legacy}  # still listed
    assert [r.note_id for r in outbox.parked()] == [dead_parked]
    # Sent back by a person, a note is no longer waiting: its link stays until it settles.
    invoke(settings, "resolve", live, "--retry", "--state", "failed")
    assert redis_server_client.zscore(keys.waiting_note_links(), f"cn_test/{live}") is None
    assert outbox.callback("cn_test", live) is not None


def test_a_link_sealed_under_a_key_no_longer_given_reads_as_gone(
    outbox: NoteOutbox, redis_server_client: redis.Redis, keys: Keys
) -> None:
    note_id = failed_note(outbox)
    other_key = NoteOutbox(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    assert other_key.callback("cn_test", note_id) is None
    assert outbox.callback("cn_test", note_id) is not None

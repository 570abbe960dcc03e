"""Every record the bridge keeps in Redis comes back as it went in, through its typed codec.

One property test per stored record type: write it to the real Redis the way its store does,
read it back the way its store does, and compare. Then the records as the previous release
wrote them (`tests/fixtures/stored_records_v0.json`, captured from that release's code) still
read as the same values.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from cryptography.fernet import Fernet, MultiFernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from services.sandbox.physitrack import program_callback
from shared.connections.model import Connection, DocStatus, RetiredSecret
from shared.connections.pause import HELD_MESSAGE, PAUSE_RECORD, HeldMessage, PauseRecord
from shared.connections.practitioner import Practitioner
from shared.connections.store import ConnectionStore
from shared.infra.audit import AUDIT_FIELDS, CHAIN_HEAD, AuditFields, AuditTrail, ChainHead
from shared.infra.clock import utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.store import Keys, as_bytes
from shared.notes.callback import ProgramCallback, note_id_for, parse_callback
from shared.notes.outbox import NOTE_RECORD, NoteOutbox, NoteRecord, NoteState
from shared.notes.program_poll import CURSOR, PollCursor
from shared.notes.unrouted import UnroutedPrograms, UnroutedReason
from shared.ops.admins import ADMIN_RECORD, AdminRecord, AdminStore, Role
from shared.ops.dead_letters import DEAD_LETTER, DeadLetter, DeadLetterStore
from shared.ops.liveness import HEARTBEAT, Duty, Heartbeat, Heartbeats, Kind
from shared.patients.links import PATIENT_LINK, PatientLink
from shared.patients.reconcile import (
    SWEEP,
    SWEEP_PROGRESS,
    Sweep,
    SweepKind,
    SweepLog,
    SweepProgress,
)
from shared.platforms import PlatformKind
from shared.telemetry.attempts import Call
from shared.telemetry.breaker import CIRCUIT, Circuit, CircuitState
from shared.telemetry.event_log import (
    ATTEMPT,
    EVENT_RECORD,
    EVENT_STATUS,
    Attempt,
    AttemptOutcome,
    EventLog,
    EventRecord,
    EventSource,
    EventState,
    EventStatus,
    event_digest,
)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "stored_records_v0.json"
T = TypeVar("T")

# Redis keeps bytes: text in records is UTF-8, so lone surrogates cannot be written by anyone.
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
ids = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=24)
moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)
iso_times = moments.map(lambda m: m.isoformat(timespec="seconds"))
counts = st.integers(min_value=0, max_value=2**53)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)

sweeps = st.builds(Sweep, ids, st.sampled_from(SweepKind), iso_times, iso_times, counts)
sweep_progress = st.builds(
    SweepProgress,
    st.sampled_from(SweepKind),
    iso_times,
    text,
    counts,
    counts,
    st.none() | st.lists(ids, max_size=5).map(tuple),
)
patient_links = st.builds(
    PatientLink,
    st.none() | ids,
    st.none() | text,
    iso_times,
    st.booleans(),
    st.none() | text,
    st.none() | iso_times,
)
poll_cursors = st.builds(
    PollCursor,
    st.integers(0, 2**53),
    moments,
    st.integers(min_value=1, max_value=2**31),
    st.none() | moments,
)
dead_letters = st.builds(
    DeadLetter,
    *[ids] * 6,
    text,
    text,
    counts,
    iso_times,
    iso_times,
    st.dictionaries(text, json_values, max_size=5),
)
# A connection's circuit breaker for one upstream, a JSON value in its hash (`Keys.circuits`).
circuits = st.builds(Circuit, st.sampled_from(CircuitState), moments, counts, st.none() | moments)
note_records = st.builds(
    NoteRecord,
    ids,
    ids,
    st.sampled_from(NoteState),
    ids,
    text,
    iso_times,
    st.booleans(),
    iso_times,
    iso_times,
    counts,
    *[text] * 5,
)
audit_fields = st.builds(AuditFields, text, text, text, text, text)
secrets_ = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30).map(SecretStr)
connections = st.builds(
    Connection,
    id=ids,
    name=text,
    enabled=st.booleans(),
    created_at=moments,
    updated_at=moments,
    halaxy_base_url=text,
    halaxy_client_id=text,
    halaxy_client_secret=secrets_,
    platform=st.sampled_from(PlatformKind),
    platform_base_url=text,
    platform_api_key=secrets_,
    platform_pms_name=st.none() | text,
    platform_pms_key=st.none() | secrets_,
    default_author=st.none() | text,
    practitioners=st.dictionaries(text, text, max_size=3),
    pdf_hosts=st.none() | st.lists(text, max_size=3).map(tuple),
    doc_status=st.sampled_from(DocStatus),
    webhook_secret=secrets_,
    program_api_key=secrets_,
    signing_secret=st.none() | secrets_,
    retired_webhook_secret=st.none()
    | st.builds(RetiredSecret, value=secrets_, valid_until=moments),
    retired_program_api_key=st.none()
    | st.builds(RetiredSecret, value=secrets_, valid_until=moments),
    physitrack_practitioners=st.lists(
        st.builds(
            Practitioner,
            halaxy_practitioner=ids,
            token=secrets_,
            api_key=secrets_,
            pms_name=st.none() | text,
            pms_key=st.none() | secrets_,
            default=st.booleans(),
            added_at=moments,
            rotated_at=st.none() | moments,
        ),
        max_size=3,
    ).map(tuple),
)

with_redis = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def stored_json(client: redis.Redis, key: str, codec: RecordCodec[T], record: T) -> T:
    """Write `record` as its store does (one JSON value in a hash) and read it back."""
    client.hset(key, "field", codec.encode(record))
    raw = client.hget(key, "field")
    assert raw is not None
    return codec.decode(as_bytes(raw))


@pytest.mark.parametrize(
    ("codec", "records"),
    [
        (SWEEP, sweeps),
        (SWEEP_PROGRESS, sweep_progress),
        (PATIENT_LINK, patient_links),
        (DEAD_LETTER, dead_letters),
        (CURSOR, poll_cursors),
        (CIRCUIT, circuits),
    ],
    ids=["Sweep", "SweepProgress", "PatientLink", "DeadLetter", "PollCursor", "Circuit"],
)
def test_a_json_record_round_trips_through_redis(
    redis_server_client: redis.Redis,
    keys: Keys,
    codec: RecordCodec[Any],
    records: st.SearchStrategy[Any],
) -> None:
    @with_redis
    @given(record=records)
    def round_trip(record: Any) -> None:
        back = stored_json(redis_server_client, f"{keys.namespace}:codec", codec, record)
        assert back == record
        assert type(back) is type(record)
        assert _enum_fields(back) == _enum_fields(record)

    round_trip()


def _enum_fields(record: Any) -> dict[str, type]:
    """The type of every field, so a str where an enum was written is caught (a str-valued
    enum compares equal to its plain string)."""
    return {name: type(value) for name, value in asdict(record).items()}


@with_redis
@given(record=note_records)
def test_a_note_record_round_trips_through_a_redis_hash(
    redis_server_client: redis.Redis, keys: Keys, record: NoteRecord
) -> None:
    key = f"{keys.namespace}:codec-note"
    redis_server_client.delete(key)
    redis_server_client.hset(key, mapping=NOTE_RECORD.encode_fields(record))  # type: ignore[arg-type]
    raw = redis_server_client.hgetall(key)
    back = NOTE_RECORD.load({as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()})
    assert back == record
    assert back.state is record.state


@with_redis
@given(record=audit_fields)
def test_an_audit_entry_round_trips_through_the_stream(
    redis_server_client: redis.Redis, keys: Keys, record: AuditFields
) -> None:
    trail = AuditTrail(redis_server_client, keys)
    trail.record(**asdict(record))
    newest = trail.entries(limit=1)[-1]
    assert (
        AuditFields(
            newest.actor, newest.action, newest.connection_id, newest.resource_ids, newest.outcome
        )
        == record
    )
    assert AUDIT_FIELDS.load(AUDIT_FIELDS.encode_fields(record)) == record


chain_heads = st.builds(ChainHead, counts, text, text, counts, text)


@with_redis
@given(head=chain_heads)
def test_an_audit_chain_head_round_trips_through_a_redis_hash(
    redis_server_client: redis.Redis, keys: Keys, head: ChainHead
) -> None:
    """The head is written by the append script (field by field, as here) and read through
    its codec by `verify`."""
    key = f"{keys.namespace}:codec-head"
    redis_server_client.delete(key)
    redis_server_client.hset(key, mapping=CHAIN_HEAD.encode_fields(head))  # type: ignore[arg-type]
    raw = redis_server_client.hgetall(key)
    fields = {as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()}
    assert CHAIN_HEAD.load(fields) == head


def test_the_chain_head_the_append_script_writes_reads_back(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = AuditTrail(redis_server_client, keys)
    trail.record(actor="a", action="b")
    trail.record(actor="a", action="c")
    newest = trail.entries()[-1]
    raw = redis_server_client.hgetall(keys.audit_head())
    head = CHAIN_HEAD.load({as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()})
    assert head == ChainHead(seq=2, hash=newest.hash, id=newest.id)
    assert (newest.seq, type(newest.seq)) == (2, int)


admin_records = st.builds(
    AdminRecord,
    name=ids,
    role=st.sampled_from(Role),
    token_digest=text,
    added_at=moments,
    added_by=text,
    expires_at=moments,
    revoked_at=st.none() | moments,
    revoked_by=st.none() | text,
)


@with_redis
@given(record=admin_records)
def test_an_admin_record_round_trips_through_its_store(
    redis_server_client: redis.Redis, keys: Keys, record: AdminRecord
) -> None:
    redis_server_client.delete(keys.admins())
    redis_server_client.hset(keys.admins(), record.name, ADMIN_RECORD.encode(record))
    [back] = AdminStore(redis_server_client, keys, AuditTrail(redis_server_client, keys)).list()
    assert back == record
    assert back.role is record.role


@with_redis
@given(connection=connections)
def test_a_connection_round_trips_through_its_sealed_store(
    redis_server_client: redis.Redis, keys: Keys, connection: Connection
) -> None:
    store = ConnectionStore(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    back = store.open_record(store._seal(connection))
    assert back == connection
    assert [s.get_secret_value() for s in _secrets(back)] == [
        s.get_secret_value() for s in _secrets(connection)
    ]


def _secrets(connection: Connection) -> list[SecretStr]:
    found = [connection.halaxy_client_secret, connection.platform_api_key]
    found += [connection.webhook_secret, connection.program_api_key]
    found += [s for s in (connection.platform_pms_key, connection.signing_secret) if s]
    found += [
        r.value
        for r in (connection.retired_webhook_secret, connection.retired_program_api_key)
        if r
    ]
    for practitioner in connection.physitrack_practitioners:
        found += [practitioner.token, practitioner.api_key]
        found += [practitioner.pms_key] if practitioner.pms_key else []
    return found


printable = st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=60)
callbacks = st.builds(
    program_callback,
    api_key=printable,
    file_url=printable,
    patient_id=st.from_regex(r"[A-Za-z0-9]{1,64}", fullmatch=True),
    name=printable.filter(str.strip),
    token=printable.filter(str.strip),  # a token of spaces only is refused, as it must be
    updated=st.booleans(),
    when=st.datetimes(  # the years a callback may carry
        min_value=datetime(2000, 1, 2), max_value=datetime(2100, 12, 30), timezones=st.just(UTC)
    ),
).map(parse_callback)


@with_redis
@given(callback=callbacks)
def test_a_program_callback_round_trips_sealed_beside_its_note(
    redis_server_client: redis.Redis, keys: Keys, callback: ProgramCallback
) -> None:
    outbox = NoteOutbox(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    note_id = note_id_for("cn_codec", callback, None)
    redis_server_client.delete(keys.note("cn_codec", note_id))
    assert outbox.create("cn_codec", note_id, callback)
    assert outbox.callback("cn_codec", note_id) == callback


@with_redis
@given(callback=callbacks, reason=st.sampled_from(UnroutedReason))
def test_an_unrouted_program_round_trips_sealed(
    redis_server_client: redis.Redis,
    keys: Keys,
    callback: ProgramCallback,
    reason: UnroutedReason,
) -> None:
    kept = UnroutedPrograms(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    for key in (keys.unrouted_programs(), keys.unrouted_program_times()):
        redis_server_client.delete(key)
    program_id = kept.keep(callback, reason)
    [back] = kept.oldest_first()
    assert (back.id, back.callback, back.reason) == (program_id, callback, reason)
    assert back.reason is reason
    raw = b"".join(bytes(v) for v in redis_server_client.hvals(keys.unrouted_programs()))
    # Sealed: a token long enough not to turn up in base64 by chance is not in Redis in clear.
    assert callback.token.encode() not in raw or len(callback.token) < 8


# --- records as the previous release wrote them -------------------------------------------------


@pytest.fixture
def previous_release() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


def test_records_the_previous_release_wrote_still_read(
    previous_release: dict[str, Any], redis_server_client: redis.Redis, keys: Keys
) -> None:
    sweeps_log = SweepLog(redis_server_client, keys)
    for field, record in (("cn_v0", "sweep"), ("cn_v0", "sweep_progress")):
        key = keys.last_sweep() if record == "sweep" else keys.sweep_progress()
        redis_server_client.hset(key, field, json.dumps(previous_release[record]))
    last = sweeps_log.last("cn_v0")
    assert last == Sweep("cn_v0", SweepKind.RECONCILE, *_times(previous_release["sweep"]), 250)
    assert last is not None
    assert last.kind is SweepKind.RECONCILE
    progress = sweeps_log.progress("cn_v0")
    assert progress is not None
    assert progress.kind is SweepKind.BACKFILL
    assert progress.last_page_ids == ("1001", "1002")

    redis_server_client.hset(
        keys.dead_letters(), "m-1", json.dumps(previous_release["dead_letter"])
    )
    redis_server_client.zadd(keys.dead_letter_times(), {"m-1": 1})
    [letter] = DeadLetterStore(redis_server_client, keys).list()
    assert (letter.id, letter.attempts, letter.kwargs["resource_id"]) == ("m-1", 1, "1001")

    assert PATIENT_LINK.decode(json.dumps(previous_release["patient_link"])) == PatientLink(
        "pt-77", "fp-1", previous_release["patient_link"]["synced_at"]
    )
    assert PATIENT_LINK.decode(json.dumps(previous_release["patient_link_creating"])).creating

    note_key = keys.note("cn_v0", "note-1")
    redis_server_client.hset(note_key, mapping=previous_release["note_record"])
    outbox = NoteOutbox(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    note = outbox.get("cn_v0", "note-1")
    assert note is not None
    assert (note.state, note.attempts, note.updated) == (NoteState.PARKED, 2, False)
    assert note.docref_id == ""  # not written by that release: the default


def _times(record: dict[str, Any]) -> tuple[str, str]:
    return record["started_at"], record["finished_at"]


@pytest.mark.parametrize(
    ("codec", "raw"),
    [
        (SWEEP, b'{"connection_id": "cn", "kind": "sideways"}'),
        (SWEEP_PROGRESS, b"not json"),
        (PATIENT_LINK, b'{"platform_id": 7}'),
        (DEAD_LETTER, b"[]"),
    ],
)
def test_an_unreadable_record_is_a_named_error_without_its_values(
    codec: RecordCodec[Any], raw: bytes
) -> None:
    with pytest.raises(UnreadableRecord) as caught:
        codec.decode(raw)
    assert codec.name in str(caught.value)
    assert "sideways" not in str(caught.value)


def test_an_unreadable_connection_never_names_a_practitioner_token() -> None:
    """A practitioner token is a key of the connection's map: the error says where, not it."""
    record = {"practitioners": {"pt-token-SECRET": 7}}
    with pytest.raises(UnreadableRecord) as caught:
        RecordCodec(Connection).load(record)
    assert "pt-token-SECRET" not in str(caught.value)
    assert "practitioners.[key]" in str(caught.value)


heartbeats = st.builds(
    Heartbeat,
    ids,
    st.sampled_from(Duty),
    text,
    st.integers(min_value=0, max_value=2**31),
    iso_times,
    st.floats(min_value=0, max_value=2**40, allow_nan=False),
    st.floats(min_value=0, max_value=86_400, allow_nan=False),
)


@with_redis
@given(record=heartbeats)
def test_a_heartbeat_round_trips_through_its_store(
    redis_server_client: redis.Redis, keys: Keys, record: Heartbeat
) -> None:
    """Written and read by `Heartbeats` (a JSON value in a hash), its role an enum."""
    beats = Heartbeats(redis_server_client, keys, Kind.SCHEDULER)
    redis_server_client.delete(keys.heartbeats(Kind.SCHEDULER.value))
    beats.beat(record)
    [back] = beats.read(now=record.seen_at)
    assert back == record
    assert back.role is record.role
    assert stored_json(redis_server_client, f"{keys.namespace}:codec", HEARTBEAT, record) == record


# --- a paused connection: its pause record and the messages held meanwhile --------------------


@with_redis
@given(
    record=st.builds(PauseRecord, paused_at=moments, by=text),
    held=st.lists(st.builds(HeldMessage, held_at=moments, queue=ids, message=text), max_size=4),
)
def test_a_pause_and_the_held_messages_round_trip_through_redis(
    redis_server_client: redis.Redis, keys: Keys, record: PauseRecord, held: list[HeldMessage]
) -> None:
    """As `PausedConnections` keeps them: the pause in a hash, the held messages in a list."""
    redis_server_client.delete(keys.paused_connections(), keys.held_messages("cn_x"))
    redis_server_client.hset(keys.paused_connections(), "cn_x", PAUSE_RECORD.encode(record))
    for message in held:
        redis_server_client.rpush(keys.held_messages("cn_x"), HELD_MESSAGE.encode(message))

    raw = redis_server_client.hget(keys.paused_connections(), "cn_x")
    assert raw is not None
    assert PAUSE_RECORD.decode(as_bytes(raw)) == record
    back = [
        HELD_MESSAGE.decode(as_bytes(r))
        for r in redis_server_client.lrange(keys.held_messages("cn_x"), 0, -1)
    ]
    assert back == held


# The event log: a record and its status in a hash, attempts in a list, written by the log's
# scripts. A record is written only while it is within the log's 30 days (an older one is
# trimmed by the same write), so its time is drawn from them.
_event_logs = itertools.count()
event_records = st.builds(
    EventRecord,
    event_id=ids,
    connection_id=st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True),
    source=st.sampled_from(EventSource),
    event_type=text,
    resource_id=text,
    received_at=st.timedeltas(timedelta(0), timedelta(days=29)).map(lambda ago: utcnow() - ago),
    note_id=text,
    routed_from=text,
)
event_statuses = st.builds(EventStatus, st.sampled_from(EventState), moments, text, text, text)
calls = st.builds(
    Call,
    text,
    text,
    text,
    st.none() | st.integers(100, 599),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)
attempts = st.builds(
    Attempt,
    moments,
    st.sampled_from(AttemptOutcome),
    text,
    text,
    st.none() | st.integers(0, 999),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    st.lists(calls, max_size=3).map(tuple),
    counts,
    text,
)


@with_redis
@given(record=event_records, status=event_statuses, attempt=attempts)
def test_an_event_log_entry_round_trips_through_its_store(
    redis_server_client: redis.Redis,
    keys: Keys,
    record: EventRecord,
    status: EventStatus,
    attempt: Attempt,
) -> None:
    own = Keys(f"{keys.namespace}-events{next(_event_logs)}")
    log = EventLog(redis_server_client, own)
    assert log.received(record, status)
    assert log.attempted(record.connection_id, record.event_id, attempt, None)
    digest = event_digest(record.event_id)
    raw_record, raw_status = redis_server_client.hmget(
        own.event_log_record(record.connection_id, digest), ["record", "status"]
    )
    assert raw_record is not None
    assert raw_status is not None
    back = EVENT_RECORD.decode(as_bytes(raw_record))
    assert back == record
    assert _enum_fields(back) == _enum_fields(record)
    back_status = EVENT_STATUS.decode(as_bytes(raw_status))
    assert back_status == status
    assert back_status.state is status.state
    [raw_attempt] = redis_server_client.lrange(
        own.event_log_attempts(record.connection_id, digest), 0, -1
    )
    back_attempt = ATTEMPT.decode(as_bytes(raw_attempt))
    assert back_attempt == attempt
    assert back_attempt.outcome is attempt.outcome
    assert all(type(call) is Call for call in back_attempt.calls)

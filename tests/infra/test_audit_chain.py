"""The audit trail's hash chain, on real Redis: `verify` holds on an untouched trail (however it
was appended: alone, pipelined, from many threads, past the retention, after entries from
before the chain), and names the first broken entry when one was edited, removed or added by
hand, or the newest were removed."""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict
from datetime import timedelta

import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.infra.audit import CHAIN_FIELDS, GENESIS, AuditFields, AuditTrail, chain_hash
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.store import Keys, as_bytes

RawEntry = tuple[bytes, dict[bytes, bytes]]
_namespaces = itertools.count()


def trail_with(client: redis.Redis, keys: Keys, count: int) -> AuditTrail:
    trail = AuditTrail(client, keys)
    for n in range(count):
        trail.record(actor=f"ops-{n}", action="connection.rotated", connection_id=f"cn_{n}")
    return trail


def stream(client: redis.Redis, keys: Keys) -> list[RawEntry]:
    return [(as_bytes(sid), fields) for sid, fields in client.xrange(keys.audit())]


def rewrite(client: redis.Redis, keys: Keys, entries: list[RawEntry]) -> None:
    """The stream replaced by `entries`, ids and all: how an entry is edited in Redis."""
    client.delete(keys.audit())
    for stream_id, fields in entries:
        client.xadd(keys.audit(), fields, id=stream_id)  # type: ignore[arg-type]


def test_an_untouched_trail_holds(redis_server_client: redis.Redis, keys: Keys) -> None:
    trail = trail_with(redis_server_client, keys, 5)

    report = trail.verify()

    entries = stream(redis_server_client, keys)
    assert report.holds, report
    assert (report.entries, report.first_seq, report.last_seq) == (5, 1, 5)
    assert (report.first_id, report.last_id) == (entries[0][0].decode(), entries[-1][0].decode())
    assert [int(fields[b"seq"]) for _, fields in entries] == [1, 2, 3, 4, 5]
    assert entries[0][1][b"prev"] == GENESIS.encode()
    for (_, before), (_, after) in itertools.pairwise(entries):
        assert after[b"prev"] == before[b"hash"]
    assert "holds: 5 entries" in report.describe()


def test_an_empty_trail_holds(redis_server_client: redis.Redis, keys: Keys) -> None:
    report = AuditTrail(redis_server_client, keys).verify()
    assert report.holds
    assert report.entries == 0


@pytest.mark.parametrize("field", [b"actor", b"action", b"connection_id", b"outcome", b"seq"])
def test_an_edited_field_breaks_the_chain_at_that_entry(
    redis_server_client: redis.Redis, keys: Keys, field: bytes
) -> None:
    trail = trail_with(redis_server_client, keys, 5)
    entries = stream(redis_server_client, keys)
    edited_id, fields = entries[2]
    entries[2] = (edited_id, {**fields, field: fields[field] + b"-edited"})
    rewrite(redis_server_client, keys, entries)

    report = trail.verify()

    assert not report.holds
    assert report.broken_id == edited_id.decode()
    assert report.problem is not None
    if field == b"seq":
        assert "chain fields are unreadable" in report.problem or "edited" in report.problem
    else:
        assert report.broken_seq == 3
        assert "do not match its hash" in report.problem
    assert edited_id.decode() in report.describe()


def test_an_entry_moved_to_a_new_id_breaks_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """The same fields under another time: the hash covers the stream id."""
    trail = trail_with(redis_server_client, keys, 3)
    entries = stream(redis_server_client, keys)
    moved_id = entries[2][0].replace(b"-", b"9-", 1)  # a later millisecond
    entries[2] = (moved_id, entries[2][1])
    rewrite(redis_server_client, keys, entries)

    report = trail.verify()

    assert (report.holds, report.broken_id) == (False, moved_id.decode())


def test_an_entry_deleted_and_added_again_changed_breaks_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """XDEL, then XADD a changed copy (chain fields and all): the gap is named, at the entry
    after the deleted one."""
    trail = trail_with(redis_server_client, keys, 4)
    entries = stream(redis_server_client, keys)
    deleted_id, fields = entries[1]
    redis_server_client.xdel(keys.audit(), deleted_id)
    redis_server_client.xadd(keys.audit(), {**fields, b"outcome": b"nothing happened"})

    report = trail.verify()

    assert not report.holds
    assert (report.broken_id, report.broken_seq) == (entries[2][0].decode(), 3)
    assert report.problem == "the entry before it (seq 2) was removed"


def test_a_middle_entry_removed_breaks_the_chain_at_the_next(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = trail_with(redis_server_client, keys, 6)
    entries = stream(redis_server_client, keys)
    redis_server_client.xdel(keys.audit(), entries[2][0], entries[3][0])

    report = trail.verify()

    assert not report.holds
    assert (report.broken_id, report.broken_seq) == (entries[4][0].decode(), 5)
    assert report.problem == "the 2 entries before it (seq 3 to 4) were removed"


@pytest.mark.parametrize("removed", [1, 2])
def test_the_newest_entries_removed_break_the_chain(
    redis_server_client: redis.Redis, keys: Keys, removed: int
) -> None:
    trail = trail_with(redis_server_client, keys, 4)
    entries = stream(redis_server_client, keys)
    redis_server_client.xdel(keys.audit(), *[sid for sid, _ in entries[-removed:]])

    report = trail.verify()

    assert not report.holds
    assert report.broken_id is None  # nothing is left to name
    assert report.broken_seq == 5 - removed
    assert report.problem is not None
    assert "the newest entries were removed" in report.problem
    assert entries[-1][0].decode() in report.problem  # the head's id
    # The bridge writes on: the next append follows the head, and the gap stays visible.
    trail.record(actor="ops", action="after.the.removal")
    assert not trail.verify().holds


def test_every_entry_removed_breaks_the_chain(redis_server_client: redis.Redis, keys: Keys) -> None:
    trail = trail_with(redis_server_client, keys, 2)
    redis_server_client.delete(keys.audit())

    report = trail.verify()

    assert (report.holds, report.broken_seq) == (False, 1)


def test_a_removed_chain_head_breaks_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = trail_with(redis_server_client, keys, 2)
    redis_server_client.delete(keys.audit_head())

    report = trail.verify()

    assert not report.holds
    assert report.problem == "the chain head is missing: it was deleted"


def test_an_entry_added_by_hand_breaks_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = trail_with(redis_server_client, keys, 2)
    forged = redis_server_client.xadd(keys.audit(), asdict(AuditFields("ops", "forged")))  # type: ignore[arg-type]

    report = trail.verify()

    assert (report.holds, report.broken_id) == (False, as_bytes(forged).decode())
    assert report.problem == "it has no hash: it was added by hand"


def test_a_copy_of_the_newest_entry_added_by_hand_breaks_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = trail_with(redis_server_client, keys, 2)
    [*_, (_, newest)] = stream(redis_server_client, keys)
    copy = redis_server_client.xadd(keys.audit(), newest)  # type: ignore[arg-type]

    report = trail.verify()

    assert (report.holds, report.broken_id) == (False, as_bytes(copy).decode())


def test_entries_from_before_the_chain_are_reported_not_broken(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A trail written by the previous release (no hash) and then by this one."""
    # Written now, on the bridge's clock: Redis's own (XADD's `*`) is a year behind it in the
    # year-ahead run, where the entries would fall at the edge of the year's retention and
    # the first record of this release could trim them.
    written_at = int(epoch_seconds() * 1000)
    for n in range(3):
        fields = asdict(AuditFields("worker", "platform.patient_created", "cn_a", f"Patient/{n}"))
        redis_server_client.xadd(keys.audit(), fields, id=f"{written_at}-{n + 1}")  # type: ignore[arg-type]
    trail = trail_with(redis_server_client, keys, 2)

    report = trail.verify()

    assert report.holds, report
    assert (report.before_chain, report.entries, report.first_seq) == (3, 2, 1)
    assert "3 older entries were written before the chain was kept" in report.describe()
    listed = trail.entries()
    assert [e.seq for e in listed] == [None, None, None, 1, 2]
    assert listed[0].hash == ""


def test_the_retention_trims_the_oldest_and_the_chain_still_holds(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = AuditTrail(redis_server_client, keys, retention=timedelta(days=1))
    start = utcnow()
    with time_machine.travel(start - timedelta(days=3), tick=False):
        trail.record(actor="ops", action="old.1")
        trail.record(actor="ops", action="old.2")
    with time_machine.travel(start - timedelta(days=2), tick=False):
        trail.record(actor="ops", action="old.3")
    trail.record(actor="ops", action="kept.4")
    trail.record(actor="ops", action="kept.5")

    report = trail.verify()

    assert [e.action for e in trail.entries()] == ["kept.4", "kept.5"]
    assert report.holds, report
    assert (report.trimmed_through, report.first_seq, report.entries) == (3, 4, 2)
    assert "the chain kept starts at seq 4" in report.describe()

    # Removing the oldest kept entry is not the retention's doing: it shows.
    [oldest, _] = stream(redis_server_client, keys)
    redis_server_client.xdel(keys.audit(), oldest[0])
    broken = trail.verify()
    assert not broken.holds
    assert broken.problem == "the entry before it (seq 4) was removed, and not by the retention"


def test_entries_pipelined_with_other_commands_join_the_chain(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = trail_with(redis_server_client, keys, 1)
    pipe = redis_server_client.pipeline(transaction=False)
    pending = [
        trail.pending_write("platform.patient_created", "cn_a", f"Patient/{n}") for n in "12"
    ]
    for entry in pending:
        entry.add_to(pipe)
    pipe.set(f"{keys.namespace}:other", "1")
    for entry, reply in zip(pending, pipe.execute(raise_on_error=False), strict=False):
        entry.settle(reply)

    report = trail.verify()

    assert (report.holds, report.entries) == (True, 3)


def test_concurrent_writers_keep_one_chain_and_verify_holds_while_they_write(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    trail = AuditTrail(redis_server_client, keys)
    reports = []

    def write(n: int) -> None:
        for m in range(150):
            trail.record(actor=f"writer-{n}", action="x", resource_ids=str(m))

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    while any(thread.is_alive() for thread in writers):
        reports.append(trail.verify())
    for thread in writers:
        thread.join()
    reports.append(trail.verify())

    assert all(report.holds for report in reports), [r for r in reports if not r.holds]
    assert reports[-1].entries == 600


fields = st.builds(
    AuditFields,
    *[st.text(st.characters(exclude_categories=["Cs"]), max_size=30)] * 5,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    appended=st.lists(
        st.tuples(fields, st.integers(min_value=-120_000, max_value=120_000)), max_size=12
    )
)
def test_any_sequence_of_appended_entries_verifies(
    redis_server_client: redis.Redis, keys: Keys, appended: list[tuple[AuditFields, int]]
) -> None:
    """Whatever the fields (any text, empty, alike) and however the writer's clock moves
    (backwards too: a writer behind the newest entry), the chain holds, and each entry's hash
    is what `chain_hash` computes from it, as a SIEM would."""
    own = Keys(f"{keys.namespace}-{next(_namespaces)}")
    trail = AuditTrail(redis_server_client, own)
    start = utcnow()
    for record, offset_ms in appended:
        with time_machine.travel(start + timedelta(milliseconds=offset_ms), tick=False):
            trail.record(**asdict(record))

    report = trail.verify()

    assert report.holds, report
    assert report.entries == len(appended)
    entries = stream(redis_server_client, own)
    for stream_id, stored in entries:
        content = [(k, v) for k, v in stored.items() if k.decode() not in CHAIN_FIELDS]
        assert chain_hash(stored[b"prev"], stored[b"seq"], stream_id, content) == (
            stored[b"hash"].decode()
        )
    read = trail.entries(limit=100)
    assert [
        AuditFields(e.actor, e.action, e.connection_id, e.resource_ids, e.outcome) for e in read
    ] == [record for record, _ in appended]
    assert [e.seq for e in read] == list(range(1, len(appended) + 1))

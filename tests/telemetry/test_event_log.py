"""The per-event delivery log on real Redis: writes, states, attempts kept bounded, the bound
per connection, retention on the product clock, search and cursor paging (property tests),
malformed cursors and time ranges refused, and a connection's erasure leaving no trace."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from shared.infra.clock import utcnow
from shared.infra.errors import InvalidInput
from shared.infra.store import Keys
from shared.telemetry.attempts import Call, route_of
from shared.telemetry.event_log import (
    MAX_ATTEMPTS,
    QUERY_PARAMETERS,
    RETENTION,
    UNROUTED,
    Attempt,
    AttemptOutcome,
    EventLog,
    EventQuery,
    EventRecord,
    EventSource,
    EventState,
    EventStatus,
    decode_cursor,
    encode_cursor,
    index_member,
    parse_query,
)

_namespaces = itertools.count()
with_redis = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def fresh_log(client: redis.Redis, keys: Keys, **options: Any) -> EventLog:
    """A log under a namespace of its own (one per Hypothesis example)."""
    return EventLog(client, Keys(f"{keys.namespace}-log{next(_namespaces)}"), **options)


def record(
    event_id: str = "ev-1",
    connection_id: str = "cn_aaaaaaaaaaaa",
    received_at: datetime | None = None,
    resource_id: str = "1001",
) -> EventRecord:
    return EventRecord(
        event_id=event_id,
        connection_id=connection_id,
        source=EventSource.HALAXY_WEBHOOK,
        event_type="patient-updated",
        resource_id=resource_id,
        received_at=received_at or utcnow(),
    )


def attempt(detail: str = "created", outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED) -> Attempt:
    return Attempt(
        at=utcnow(),
        outcome=outcome,
        actor="sync_patient",
        detail=detail,
        status_code=200,
        seconds=0.25,
        calls=(Call("halaxy", "GET", "/main/Patient/{id}", 200, 0.1),),
        message_id="m-1",
    )


@pytest.fixture
def log(redis_server_client: redis.Redis, keys: Keys) -> EventLog:
    return EventLog(redis_server_client, keys, max_per_connection=5)


def test_an_event_is_logged_once_as_queued_then_moves_with_its_attempts(log: EventLog) -> None:
    first = record()
    assert log.received(first)
    assert log.received(record(received_at=utcnow() + timedelta(seconds=5)))  # a redelivery
    [view] = log.get("ev-1")
    assert view.record == first  # the first receipt stands
    assert view.status.state is EventState.QUEUED
    assert view.attempts == ()
    failed = attempt("Transient", AttemptOutcome.RETRIED)
    assert log.attempted(
        first.connection_id, "ev-1", failed, EventStatus(EventState.RETRYING, utcnow())
    )
    done = attempt("created")
    assert log.attempted(first.connection_id, "ev-1", done, EventStatus(EventState.DONE, utcnow()))
    [view] = log.get("ev-1")
    assert view.attempts == (failed, done)
    assert view.status.state is EventState.DONE
    # An attempt that leaves the state (a note found settled already) adds itself only.
    assert log.attempted(first.connection_id, "ev-1", attempt("nothing_to_do"), None)
    [view] = log.get("ev-1")
    assert view.status.state is EventState.DONE
    assert len(view.attempts) == 3


def test_only_the_last_attempts_are_kept(log: EventLog) -> None:
    log.received(record())
    for n in range(MAX_ATTEMPTS + 5):
        log.attempted("cn_aaaaaaaaaaaa", "ev-1", attempt(f"try-{n}"), None)
    [view] = log.get("ev-1")
    assert [a.detail for a in view.attempts] == [f"try-{n}" for n in range(5, MAX_ATTEMPTS + 5)]


def test_nothing_is_written_for_an_event_not_in_the_log(
    log: EventLog, redis_server_client: redis.Redis, keys: Keys
) -> None:
    status = EventStatus(EventState.DONE, utcnow())
    assert not log.attempted("cn_aaaaaaaaaaaa", "reconcile:x:1001", attempt(), status)
    assert list(redis_server_client.scan_iter(match=f"{keys.namespace}:event-log*")) == []


def test_the_oldest_beyond_the_bound_go_with_their_records_and_attempts(
    log: EventLog, redis_server_client: redis.Redis, keys: Keys
) -> None:
    start = utcnow() - timedelta(hours=1)
    for n in range(8):
        log.received(record(f"ev-{n}", received_at=start + timedelta(minutes=n)))
        log.attempted("cn_aaaaaaaaaaaa", f"ev-{n}", attempt(), None)
    page = log.search(EventQuery(connection_id="cn_aaaaaaaaaaaa"))
    assert [v.record.event_id for v in page.events] == [f"ev-{n}" for n in range(7, 2, -1)]
    assert log.get("ev-0") == []
    assert redis_server_client.zcard(keys.event_log_index("cn_aaaaaaaaaaaa")) == 5
    # 5 records and their 5 attempt lists, and the index: nothing of the three dropped.
    prefix = keys.event_log_of("cn_aaaaaaaaaaaa")
    assert len(list(redis_server_client.scan_iter(match=f"{prefix}*"))) == 11


def test_events_are_kept_30_days_on_the_product_clock(
    log: EventLog, redis_server_client: redis.Redis, keys: Keys
) -> None:
    log.received(record("ev-old"))
    key = keys.event_log_record("cn_aaaaaaaaaaaa", index_member(record("ev-old"))[-40:])
    assert 0 < redis_server_client.ttl(key) <= RETENTION.total_seconds()
    with time_machine.travel(utcnow() + RETENTION - timedelta(minutes=1), tick=False):
        assert [v.record.event_id for v in log.get("ev-old")] == ["ev-old"]
    with time_machine.travel(utcnow() + RETENTION + timedelta(minutes=1), tick=False):
        # Redis has not expired it yet (its own clock); the log leaves it out all the same.
        assert redis_server_client.exists(key)
        assert log.get("ev-old") == []
        assert log.search(EventQuery()).events == []
        log.received(record("ev-new"))  # the next write trims it
        assert not redis_server_client.exists(key)
        assert [v.record.event_id for v in log.search(EventQuery()).events] == ["ev-new"]


def test_an_event_id_is_found_without_its_connection(log: EventLog) -> None:
    log.received(record("ev-1", "cn_aaaaaaaaaaaa"))
    log.received(record("ev-1", "cn_bbbbbbbbbbbb"))
    log.received(record("ev-2", "cn_bbbbbbbbbbbb"))
    assert {v.record.connection_id for v in log.get("ev-1")} == {
        "cn_aaaaaaaaaaaa",
        "cn_bbbbbbbbbbbb",
    }
    [only] = log.get("ev-1", "cn_bbbbbbbbbbbb")
    assert only.record.connection_id == "cn_bbbbbbbbbbbb"
    assert log.get("ev-3") == []
    page = log.search(EventQuery(event_id="ev-1", limit=1))
    assert len(page.events) == 1
    assert page.next_cursor is not None
    rest = log.search(EventQuery(event_id="ev-1", cursor=decode_cursor(page.next_cursor)))
    assert {v.record.connection_id for v in page.events + rest.events} == {
        "cn_aaaaaaaaaaaa",
        "cn_bbbbbbbbbbbb",
    }


def test_filters_by_state_resource_and_time(log: EventLog) -> None:
    now = utcnow()
    log.received(record("ev-1", received_at=now - timedelta(hours=3), resource_id="1001"))
    log.received(record("ev-2", received_at=now - timedelta(hours=2), resource_id="1002"))
    log.received(record("ev-3", received_at=now - timedelta(hours=1), resource_id="1001"))
    log.attempted("cn_aaaaaaaaaaaa", "ev-2", None, EventStatus(EventState.DEAD, now, "m-9"))

    def ids(**filters: Any) -> list[str]:
        return [v.record.event_id for v in log.search(EventQuery(**filters)).events]

    assert ids() == ["ev-3", "ev-2", "ev-1"]
    assert ids(state=EventState.DEAD) == ["ev-2"]
    assert ids(resource_id="1001") == ["ev-3", "ev-1"]
    assert ids(since=now - timedelta(hours=2, minutes=30)) == ["ev-3", "ev-2"]
    assert ids(until=now - timedelta(hours=2)) == ["ev-2", "ev-1"]
    assert ids(connection_id="cn_bbbbbbbbbbbb") == []
    [dead] = log.search(EventQuery(state=EventState.DEAD)).events
    assert dead.shown()["dead_letter_id"] == "m-9"


def test_a_search_past_its_scan_budget_answers_with_a_cursor_to_go_on(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    log = fresh_log(redis_server_client, keys, scan_budget=3)
    now = utcnow()
    for n in range(7):
        log.received(record(f"ev-{n}", received_at=now - timedelta(minutes=n)))
    log.attempted("cn_aaaaaaaaaaaa", "ev-6", None, EventStatus(EventState.DEAD, now))
    query = EventQuery(state=EventState.DEAD)
    found: list[str] = []
    pages = 0
    while True:
        page = log.search(query)
        pages += 1
        found += [v.record.event_id for v in page.events]
        if page.next_cursor is None:
            break
        assert not page.complete
        query = EventQuery(state=EventState.DEAD, cursor=decode_cursor(page.next_cursor))
    assert found == ["ev-6"]
    assert pages == 3


def test_erasing_a_connection_leaves_no_trace_of_its_log(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    log = fresh_log(redis_server_client, keys)
    gone, kept = "cn_gonegonegone", "cn_keptkeptkept"
    for n in range(30):
        for connection in (gone, kept):
            log.received(record(f"ev-{n}", connection))
            log.attempted(connection, f"ev-{n}", attempt(), EventStatus(EventState.DONE, utcnow()))
    log.received(record("up_1", UNROUTED))
    assert log.erase_connection(gone) == 61  # 30 records, 30 attempt lists, the index
    namespace = log.layout.keys.namespace
    for key in redis_server_client.scan_iter(match=f"{namespace}*"):
        assert gone.encode() not in key
        values = stored_values(redis_server_client, key)
        assert not any(gone.encode() in value for value in values), key
    assert log.get("ev-1") == log.get("ev-1", kept)
    assert len(log.search(EventQuery(connection_id=kept, limit=200)).events) == 30
    assert gone not in log.connections()


def stored_values(client: redis.Redis, key: bytes) -> list[bytes]:
    """Every value a key holds (members, fields' values, items), whatever its type."""
    kind = client.type(key)
    if kind == b"hash":
        return list(client.hgetall(key).values())
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"set":
        return list(client.smembers(key))
    value = client.get(key)
    return [] if value is None else [value]


def test_writes_never_raise_when_redis_is_away(keys: Keys) -> None:
    away = redis.Redis(port=1, socket_connect_timeout=0.2)
    log = EventLog(away, keys)
    assert not log.received(record())
    assert not log.attempted("cn_aaaaaaaaaaaa", "ev-1", attempt(), None)


# Paging by cursor, over many records: every match once, newest first, whatever the page size,
# the filters and the scan budget.

CONNECTIONS = ["cn_aaaaaaaaaaaa", "cn_bbbbbbbbbbbb", UNROUTED]
DAY_MS = 24 * 3600 * 1000
specs = st.lists(
    st.tuples(
        st.sampled_from(CONNECTIONS),
        st.integers(0, 3) | st.integers(0, 29 * DAY_MS),  # ms ago; ties too
        st.sampled_from([EventState.QUEUED, EventState.DONE, EventState.DEAD]),
        st.sampled_from(["1001", "1002"]),
    ),
    max_size=40,
)


@with_redis
@given(
    spec=specs,
    limit=st.integers(1, 7),
    connection=st.none() | st.sampled_from(CONNECTIONS),
    state=st.none() | st.sampled_from([EventState.DONE, EventState.DEAD]),
    resource=st.none() | st.just("1001"),
    since_days=st.none() | st.integers(0, 30),
    budget=st.sampled_from([3, 10, 5000]),
    batch=st.sampled_from([1, 2, 200]),
)
def test_cursor_paging_visits_every_match_once_newest_first(
    redis_server_client: redis.Redis,
    keys: Keys,
    spec: list[tuple[str, int, EventState, str]],
    limit: int,
    connection: str | None,
    state: EventState | None,
    resource: str | None,
    since_days: int | None,
    budget: int,
    batch: int,
) -> None:
    log = fresh_log(redis_server_client, keys, scan_budget=budget, read_batch=batch)
    now = utcnow()
    written = []
    for n, (connection_id, ms_ago, moved_to, resource_id) in enumerate(spec):
        logged = record(f"ev-{n}", connection_id, now - timedelta(milliseconds=ms_ago), resource_id)
        log.received(logged, EventStatus(moved_to, now))
        written.append((logged, moved_to))
    since = None if since_days is None else now - timedelta(days=since_days)
    expected = [
        index_member(r)
        for r, moved_to in written
        if (connection is None or r.connection_id == connection)
        and (state is None or moved_to is state)
        and (resource is None or r.resource_id == resource)
        and (since is None or r.received_at >= since)
    ]
    expected.sort(reverse=True)
    raw = {
        "connection": connection,
        "state": None if state is None else state.value,
        "resource": resource,
        "since": None if since is None else since.isoformat(),
        "limit": str(limit),
    }
    seen: list[str] = []
    cursor = None
    for _ in range(len(spec) + 2 + len(spec) // max(budget, 1) * 2 + 10):
        page = log.search(parse_query({**raw, "cursor": cursor}, now))
        assert len(page.events) <= limit
        seen += [view.position for view in page.events]
        cursor = page.next_cursor
        if cursor is None:
            break
    else:
        pytest.fail("the pages never ended")
    assert seen == expected


# Bad input: malformed cursors and time ranges are refused with a named reason, never an error
# of another kind.


@given(st.text(max_size=120))
def test_any_text_is_a_cursor_or_refused(text: str) -> None:
    try:
        member = decode_cursor(text)
    except InvalidInput as exc:
        assert "cursor" in str(exc)
    else:
        assert encode_cursor(member) == text


@given(
    st.builds(
        "{:013d}:{}:{}".format,
        st.integers(0, 10**13 - 1),
        st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
        st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
    )
)
def test_a_cursor_round_trips(member: str) -> None:
    assert decode_cursor(encode_cursor(member)) == member


@given(
    st.dictionaries(
        st.sampled_from([*QUERY_PARAMETERS, "sort", "offset"]),
        st.none() | st.text(max_size=40),
        max_size=6,
    )
)
def test_any_search_parameters_make_a_query_or_a_named_refusal(raw: dict[str, str | None]) -> None:
    try:
        query = parse_query(raw, utcnow())
    except InvalidInput as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert 1 <= query.limit <= 200
        if query.since is not None and query.until is not None:
            assert query.since <= query.until


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"cursor": "ev1.bm90LWEtbWVtYmVy"}, "cursor: not a cursor"),
        ({"cursor": "garbage"}, "cursor: not a cursor"),
        ({"since": "yesterday"}, "since: must be an ISO 8601 time"),
        ({"until": "2026-11-21T09:00:00"}, "until: must carry a timezone"),
        ({"since": "1h", "until": "2h"}, "since: is after until"),
        ({"since": "999999d"}, "since: reaches back too far"),
        ({"state": "finished"}, "state: one of queued"),
        ({"limit": "0"}, "limit: a whole number from 1 to 200"),
        ({"limit": "٣"}, "limit: a whole number"),
        ({"connection": "cn/1"}, "connection: not a connection id"),
        ({"resource": "1001?x"}, "resource: not a Halaxy resource id"),
        ({"sort": "asc"}, "'sort' is not a search parameter"),
    ],
)
def test_bad_search_parameters_are_named(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_query(raw, utcnow())
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_time_ranges_take_iso_times_and_durations() -> None:
    now = datetime(2030, 1, 2, 12, tzinfo=UTC)
    query = parse_query({"since": "24h", "until": "2030-01-02T11:00:00+01:00"}, now)
    assert query.since == now - timedelta(hours=24)
    assert query.until == datetime(2030, 1, 2, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/main/Patient/1001", "/main/Patient/{id}"),
        ("/api/v2/clients/77?external_id=1001&name=Jane", "/api/v2/clients/{id}"),
        ("/main/DocumentReference", "/main/DocumentReference"),
        ("/files/a1b2c3/secret-link.pdf", "/files/{id}/{id}"),
        ("", "(not recorded)"),
    ],
)
def test_a_call_keeps_its_route_never_its_ids_or_query(path: str, route: str) -> None:
    assert route_of(path) == route


def test_a_write_redis_refuses_is_logged_and_reported(
    log: EventLog, redis_server_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server_client.set(keys.event_log_index("cn_aaaaaaaaaaaa"), "not a sorted set")
    with capture_logs() as logs:
        assert not log.received(record())
    # structlog's capture, or the standard library's records once `configure_logging` ran.
    lines = [str(line) for line in logs] + [str(r.msg) for r in caplog.records]
    said = [line for line in lines if "event_log.not_recorded" in line]
    assert len(said) == 1
    assert "RedisRefused" in said[0]


def test_paging_through_many_records_of_many_connections(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    log = fresh_log(redis_server_client, keys, read_batch=50)
    now = utcnow()
    connections = [f"cn_many{n:08d}" for n in range(6)]
    for n in range(600):
        # Whole seconds apart in threes: ties inside each connection and across them.
        at = now - timedelta(seconds=n // 3)
        log.received(record(f"ev-{n}", connections[n % 6], at, resource_id=str(n % 4)))
    seen: list[str] = []
    query = EventQuery(limit=37, resource_id="1")
    while True:
        page = log.search(query)
        seen += [view.position for view in page.events]
        if page.next_cursor is None:
            break
        query = replace(query, cursor=decode_cursor(page.next_cursor))
    assert len(seen) == len(set(seen)) == 150
    assert seen == sorted(seen, reverse=True)

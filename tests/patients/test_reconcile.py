"""Reconcile sweeps and backfill, the scheduler's leader election, and bulk work end to end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
import redis
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from services.cli.main import cli
from services.sandbox.halaxy import FakeHalaxy, operation_outcome, patient_resource
from services.sandbox.physitrack import program_callback
from services.scheduler.loop import Scheduler
from services.workers.messaging import DramatiqJobQueue, build_broker
from services.workers.policy import MAX_BACKOFF_MS
from services.workers.runtime import WorkerRuntime
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.halaxy.client import HalaxyClient
from shared.halaxy.tokens import TokenCache
from shared.infra.clock import epoch_seconds, iso_now
from shared.infra.config import Settings
from shared.infra.errors import RateLimited, StoreUnavailable
from shared.infra.store import Keys
from shared.notes.callback import note_id_for, parse_callback
from shared.notes.outbox import NoteOutbox, NoteState
from shared.patients import reconcile
from shared.patients.reconcile import OVERLAP, Sweep, SweepKind, SweepLog, SweepProgress, due, sweep
from tests.helpers import queued_messages, wait_until
from tests.workers import Pipeline, Sandbox, sandbox_connection

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture
def halaxy(
    connection: Connection,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    settings: Settings,
    keys: Keys,
) -> Iterator[HalaxyClient]:
    fake_halaxy.forget_requests()  # the key check made when the connection was added
    with TestClient(fake_halaxy.app()) as http:
        tokens = TokenCache(redis_server_client, keys, settings.fernet)
        yield HalaxyClient(connection.halaxy_account, http, tokens, settings.user_agent)


Walk = Callable[[Sweep | None, datetime], Sweep | None]


@pytest.fixture
def sweeps(redis_server_client: redis.Redis, keys: Keys) -> SweepLog:
    return SweepLog(redis_server_client, keys)


@pytest.fixture
def walk(
    halaxy: HalaxyClient, settings: Settings, redis_server_client: redis.Redis, sweeps: SweepLog
) -> Walk:
    """One turn of connection cn_x's sweep, as the scheduler takes it: `walk(last, now)`."""
    queue = DramatiqJobQueue(build_broker(settings, redis_server_client))

    def turn(last: Sweep | None, now: datetime) -> Sweep | None:
        return sweep(halaxy, queue, "cn_x", last, now, sweeps, sweeps.progress("cn_x"))

    return turn


def add_patients(fake: FakeHalaxy, count: int, first: int = 5000) -> None:
    for number in range(first, first + count):
        fake.patients[str(number)] = patient_resource(str(number))


def pages_read(fake: FakeHalaxy) -> list[str]:
    """The page number of each patient search the fake Halaxy answered or refused, in order."""
    searches = [r for r in fake.requests if r.path == "/main/Patient"]
    return [parse_qs(r.query).get("page", ["1"])[0] for r in searches]


@pytest.fixture
def a_page_a_call(monkeypatch: pytest.MonkeyPatch, fake_halaxy: FakeHalaxy) -> None:
    """250 patients in the fake Halaxy, three pages, and one page walked a call."""
    monkeypatch.setattr(reconcile, "PAGES_PER_CALL", 1)
    add_patients(fake_halaxy, 250)


def bulk_ids(client: redis.Redis, keys: Keys) -> list[str]:
    """The patient ids of the bulk syncs queued."""
    return [m["kwargs"]["resource_id"] for m in queued_messages(client, keys, queue="bulk")]


def test_a_first_sweep_backfills_every_patient_as_bulk_work(
    walk: Walk, fake_halaxy: FakeHalaxy, redis_server_client: redis.Redis, keys: Keys
) -> None:
    add_patients(fake_halaxy, 250)
    done = walk(None, T0)
    assert done is not None
    assert (done.kind, done.patients_queued) == (SweepKind.BACKFILL, 250)
    messages = queued_messages(redis_server_client, keys, queue="bulk")
    assert {m["actor_name"] for m in messages} == {"sync_patient_bulk"}
    assert sorted(m["kwargs"]["resource_id"] for m in messages) == sorted(fake_halaxy.patients)
    searches = [r for r in fake_halaxy.requests if r.path == "/main/Patient"]
    assert len(searches) == 3  # pages of 100, following link[next]
    assert queued_messages(redis_server_client, keys, queue="live") == []


def test_a_later_sweep_asks_only_for_patients_changed_since(
    walk: Walk, fake_halaxy: FakeHalaxy, redis_server_client: redis.Redis, keys: Keys
) -> None:
    stamp = lambda moment: moment.isoformat().replace("+00:00", "Z")  # noqa: E731
    fake_halaxy.patients["1"] = patient_resource("1", last_updated=stamp(T0 - timedelta(hours=1)))
    fake_halaxy.patients["2"] = patient_resource("2", last_updated=stamp(T0 - OVERLAP / 2))
    fake_halaxy.patients["3"] = patient_resource("3", last_updated=stamp(T0 + timedelta(minutes=3)))
    last = Sweep("cn_x", SweepKind.BACKFILL, T0.isoformat(), T0.isoformat(), 1)
    done = walk(last, T0 + timedelta(minutes=5))
    assert done is not None
    assert done.kind is SweepKind.RECONCILE
    ids = sorted(
        m["kwargs"]["resource_id"] for m in queued_messages(redis_server_client, keys, "bulk")
    )
    assert ids == ["2", "3"]  # "2" changed just before the last sweep started: the overlap
    [search] = [r for r in fake_halaxy.requests if r.path == "/main/Patient"]
    since = (T0 - OVERLAP).isoformat().replace("+00:00", "Z").replace(":", "%3A")
    assert f"_lastUpdated=gt{since}" in search.query  # the last sweep's start, less the overlap


def test_a_sweep_stopped_by_the_rate_limit_resumes_at_the_page_it_stopped_on(
    walk: Walk,
    sweeps: SweepLog,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    """A clinic's backfill meets its own Halaxy limit part-way: started over from the first
    page at every tick, a large one would never finish."""
    add_patients(fake_halaxy, 250)
    fake_halaxy.rate_limit = 2  # the third page is refused with 429
    with pytest.raises(RateLimited):
        walk(None, T0)
    fake_halaxy.rate_limit = 1000
    done = walk(None, T0 + timedelta(minutes=1))
    assert done is not None
    assert (done.kind, done.started_at, done.patients_queued) == (
        SweepKind.BACKFILL,
        T0.isoformat(timespec="seconds"),
        250,
    )
    assert sorted(bulk_ids(redis_server_client, keys)) == sorted(fake_halaxy.patients)  # once
    # Page 3 refused; then page 2 again, page 3.
    assert pages_read(fake_halaxy) == ["1", "2", "3", "2", "3"]
    sweeps.record(done)
    assert sweeps.progress("cn_x") is None  # the next sweep starts a walk of its own


@pytest.mark.usefixtures("a_page_a_call")
def test_a_long_sweep_goes_on_over_several_calls(
    walk: Walk,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    """Each call stops after PAGES_PER_CALL pages, so a scheduler tick stays short."""
    calls = [walk(None, T0) for _ in range(3)]
    assert calls[:2] == [None, None]
    assert calls[2] is not None
    assert calls[2].patients_queued == 250
    assert sorted(bulk_ids(redis_server_client, keys)) == sorted(fake_halaxy.patients)


@pytest.mark.usefixtures("a_page_a_call")
@pytest.mark.parametrize("gone", ["5000", "5099"])
def test_a_patient_gone_between_two_calls_does_not_make_the_walk_skip_the_next(
    walk: Walk,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
    gone: str,
) -> None:
    """Halaxy pages by offset: with a patient of page 1 gone, the first patient of page 2
    moves up to page 1, which the walk has read already."""
    assert walk(None, T0) is None  # page 1 walked
    del fake_halaxy.patients[gone]
    calls = 1 + next(n for n in range(1, 10) if walk(None, T0) is not None)
    assert calls == 3  # pages 1, 2 (after 1 again) and 3 (after 2 again), one a call
    queued = bulk_ids(redis_server_client, keys)
    assert set(fake_halaxy.patients) <= set(queued)  # "5100" included
    assert len(queued) == len(set(queued))  # the page read again queued only what was new


@pytest.mark.usefixtures("a_page_a_call")
def test_when_those_leaving_empty_the_saved_page_the_page_read_again_ends_the_walk(
    walk: Walk,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    assert walk(None, T0) is None
    for number in range(5000, 5160):
        del fake_halaxy.patients[str(number)]  # 90 left: one page
    done = walk(None, T0)
    assert done is not None
    assert pages_read(fake_halaxy) == ["1", "1"]
    assert set(fake_halaxy.patients) <= set(bulk_ids(redis_server_client, keys))
    assert done.patients_queued == 100 + 90  # page 1, then the 90 that moved up onto it


@pytest.mark.usefixtures("a_page_a_call")
def test_a_page_read_again_that_halaxy_refuses_is_skipped_not_the_walk_given_up(
    walk: Walk,
    sweeps: SweepLog,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page number is ours, not a link Halaxy gave: if Halaxy will not serve it, the
    walk goes on from its saved link, as it did before it read pages again."""
    assert walk(None, T0) is None
    serve = fake_halaxy._patient_page

    def refuse_page_one_again(request: Any, base: str) -> Any:
        if request.query_params.get("page") == "1":
            return operation_outcome(400, "invalid", "page is not valid")
        return serve(request, base)

    monkeypatch.setattr(fake_halaxy, "_patient_page", refuse_page_one_again)
    assert walk(None, T0) is None
    assert pages_read(fake_halaxy) == ["1", "1", "2"]
    progress = sweeps.progress("cn_x")
    assert progress is not None
    assert progress.pages == 2
    assert walk(None, T0) is not None
    assert sorted(set(bulk_ids(redis_server_client, keys))) == sorted(fake_halaxy.patients)


def test_a_walk_saved_after_a_page_without_patients_still_reads_it_again(
    walk: Walk, sweeps: SweepLog, fake_halaxy: FakeHalaxy, connection: Connection
) -> None:
    """An empty list of ids is a page that held none, not a walk of the version before."""
    add_patients(fake_halaxy, 250)
    next_url = f"{connection.halaxy_base_url}/Patient?_count=100&page=3"
    sweeps.save_progress(
        "cn_x", SweepProgress(SweepKind.BACKFILL, T0.isoformat(), next_url, 0, 2, ())
    )
    assert walk(None, T0) is not None
    assert pages_read(fake_halaxy) == ["2", "3"]


@pytest.mark.usefixtures("a_page_a_call")
def test_a_call_that_could_only_read_the_page_before_again_is_followed_by_one_that_goes_on(
    walk: Walk,
    sweeps: SweepLog,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    """With the budget for one request a call, a walk that always began with the page
    before would never get past it."""
    assert walk(None, T0) is None
    # One request more in this minute (the fake counts reads, not token requests).
    fake_halaxy.rate_limit = len([r for r in fake_halaxy.requests if "oauth" not in r.path]) + 1
    with pytest.raises(RateLimited):
        walk(None, T0)  # page 1 again, then page 2 refused
    progress = sweeps.progress("cn_x")
    assert progress is not None
    assert (progress.read_again, progress.pages) == (True, 1)
    fake_halaxy.rate_limit = 1000
    searched = len(pages_read(fake_halaxy))
    assert walk(None, T0) is None
    assert pages_read(fake_halaxy)[searched] == "2"  # on from the saved link, not page 1 again
    assert walk(None, T0) is not None
    assert sorted(set(bulk_ids(redis_server_client, keys))) == sorted(fake_halaxy.patients)


@given(
    before=st.lists(st.sampled_from(["_count=100", f"_lastUpdated=gt{T0:%Y-%m-%dT%H}%3A00%3A00Z"])),
    number=st.integers(min_value=0, max_value=10**6),
    after=st.lists(st.sampled_from(["_count=50", "pages=3", "subpage=9"])),
)
def test_page_before_changes_the_page_number_alone(
    before: list[str], number: int, after: list[str]
) -> None:
    url = "https://au-api.halaxy.com/main/Patient?" + "&".join([*before, f"page={number}", *after])
    found = reconcile.page_before(url)
    if number < 2:
        assert found is None
    else:
        assert found == url.replace(f"page={number}", f"page={number - 1}", 1)


def test_page_before() -> None:
    base = "https://au-api.halaxy.com/main/Patient"
    assert reconcile.page_before(f"{base}?_count=100&page=12") == f"{base}?_count=100&page=11"
    assert reconcile.page_before(f"{base}?page=2&_count=100") == f"{base}?page=1&_count=100"
    assert reconcile.page_before(f"{base}?_count=100&page=1") is None
    assert reconcile.page_before(f"{base}?_count=100&subpage=3") is None
    assert reconcile.page_before(f"{base}?_count=100") is None


def test_a_walk_that_does_not_end_is_given_up_and_started_over(
    settings: Settings,
    clinic_of_250: Connection,
    redis_server_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Across calls, as within one: a next link that never runs out must not spend the
    clinic's Halaxy budget for good."""
    monkeypatch.setattr(reconcile, "PAGES_PER_CALL", 1)
    monkeypatch.setattr(reconcile, "MAX_SWEEP_PAGES", 2)
    scheduler = Scheduler(settings, WorkerRuntime(settings))
    sweeps = SweepLog(redis_server_client, Keys(settings.redis_namespace))
    scheduler.sweep_if_due(clinic_of_250.id)
    assert sweeps.progress(clinic_of_250.id) is not None
    scheduler.sweep_if_due(clinic_of_250.id)  # the second page would make it 2: given up
    assert sweeps.progress(clinic_of_250.id) is None
    assert sweeps.last(clinic_of_250.id) is None


def test_an_unreadable_walk_is_replaced_not_a_crash(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """Written by another version during a deploy, say: the scheduler must keep ticking."""
    redis_server_client.hset(keys.sweep_progress(), "cn_x", b'{"kind": "sideways"}')
    assert SweepLog(redis_server_client, keys).progress("cn_x") is None


def test_due() -> None:
    assert due(None, T0)
    last = Sweep("c", SweepKind.RECONCILE, T0.isoformat(), T0.isoformat(), 0)
    assert not due(last, T0 + timedelta(minutes=4))
    assert due(last, T0 + timedelta(minutes=5))
    # BRIDGE_RECONCILE_EVERY_SECONDS, as the scheduler passes it on
    assert not due(last, T0 + timedelta(seconds=1), every=timedelta(seconds=2))
    assert due(last, T0 + timedelta(seconds=2), every=timedelta(seconds=2))


def test_only_one_of_two_schedulers_works(
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
) -> None:
    conn = sandbox_connection(store, sandbox, verify_key)
    for number in range(30):
        sandbox.halaxy.patients[str(100 + number)] = patient_resource(str(100 + number))
    first = Scheduler(settings, WorkerRuntime(settings))
    second = Scheduler(settings, WorkerRuntime(settings))
    for _ in range(3):
        first.tick()
        second.tick()
    searches = [r for r in sandbox.halaxy.requests if r.path == "/main/Patient"]
    assert len(searches) == 1  # one backfill by the leader; not due again yet
    last = SweepLog(redis_server_client, Keys(settings.redis_namespace)).last(conn.id)
    assert last is not None
    assert (last.kind, last.patients_queued) == (SweepKind.BACKFILL, 30)
    assert first.is_leader() != second.is_leader()


@pytest.fixture
def clinic_of_250(store: ConnectionStore, sandbox: Sandbox, verify_key: KeyVerifier) -> Connection:
    """A connection whose Halaxy has 250 patients: three pages of 100."""
    add_patients(sandbox.halaxy, 250, first=100)
    return sandbox_connection(store, sandbox, verify_key)


def test_the_scheduler_finishes_a_sweep_over_several_ticks(
    settings: Settings,
    clinic_of_250: Connection,
    sandbox: Sandbox,
    redis_server_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "PAGES_PER_CALL", 1)
    conn = clinic_of_250
    scheduler = Scheduler(settings, WorkerRuntime(settings))
    sweeps = SweepLog(redis_server_client, Keys(settings.redis_namespace))
    scheduler.tick()
    assert sweeps.last(conn.id) is None  # under way, not finished
    scheduler.tick()
    scheduler.tick()
    last = sweeps.last(conn.id)
    assert last is not None
    assert (last.kind, last.patients_queued) == (SweepKind.BACKFILL, 250)
    assert pages_read(sandbox.halaxy) == [
        "1",
        "1",
        "2",
        "2",
        "3",
    ]  # a tick's walk starts with the page before


def test_a_sweep_under_way_is_resumed_before_the_next_one_is_due(
    settings: Settings,
    clinic_of_250: Connection,
    sandbox: Sandbox,
    redis_server_client: redis.Redis,
) -> None:
    conn = clinic_of_250
    sweeps = SweepLog(redis_server_client, Keys(settings.redis_namespace))
    now = iso_now()
    sweeps.record(Sweep(conn.id, SweepKind.BACKFILL, now, now, 250))  # not due for 5 minutes
    next_url = f"{conn.halaxy_base_url}/Patient?_count=100&page=2"
    sweeps.save_progress(conn.id, SweepProgress(SweepKind.RECONCILE, now, next_url, 100))
    Scheduler(settings, WorkerRuntime(settings)).tick()
    [first, *_] = [r for r in sandbox.halaxy.requests if r.path == "/main/Patient"]
    assert "page=2" in first.query
    last = sweeps.last(conn.id)
    assert last is not None
    assert (last.kind, last.patients_queued) == (SweepKind.RECONCILE, 250)


def test_a_tick_redis_fails_ends_neither_the_tick_nor_the_scheduler(
    settings: Settings,
    clinic_of_250: Connection,
    redis_server_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Sentinel failover made the connections unreadable for a moment, and the scheduler
    process ended with a traceback (the failover test caught it): it must go on at the next
    tick, and sweep once Redis answers."""
    conn = clinic_of_250
    scheduler = Scheduler(
        settings.model_copy(update={"scheduler_tick_seconds": 0.05}), WorkerRuntime(settings)
    )
    sweeps = SweepLog(redis_server_client, Keys(settings.redis_namespace))
    listed = ConnectionStore.list

    def unreadable(store: ConnectionStore) -> list[Connection]:
        raise StoreUnavailable("Redis is unreachable: ConnectionError")

    monkeypatch.setattr(ConnectionStore, "list", unreadable)
    with capture_logs() as logs:
        scheduler.tick()
    assert "scheduler.connections_unreadable" in [line["event"] for line in logs]
    assert sweeps.last(conn.id) is None

    # Whatever else a tick lets through from Redis, the loop goes on to the next tick.
    monkeypatch.setattr(ConnectionStore, "list", listed)
    ticked = scheduler.tick
    failures = iter([StoreUnavailable("away"), redis.exceptions.ConnectionError("refused")])

    def failing_twice() -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        ticked()

    monkeypatch.setattr(scheduler, "tick", failing_twice)
    stop = threading.Event()
    running = threading.Thread(target=scheduler.run, args=(stop,))
    with capture_logs() as logs:
        running.start()
        wait_until(lambda: sweeps.last(conn.id) is not None, 30, "a sweep after Redis is back")
        stop.set()
        running.join(timeout=10)
    assert [line["error"] for line in logs if line["event"] == "scheduler.tick_failed"] == [
        "StoreUnavailable",
        "ConnectionError",
    ]


def test_ticking_leaves_no_broker_behind_to_be_cleaned_up(
    settings: Settings, redis_server_client: redis.Redis
) -> None:
    """Every broker that calls Redis registers a heartbeat, and each one left behind is later
    cleaned up by a KEYS scan of the whole keyspace: the scheduler keeps one for maintenance."""
    scheduler = Scheduler(settings, WorkerRuntime(settings))
    heartbeats = f"{Keys(settings.redis_namespace).dramatiq_namespace()}:__heartbeats__"
    for _ in range(4):
        scheduler.tick()
    assert redis_server_client.zcard(heartbeats) == 1


def test_a_backfill_reaches_the_platform_through_the_bulk_queue(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    for number in range(40):
        sandbox.halaxy.patients[str(300 + number)] = patient_resource(str(300 + number))
    runtime = WorkerRuntime(base_settings)
    Scheduler(base_settings, runtime).sweep_if_due(conn.id)
    pipeline.broker.join("bulk", timeout=60_000)
    pipeline.drain()
    assert len(sandbox.physitrack.clients) == 40
    runtime.close()


def test_the_scheduler_requeues_the_notes_whose_job_was_lost(
    settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    """A note recorded whose enqueue failed (503), and one a worker took up whose retry was
    then lost (Redis away when Dramatiq queued it): once nothing has moved them by their due
    time, the scheduler queues both again. Settled notes, and parked ones a person settles,
    never."""
    outbox = NoteOutbox(redis_server_client, keys, settings.fernet)
    base = parse_callback(
        program_callback(api_key="k", file_url="https://f.example/p.pdf", patient_id="1")
    )
    ids = {}
    for name, state in [
        ("queued", None),
        ("fetching", NoteState.FETCHING),
        ("parked", NoteState.PARKED),
        ("posted", NoteState.POSTED),
    ]:
        callback = base.model_copy(update={"name": name})
        ids[name] = note_id_for("cn_x", callback, None)
        assert outbox.create("cn_x", ids[name], callback)
        if state is not None:
            outbox.move("cn_x", ids[name], {NoteState.QUEUED}, state, reason="r")
    watched = {m.decode() for m in redis_server_client.zrange(keys.unsettled_notes(), 0, -1)}
    assert watched == {f"cn_x/{ids['queued']}", f"cn_x/{ids['fetching']}"}
    # One a worker took up may be waiting out a retry: not due before Dramatiq's longest wait,
    # or each requeue would start a second retry chain.
    taken_up = redis_server_client.zscore(keys.unsettled_notes(), f"cn_x/{ids['fetching']}")
    assert taken_up is not None
    assert taken_up > epoch_seconds() + MAX_BACKOFF_MS / 1000
    scheduler = Scheduler(settings, WorkerRuntime(settings))
    scheduler.requeue_stalled_notes()
    assert queued_messages(redis_server_client, keys) == []  # not stalled yet
    redis_server_client.zadd(keys.unsettled_notes(), dict.fromkeys(watched, 0))  # both due
    scheduler.requeue_stalled_notes()
    requeued = queued_messages(redis_server_client, keys)
    assert {m["actor_name"] for m in requeued} == {"write_program_note"}
    assert sorted(m["kwargs"]["note_id"] for m in requeued) == sorted(
        [ids["queued"], ids["fetching"]]
    )
    scheduler.requeue_stalled_notes()  # due again only WATCH_NEW later
    assert len(queued_messages(redis_server_client, keys)) == 2


@pytest.mark.parametrize("kind", list(SweepKind))
def test_a_recorded_sweep_reads_back_as_it_was_and_every_ops_surface_shows_it(
    settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
    client: TestClient,
    kind: SweepKind,
) -> None:
    """The scheduler records a sweep in one process; `status`, `/ops`, `/ops/status` and
    `/metrics` read it in others. A sweep read back with its `kind` as a bare string once took
    all four down."""
    now = iso_now()
    recorded = Sweep(connection.id, kind, now, now, 3)
    SweepLog(redis_server_client, keys).record(recorded)
    read = SweepLog(redis_server_client, keys).last(connection.id)
    assert read == recorded
    assert read is not None
    assert read.kind is kind
    env = {"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    as_json = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    [row] = [r for r in orjson.loads(as_json.stdout)["connections"] if r["id"] == connection.id]
    assert (row["last_sweep"], row["last_sweep_kind"]) == (now, kind.value)
    as_table = CliRunner().invoke(cli, ["status"], env=env)
    assert as_table.exit_code == 0, as_table.output
    assert f"ago ({kind.value})" in as_table.stdout  # the table shows the sweep's age
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    for path in ("/ops", "/ops/status", "/metrics"):
        assert client.get(path, headers=admin).status_code == 200, path


def test_a_sweep_record_a_person_or_another_version_damaged_is_a_new_backfill_not_a_crash(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    redis_server_client.hset(keys.last_sweep(), "cn_x", b'{"kind": "sideways"}')
    assert SweepLog(redis_server_client, keys).last("cn_x") is None

"""Fair share and the storm lane through the real receiver and worker (docs/isolation.md).

- A connection held to k threads never runs more than k jobs at once while another
  connection's live work waits short of its share, and the other connection's jobs go on
  meanwhile.
- A connection past its storm limit has its further live events queued on the storm lane;
  another clinic's live events run before that backlog. Pause, resume and offboarding see the
  storm queue like any other.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from dramatiq.common import q_name
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread
from services.webhook_receiver.app import create_app
from services.workers import broker as global_broker
from services.workers.fair_share import FairShare
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.pause import PausedConnections
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.ops.fair_share import ThreadLeases
from shared.ops.offboarding import erase_queued_messages, standard_erasures
from shared.ops.queued import QueuedMessages
from shared.telemetry.definitions import FAIR_SHARE_DEFERRALS, JOBS, STORM_EVENTS
from shared.telemetry.event_log import AttemptOutcome, EventLog, EventState
from tests.helpers import auth
from tests.workers import PHYSITRACK_WEBHOOK_KEY, Pipeline, Sandbox, sandbox_connection


class Finished(dramatiq.Middleware):
    """The jobs that ran to the end, in the order they ended: (connection id, queue)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            with self._lock:
                self.jobs.append((message.kwargs["connection_id"], q_name(message.queue_name)))

    def of(self, connection: Connection) -> list[str]:
        return [queue for cid, queue in self.jobs if cid == connection.id]


@pytest.fixture
def finished() -> Iterator[Finished]:
    recorder = Finished()
    global_broker.middleware.append(recorder)
    try:
        yield recorder
    finally:
        global_broker.middleware.remove(recorder)


class InFlight:
    """An ASGI app around another: how many Patient reads it answers at once, at most."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.peak = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and "/Patient/" in scope["path"]
        if counted:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.now -= 1


def add_patients(halaxy: FakeHalaxy, first: int, count: int) -> list[str]:
    ids = [str(n) for n in range(first, first + count)]
    for patient_id in ids:
        halaxy.patients[patient_id] = patient_resource(patient_id)
    return ids


def deferrals(connection: Connection) -> float:
    return FAIR_SHARE_DEFERRALS.labels(connection.id)._value.get()


def test_a_connection_held_to_its_share_never_runs_more_while_another_proceeds(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    finished: Finished,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [fair] = [m for m in global_broker.middleware if isinstance(m, FairShare)]
    monkeypatch.setattr(fair, "share", 0.5)
    cap = fair.cap()
    assert 1 <= cap < pipeline.worker.worker_threads  # else nothing to show

    slow = FakeHalaxy()
    slow.faults.latency = 0.4  # clinic A's Halaxy answers slowly: its jobs hold threads
    reads = InFlight(slow.app())
    with ServerThread(reads) as server:
        hog = sandbox_connection(
            pipeline.store,
            dataclasses.replace(sandbox, halaxy=slow, halaxy_url=f"{server.url}/main"),
            verify_key,
            name="Hog",
        )
        other = sandbox_connection(pipeline.store, sandbox, verify_key, name="Other")
        before = deferrals(hog)
        # One of the other clinic's live messages is due and no thread runs it (another
        # worker has it prefetched, say) all along: the other is short of its share throughout.
        queued = QueuedMessages(pipeline.redis, pipeline.keys)
        queued.add(other.id, "live", "prefetched-elsewhere", epoch_seconds())
        try:
            sent = pipeline.send(
                hog, "patient-created", "Patient", add_patients(slow, 100, 3 * cap + 2)
            )
            pipeline.send(other, "patient-created", "Patient", add_patients(sandbox.halaxy, 2, 4))
            pipeline.drain(timeout_ms=60_000)
        finally:
            queued.remove(other.id, "live", "prefetched-elsewhere")

    assert reads.peak == cap  # at most its share at once, and it used it
    assert deferrals(hog) > before  # the rest waited, deferred, without a thread
    assert len(finished.of(hog)) == 3 * cap + 2  # and all of it ran in the end
    assert len(finished.of(other)) == 4
    # The other clinic's jobs went on meanwhile: all done before the capped one's last.
    order = [cid for cid, _ in finished.jobs]
    assert max(i for i, cid in enumerate(order) if cid == other.id) < max(
        i for i, cid in enumerate(order) if cid == hog.id
    )
    assert pipeline.redis.exists(pipeline.keys.thread_leases(hog.id)) == 0  # all given back
    # A deferral is no failure: each event's trail shows the one run that did it, and the
    # jobs counted as waiting, none retried or dead.
    events = EventLog(pipeline.redis, pipeline.keys)
    for event_id in sent.json()["accepted"]:
        [view] = events.get(event_id, hog.id)
        assert [a.outcome for a in view.attempts] == [AttemptOutcome.SUCCEEDED]
        assert view.status.state is EventState.DONE
    outcomes = {
        outcome: JOBS.labels("sync_patient", "live", hog.id, outcome)._value.get()
        for outcome in ("waiting", "retried", "dead")
    }
    assert outcomes["waiting"] >= deferrals(hog) - before > 0
    assert outcomes["retried"] == outcomes["dead"] == 0


@pytest.fixture
def storm_receiver(
    base_settings: Settings, verify_key: KeyVerifier, pipeline: Pipeline
) -> Iterator[TestClient]:
    """A receiver beside the pipeline's that sends a connection's events past 5 a minute to
    the storm lane."""
    settings = base_settings.model_copy(
        update={
            "physitrack_webhook_keys": SecretStr(PHYSITRACK_WEBHOOK_KEY),
            "storm_events_per_minute": 5,
        }
    )
    with TestClient(create_app(settings, verify_key=verify_key)) as receiver:
        yield receiver


def send(
    receiver: TestClient, connection: Connection, event: str, kind: str, ids: list[str]
) -> None:
    body = notification(connection.halaxy_base_url, kind, ids)
    response = receiver.post(
        f"/webhooks/halaxy/{connection.id}/{event}",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth(connection)},
    )
    assert response.status_code == 202, response.text


def queued_on(client: redis.Redis, pipeline: Pipeline, queue: str) -> list[dict[str, Any]]:
    ids = client.lrange(pipeline.keys.dramatiq_queue(queue), 0, -1)
    found = client.hmget(pipeline.keys.dramatiq_messages(queue), ids) if ids else []
    return [orjson.loads(m) for m in found]


def invoices(n: int, first: int = 1) -> list[str]:
    return [f"inv-{i}" for i in range(first, first + n)]


@pytest.mark.parametrize("pipeline", [1], indirect=True)
def test_a_storm_goes_to_the_storm_lane_and_other_clinics_live_events_run_first(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    storm_receiver: TestClient,
    finished: Finished,
) -> None:
    storming = sandbox_connection(pipeline.store, sandbox, verify_key, name="Storming")
    calm = sandbox_connection(pipeline.store, sandbox, verify_key, name="Calm")
    counted = STORM_EVENTS.labels(storming.id)._value.get()
    pipeline.worker.pause()
    try:
        send(storm_receiver, storming, "invoice-created", "Invoice", invoices(3))
        send(storm_receiver, storming, "invoice-updated", "Invoice", invoices(27, first=4))
        send(storm_receiver, calm, "invoice-created", "Invoice", invoices(3, first=100))

        live = queued_on(pipeline.redis, pipeline, "live")
        storm = queued_on(pipeline.redis, pipeline, "storm")
        # The first five of the minute stay live; the other 25 wait on the storm lane, as the
        # storm twin of their actor; the calm clinic's stay live.
        assert [m["kwargs"]["connection_id"] for m in live] == [storming.id] * 5 + [calm.id] * 3
        assert {m["actor_name"] for m in storm} == {"record_invoice_storm"}
        assert [m["kwargs"]["connection_id"] for m in storm] == [storming.id] * 25
        assert STORM_EVENTS.labels(storming.id)._value.get() == counted + 25
        counts = QueuedMessages(pipeline.redis, pipeline.keys).read([storming.id], 0)
        assert counts[storming.id]["storm"].queued == 25
    finally:
        pipeline.worker.resume()
    pipeline.drain()

    # One thread, taking the highest priority of what the worker has prefetched: the calm
    # clinic's live events ran before most of the storm's backlog (in one FIFO queue they would
    # have waited for all of it). A storm message runs while the live prefetch is being
    # refilled: about one for every two live ones.
    order = finished.jobs
    last_calm = max(i for i, (cid, _) in enumerate(order) if cid == calm.id)
    storm_before = [job for job in order[:last_calm] if job[1] == "storm"]
    assert len(storm_before) <= 25 // 2
    assert finished.of(storming).count("storm") == 25
    assert finished.of(calm) == ["live"] * 3


@pytest.mark.parametrize("pipeline", [1], indirect=True)
def test_pause_holds_and_resume_releases_the_storm_lane(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    storm_receiver: TestClient,
    finished: Finished,
) -> None:
    storming = sandbox_connection(pipeline.store, sandbox, verify_key, name="Paused storm")
    pauses = PausedConnections(pipeline.redis, pipeline.keys)
    pauses.pause(storming.id, "test", utcnow())
    send(storm_receiver, storming, "invoice-created", "Invoice", invoices(12))
    pipeline.drain()
    assert finished.of(storming) == []  # held, every one of them
    held_list = pipeline.redis.lrange(pipeline.keys.held_messages(storming.id), 0, -1)
    held = [orjson.loads(record) for record in held_list]
    assert sorted(h["queue"] for h in held) == ["live"] * 5 + ["storm"] * 7

    assert pauses.resume(storming.id)
    assert pauses.release(storming.id) == 12
    pipeline.drain()
    assert sorted(finished.of(storming)) == ["live"] * 5 + ["storm"] * 7


@pytest.mark.parametrize("pipeline", [1], indirect=True)
def test_offboarding_erases_the_storm_lane_and_the_fair_share_records(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    storm_receiver: TestClient,
    base_settings: Settings,
) -> None:
    leaving = sandbox_connection(pipeline.store, sandbox, verify_key, name="Leaving")
    staying = sandbox_connection(pipeline.store, sandbox, verify_key, name="Staying")
    pipeline.worker.pause()
    try:
        send(storm_receiver, leaving, "invoice-created", "Invoice", invoices(9))
        send(storm_receiver, staying, "invoice-created", "Invoice", invoices(7, first=50))
        leases = ThreadLeases(pipeline.redis, pipeline.keys)
        assert leases.take(leaving.id, "t", now=1.0, lapses_at=10**10, cap=1, key_seconds=60)
        erasures = {e.what: e for e in standard_erasures(pipeline.store, base_settings.fernet)}

        assert erase_queued_messages(pipeline.redis, pipeline.keys, leaving.id) == 9
        # Its lease, its member of the live index (its first five events went live).
        assert erasures["thread_leases"].erase(leaving) == 2
        assert erasures["storm_counts"].erase(leaving) >= 1  # this minute's (and the last's)
    finally:
        pipeline.worker.resume()

    pipeline.drain()
    assert not list(pipeline.redis.scan_iter(match=pipeline.keys.storm_count(leaving.id, "*")))
    assert not pipeline.redis.exists(pipeline.keys.thread_leases(leaving.id))
    assert pipeline.redis.zscore(pipeline.keys.live_connections(), leaving.id) is None
    assert pipeline.redis.zscore(pipeline.keys.live_connections(), staying.id) is not None
    assert list(pipeline.redis.scan_iter(match=pipeline.keys.storm_count(staying.id, "*")))

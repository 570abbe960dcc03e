"""Workers and schedulers write heartbeats; status says how many are alive, when one was last
seen, which scheduler leads, and "none seen"; /metrics says the same. Heartbeats are aged by
moving the product clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
import redis
import time_machine
from prometheus_client.parser import text_string_to_metric_families

from services.scheduler.loop import Scheduler
from services.workers.messaging import build_broker
from services.workers.runtime import WorkerRuntime
from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds, iso_now, utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox
from shared.ops.liveness import KEPT, Duty, Heartbeat, Heartbeats, Kind
from shared.ops.status import status
from shared.telemetry.collect import exposition, gauges

NONE_SEEN = {"alive": 0, "last_seen_at": None, "seen_seconds_ago": None, "instances": []}


@pytest.fixture
def gather(
    settings: Settings, redis_server_client: redis.Redis, keys: Keys, store: ConnectionStore
) -> Callable[[], dict[str, Any]]:
    outbox = NoteOutbox(redis_server_client, keys, settings.fernet)
    return lambda: status(redis_server_client, keys, store, outbox)


def samples(snapshot: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every gauge sample `/metrics` would serve for this status, by name and labels."""
    text = exposition(list(gauges(snapshot, 86_400, epoch_seconds()))).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_none_seen_is_a_state_of_its_own(gather: Callable[[], dict[str, Any]]) -> None:
    found = gather()
    assert found["workers"] == NONE_SEEN
    assert found["scheduler"] == {**NONE_SEEN, "leader": None}
    metrics = samples(found)
    assert metrics[("halaxy_bridge_workers_alive", ())] == 0
    assert metrics[("halaxy_bridge_schedulers_alive", (("role", "leader"),))] == 0
    assert ("halaxy_bridge_worker_last_seen_timestamp_seconds", ()) not in metrics


def test_a_running_worker_is_alive_and_gone_once_it_stops(
    settings: Settings, redis_server_client: redis.Redis, gather: Callable[[], dict[str, Any]]
) -> None:
    broker = build_broker(settings, redis_server_client)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        # Dramatiq's own heartbeat of it comes with its consumers' first fetch.
        assert wait_for(
            lambda: gather()["workers"]["instances"][0]["dramatiq_seen_seconds_ago"] is not None
        )
        found = gather()["workers"]
        assert found["alive"] == 1
        [instance] = found["instances"]
        assert instance["instance"] == broker.broker_id  # its member in Dramatiq's heartbeats
        assert instance["role"] == "worker"
        assert instance["alive"] is True
        assert instance["fresh_for_seconds"] == settings.worker_heartbeat_timeout_seconds
        assert instance["seen_seconds_ago"] <= 5
        assert instance["dramatiq_seen_seconds_ago"] <= 5
        metrics = samples(gather())
        assert metrics[("halaxy_bridge_workers_alive", ())] == 1
        last_seen = metrics[("halaxy_bridge_worker_last_seen_timestamp_seconds", ())]
        assert abs(last_seen - epoch_seconds()) <= 10
    finally:
        worker.stop()
    assert gather()["workers"] == NONE_SEEN  # stopped cleanly: gone, not dead


def test_a_worker_whose_heartbeat_stopped_is_dead_then_forgotten_after_a_day(
    redis_server_client: redis.Redis, keys: Keys, gather: Callable[[], dict[str, Any]]
) -> None:
    """As a worker killed with SIGKILL leaves it: its last heartbeat, never removed."""
    start = utcnow()
    beat = Heartbeat("w-killed", Duty.WORKER, "host-a", 4242, iso_now(), epoch_seconds(), 30.0)
    Heartbeats(redis_server_client, keys, Kind.WORKER).beat(beat)

    with time_machine.travel(start + timedelta(seconds=29), tick=False):
        assert gather()["workers"]["alive"] == 1
    with time_machine.travel(start + timedelta(seconds=31), tick=False):
        found = gather()
        workers = found["workers"]
        assert workers["alive"] == 0
        assert workers["last_seen_at"] == found["workers"]["instances"][0]["last_seen_at"]
        assert 30 <= workers["seen_seconds_ago"] <= 32
        [instance] = workers["instances"]
        assert (instance["instance"], instance["alive"], instance["host"]) == (
            "w-killed",
            False,
            "host-a",
        )
        assert instance["dramatiq_seen_seconds_ago"] is None
        assert samples(found)[("halaxy_bridge_workers_alive", ())] == 0
    with time_machine.travel(start + KEPT + timedelta(minutes=1), tick=False):
        assert gather()["workers"] == NONE_SEEN


def test_the_scheduler_says_who_leads_and_a_stopped_one_hands_over(
    settings: Settings, gather: Callable[[], dict[str, Any]]
) -> None:
    first = Scheduler(settings, WorkerRuntime(settings))
    second = Scheduler(settings, WorkerRuntime(settings))
    first.tick()
    second.tick()
    found = gather()["scheduler"]
    assert found["alive"] == 2
    assert found["leader"] == first.id
    roles = {row["instance"]: row["role"] for row in found["instances"]}
    assert roles == {first.id: "leader", second.id: "standby"}
    metrics = samples(gather())
    assert metrics[("halaxy_bridge_schedulers_alive", (("role", "leader"),))] == 1
    assert metrics[("halaxy_bridge_schedulers_alive", (("role", "standby"),))] == 1

    first.resign()  # stopped cleanly: its lease and its heartbeat go at once
    second.tick()
    found = gather()["scheduler"]
    assert (found["alive"], found["leader"]) == (1, second.id)
    assert [row["instance"] for row in found["instances"]] == [second.id]

    with time_machine.travel(utcnow() + timedelta(seconds=31), tick=False):
        found = gather()["scheduler"]
        assert (found["alive"], found["leader"]) == (0, None)
        assert found["last_seen_at"] is not None  # none alive, but one was seen
    second.resign()

"""`halaxy-bridge probe worker|scheduler`, the health command of the compose healthchecks and
the Kubernetes exec probes: exit 0 only when an instance of that kind on this host wrote a
fresh heartbeat. Heartbeats are aged by moving the product clock."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta

import dramatiq
import orjson
import pytest
import redis
import time_machine
from click.testing import CliRunner, Result

from services.cli.main import cli
from services.scheduler.loop import Scheduler
from services.workers.messaging import build_broker
from services.workers.runtime import WorkerRuntime
from shared.infra.clock import epoch_seconds, iso_now, utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.liveness import Duty, Heartbeat, Heartbeats, Kind
from tests.ops.test_liveness import wait_for

Probe = Callable[..., Result]
HERE = socket.gethostname()


@pytest.fixture
def probe(settings: Settings) -> Probe:
    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        environment = {"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace, **(env or {})}
        return CliRunner().invoke(cli, ["probe", *args], env=environment)

    return run


def beat(client: redis.Redis, keys: Keys, kind: Kind, host: str, fresh_for: float = 30) -> None:
    role = Duty.WORKER if kind is Kind.WORKER else Duty.LEADER
    heartbeat = Heartbeat(f"{kind}-{host}", role, host, 4242, iso_now(), epoch_seconds(), fresh_for)
    Heartbeats(client, keys, kind).beat(heartbeat)


@pytest.mark.parametrize("kind", list(Kind))
def test_alive_when_an_instance_of_this_host_beat_within_its_freshness(
    probe: Probe, redis_server_client: redis.Redis, keys: Keys, kind: Kind
) -> None:
    start = utcnow()
    beat(redis_server_client, keys, kind, HERE, fresh_for=30)

    with time_machine.travel(start + timedelta(seconds=29), tick=False):
        alive = probe(kind.value, "--json")
    with time_machine.travel(start + timedelta(seconds=31), tick=False):
        stale = probe(kind.value)

    assert alive.exit_code == 0, alive.output
    assert orjson.loads(alive.output) == {
        "kind": kind.value,
        "host": HERE,
        "alive": 1,
        "seen_seconds_ago": pytest.approx(29, abs=0.5),
    }
    assert stale.exit_code == 1
    assert f"no {kind.value} on {HERE} is alive (last seen 31s ago)" in stale.output


def test_an_instance_of_another_host_or_kind_does_not_count(
    probe: Probe, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A worker in another pod says nothing of this one; a scheduler is no worker."""
    beat(redis_server_client, keys, Kind.WORKER, "another-pod")
    beat(redis_server_client, keys, Kind.SCHEDULER, HERE)

    result = probe("worker")

    assert result.exit_code == 1
    assert f"no worker on {HERE} is alive (none seen)" in result.output
    assert probe("scheduler").exit_code == 0


def test_a_running_worker_passes_and_fails_once_it_stopped(
    probe: Probe, settings: Settings, redis_server_client: redis.Redis
) -> None:
    """The heartbeats the probe reads are the ones a real worker writes (its middleware)."""
    worker = dramatiq.Worker(build_broker(settings, redis_server_client), worker_threads=1)
    worker.start()
    try:
        assert wait_for(lambda: probe("worker").exit_code == 0)
    finally:
        worker.stop()
    assert probe("worker").exit_code == 1  # stopped cleanly: its heartbeat is removed


def test_a_ticking_scheduler_passes_leader_or_standby(probe: Probe, settings: Settings) -> None:
    runtimes = [WorkerRuntime(settings), WorkerRuntime(settings)]
    try:
        for runtime in runtimes:  # the first to tick leads, the second stands by
            Scheduler(settings, runtime).tick()

        result = probe("scheduler", "--json")
    finally:
        for runtime in runtimes:
            runtime.close()

    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["alive"] == 2


def test_redis_unreachable_cannot_tell_and_fails_unless_told_to_pass(probe: Probe) -> None:
    """Readiness fails while Redis is down; liveness (`--redis-down-ok`) does not restart a
    process that a restart would not help."""
    down = {"REDIS_URL": "redis://127.0.0.1:1/0"}

    strict = probe("worker", env=down)
    lenient = probe("worker", "--redis-down-ok", env=down)

    assert strict.exit_code == 3
    assert f"cannot tell whether a worker on {HERE} is alive" in strict.output
    assert lenient.exit_code == 0
    assert "passing (--redis-down-ok)" in lenient.output


def test_an_unknown_kind_is_a_usage_error(probe: Probe) -> None:
    result = probe("web")

    assert result.exit_code == 2
    assert "'web' is not one of 'worker', 'scheduler'" in result.output

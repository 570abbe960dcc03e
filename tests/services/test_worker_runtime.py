"""What a worker process keeps per connection, and how a change to the connection applies."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from pydantic import SecretStr

from services.workers.runtime import (
    RETIRED_CLIENT_GRACE_SECONDS,
    WorkerBootError,
    WorkerRuntime,
    current_runtime,
    provide_runtime,
)
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier, disable
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import ConfigError, ConnectionNotFound
from tests.workers import Sandbox, sandbox_connection


def new_runtime(settings: Settings) -> WorkerRuntime:
    return WorkerRuntime(settings, redis.Redis.from_url(settings.redis_url))


@pytest.fixture
def runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    built = new_runtime(settings)
    yield built
    built.close()


def test_services_are_reused_until_the_stored_connection_changes(
    runtime: WorkerRuntime, store: ConnectionStore, connection: Connection
) -> None:
    first = runtime.services(connection.id)
    assert runtime.services(connection.id) is first
    rotated = connection.model_copy(
        update={"platform_api_key": SecretStr("pt-key-new"), "updated_at": utcnow()}
    )
    store.save(rotated)
    second = runtime.services(connection.id)  # the next job uses the new key at once
    assert second is not first
    assert second.connection.platform_api_key.get_secret_value() == "pt-key-new"
    assert runtime.services(connection.id) is second
    store.save(disable(rotated, utcnow()))
    with pytest.raises(ConnectionNotFound):
        runtime.services(connection.id)


def test_patient_locks_use_the_runtimes_renewer_and_are_refused_once_it_closes(
    runtime: WorkerRuntime, connection: Connection
) -> None:
    links = runtime.services(connection.id).links
    with links.locked("1001"):
        pass
    runtime.close()
    with pytest.raises(RuntimeError, match="renewer is closed"), links.locked("1001"):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_retired_client_serves_its_jobs_until_none_can_still_be_running(
    store: ConnectionStore, sandbox: Sandbox, verify_key: KeyVerifier, settings: Settings
) -> None:
    clock = Clock()
    runtime = WorkerRuntime(settings, redis.Redis.from_url(settings.redis_url), clock=clock)
    connection = sandbox_connection(store, sandbox, verify_key)
    other = sandbox_connection(store, sandbox, verify_key)
    try:
        old = runtime.services(connection.id)  # a job takes the services, then the URL moves
        moved = sandbox.physitrack_url.replace("127.0.0.1", "localhost")
        store.save(connection.model_copy(update={"platform_base_url": moved}))
        assert runtime.services(connection.id).platform is not old.platform
        clock.now += RETIRED_CLIENT_GRACE_SECONDS
        runtime.services(other.id)  # builds services: the old client is kept
        assert old.platform.find_patient("1001") is None  # the job still works
        clock.now += 1
        store.save(other.model_copy(update={"name": "Renamed"}))
        runtime.services(other.id)  # built again: past the grace, the old client is closed
        with pytest.raises(RuntimeError, match="client has been closed"):
            old.platform.find_patient("1001")
    finally:
        runtime.close()


def test_each_worker_builds_its_runtime_hands_it_to_its_jobs_and_closes_it_when_stopped(
    settings: Settings,
) -> None:
    """Two brokers' workers running at once in one process (as in the chaos test): each job
    gets the runtime of the worker running it, and a stopped worker's runtime is closed."""
    built: dict[str, WorkerRuntime] = {}
    seen: dict[str, list[WorkerRuntime]] = {"a": [], "b": []}

    def record(name: str) -> None:
        seen[name].append(current_runtime())

    running = []
    for name in ("a", "b"):
        broker = StubBroker()

        def build(name: str = name) -> WorkerRuntime:
            built[name] = new_runtime(settings)
            return built[name]

        provide_runtime(broker, build)
        actor = dramatiq.actor(record, broker=broker, actor_name="record", max_retries=0)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
        worker.start()
        running.append((broker, actor, worker))
    for _round in range(6):
        for name, (_, actor, _) in zip("ab", running, strict=True):
            actor.send(name)
    for broker, actor, worker in running:
        broker.join(actor.queue_name)
        worker.join()
        worker.stop()

    assert seen == {"a": [built["a"]] * 6, "b": [built["b"]] * 6}
    with pytest.raises(RuntimeError, match="no worker runtime"):
        current_runtime()  # outside any job
    lease = redis.Redis.from_url(settings.redis_url).lock(f"{settings.redis_namespace}:k", 1.0)
    for runtime in built.values():
        with pytest.raises(RuntimeError, match="closed"):
            runtime.renewer.add(lease)


def test_a_job_that_outlives_the_shutdown_timeout_keeps_its_runtime(settings: Settings) -> None:
    """Closing the runtime under a running job would stop renewing its leases, and another
    worker could take its note while it still writes it: it is left for the process exit."""
    started, release = threading.Event(), threading.Event()
    runtimes: list[WorkerRuntime] = []

    def build() -> WorkerRuntime:
        runtimes.append(new_runtime(settings))
        return runtimes[0]

    def slow() -> None:
        started.set()
        release.wait(10)

    broker = StubBroker()
    provide_runtime(broker, build)
    actor = dramatiq.actor(slow, broker=broker, actor_name="slow", max_retries=0)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    actor.send()
    assert started.wait(10)
    worker.stop(timeout=50)  # gives up waiting for the job
    try:
        lease = redis.Redis.from_url(settings.redis_url).lock(f"{settings.redis_namespace}:k", 1)
        runtimes[0].renewer.add(lease)  # still renewing: not closed
        runtimes[0].renewer.discard(lease)
    finally:
        release.set()
        runtimes[0].close()


def test_a_worker_whose_runtime_cannot_be_built_does_not_start(settings: Settings) -> None:
    """Dramatiq only logs other errors in a boot hook; the worker would then run and fail
    every job, looking healthy from outside."""

    def build() -> WorkerRuntime:
        raise ConfigError("REDIS_URL is not a Redis URL")

    broker = StubBroker()
    provide_runtime(broker, build)
    with pytest.raises(WorkerBootError, match="ConfigError"):
        dramatiq.Worker(broker, worker_threads=1).start()


def test_a_second_worker_on_the_same_broker_does_not_start(settings: Settings) -> None:
    """Stopping either would close the runtime the other's jobs use."""
    broker = StubBroker()
    provide_runtime(broker, lambda: new_runtime(settings))
    first = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    first.start()
    try:
        with pytest.raises(WorkerBootError, match="one worker per broker"):
            dramatiq.Worker(broker, worker_threads=1, worker_timeout=20).start()
    finally:
        first.stop()

"""Draining a pre-filled queue with real worker processes, timed from Redis.

A watcher thread polls the live queue every few milliseconds: the drain starts when the first
message leaves the queue (a worker fetched it) and ends when Dramatiq's own count of the
queue (waiting, delayed and fetched-but-not-acknowledged messages) reaches zero. The same
clock serves the figure (patient syncs) and its floor (no-op messages), so worker boot time
is in neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.common import BenchError, Context, namespace, wait_for
from bench.floor_actor import ACTOR_NAME
from bench.loadgen import post_all
from bench.procs import CpuMeter, Workers, receiver, workers
from bench.profiling import profiled
from bench.sandbox import add_clinics, add_patients, spread, timed
from services.workers.messaging import build_broker
from shared.infra.config import Settings
from shared.infra.jobs import QueueName
from shared.infra.store import redis_client
from tests.workers import Sandbox

POLL_SECONDS = 0.005
QUEUE = QueueName.LIVE.value
# Where a webhook's job may wait: the live queue, or the storm lane a connection's live events
# go to over its events-a-minute threshold (issue 21; absent from older builds, then empty).
LANES = (QUEUE, "storm")


@dataclass
class Drain:
    messages: int
    seconds: float
    worker_cores: float  # CPU the worker processes used during the drain
    own_cores: float  # CPU this process (the sandbox) used
    workers: Workers

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class DrainWatcher:
    """Times the drain of `messages` from the live queue (see the module docstring)."""

    def __init__(self, broker: RedisBroker, messages: int) -> None:
        self._broker = broker
        self._messages = messages
        self._queue_keys = [f"{broker.namespace}:{lane}" for lane in LANES]
        self.started: float | None = None
        self.finished: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drain-watcher", daemon=True)

    def _watch(self) -> None:
        client = self._broker.client
        while not self._stop.is_set():
            now = time.monotonic()
            waiting = sum(int(client.llen(key)) for key in self._queue_keys)
            if self.started is None and waiting < self._messages:
                self.started = now
            if self.started is not None and queued(self._broker) == 0:
                self.finished = time.monotonic()
                return
            time.sleep(POLL_SECONDS)

    def __enter__(self) -> DrainWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait(self, timeout: float) -> float:
        """Seconds from the first fetch to the last acknowledgement."""
        wait_for(lambda: self.finished is not None, timeout, "the queue to drain", poll=0.02)
        assert self.started is not None
        assert self.finished is not None
        return self.finished - self.started


@contextmanager
def broker_for(settings: Settings) -> Iterator[RedisBroker]:
    client = redis_client(settings)
    try:
        yield build_broker(settings, client)
    finally:
        client.close()


def queued(broker: RedisBroker) -> int:
    """Messages not yet acknowledged on the lanes (waiting, delayed or being worked on)."""
    return sum(int(broker.do_qsize(lane)) for lane in LANES)


def drain(
    ctx: Context,
    settings: Settings,
    broker: RedisBroker,
    messages: int,
    processes: int,
    log: Path,
    *,
    module: str | None = None,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    profile_as: str = "",
    timeout: float = 600.0,
) -> Drain:
    """Start worker processes on the pre-filled queue and time its drain."""
    if queued(broker) != messages:
        raise BenchError(f"expected {messages} queued messages, found {queued(broker)}")
    with (
        DrainWatcher(broker, messages) as watcher,
        workers(settings, log, processes, module=module, threads=threads, env=env) as running,
    ):
        meter = CpuMeter(running.proc.tree())
        with profiled(ctx, running.proc.pid, profile_as) if profile_as else _nothing():
            seconds = watcher.wait(timeout)
        worker_cores, own_cores = meter.cores()
    return Drain(messages, seconds, worker_cores, own_cores, running)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def floor_drain(
    ctx: Context,
    module: str,
    messages: int,
    processes: int,
    log: Path,
    threads: int | None = None,
    prepare: Callable[[Settings], dict[str, str]] | None = None,
) -> Drain:
    """`messages` messages for the floor's actor, shaped like sync jobs, drained by the same
    worker settings (or `threads`) with `module`, declaring that actor, in place of the
    workers package. `prepare`, given the drain's settings, readies Redis and returns the
    workers' extra environment."""
    with namespace(module.rpartition(".")[2]) as settings, broker_for(settings) as broker:
        env = prepare(settings) if prepare is not None else None
        for number in range(messages):
            broker.enqueue(
                dramatiq.Message(
                    queue_name=QUEUE,
                    actor_name=ACTOR_NAME,
                    args=(),
                    kwargs={
                        "connection_id": "cn_bench",
                        "resource_id": str(number),
                        "event": "patient-created",
                        "event_id": f"floor-{number}",
                    },
                    options={},
                )
            )
        return drain(
            ctx, settings, broker, messages, processes, log, module=module, env=env, threads=threads
        )


def noop_drain(
    ctx: Context, messages: int, processes: int, log: Path, threads: int | None = None
) -> Drain:
    """The floor: no-op messages through the product's broker and middleware."""
    return floor_drain(ctx, "bench.noop_worker", messages, processes, log, threads=threads)


def sync_drain(
    ctx: Context,
    settings: Settings,
    sandbox: Sandbox,
    syncs: int,
    processes: int,
    log: Path,
    *,
    threads: int | None = None,
    profile_as: str = "",
) -> Drain:
    """`syncs` patient-created webhooks accepted by the real receiver (spread over clinics),
    then drained by worker processes; every patient must reach the platform."""
    clinics = add_clinics(settings, sandbox, ctx.size.clinics, "Clinic")
    patient_ids = [f"patient-{n}" for n in range(syncs)]
    add_patients(sandbox, patient_ids)
    with receiver(settings, log.with_name(log.stem + "-receiver.log")) as web:
        post_all(web.url, spread(clinics, patient_ids))
    with broker_for(settings) as broker:
        result = drain(
            ctx, settings, broker, syncs, processes, log, threads=threads, profile_as=profile_as
        )
    written = timed(sandbox).written_at
    missing = [p for p in patient_ids if p not in written]
    if missing:
        raise BenchError(f"{len(missing)} of {syncs} patients did not reach the platform")
    return result

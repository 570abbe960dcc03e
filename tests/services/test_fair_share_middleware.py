"""The fair share middleware's pieces: how long a deferral waits, how long a lease lives, and
that a deferral spends none of the retry budget."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from hypothesis import given
from hypothesis import strategies as st

from services.workers.fair_share import (
    DEFERRALS,
    FIRST_DEFERRAL_MS,
    LEASE_GRACE_SECONDS,
    LONGEST_DEFERRAL_MS,
    FairShare,
    FairShareDeferred,
    deferral_delay_ms,
    lease_seconds,
)
from services.workers.heartbeat import WorkerHeartbeat
from services.workers.job_metrics import JobMetrics
from services.workers.policy import RETRY_OPTIONS
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.fair_share import ThreadLeases
from shared.ops.liveness import Heartbeats, Kind
from shared.ops.queued import QueuedMessages
from shared.telemetry.activity import FAILED, NOT_PROCESSED
from shared.telemetry.definitions import JOBS


@given(deferrals=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_a_deferral_waits_a_jittered_growing_bounded_time(deferrals: int, seed: int) -> None:
    delay = deferral_delay_ms(deferrals, random.Random(seed))
    ceiling = min(FIRST_DEFERRAL_MS * 2 ** min(deferrals - 1, 16), LONGEST_DEFERRAL_MS)
    assert ceiling / 2 - 1 <= delay <= ceiling <= LONGEST_DEFERRAL_MS


def message(queue: str = "live", **options: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue,
        actor_name="sync_patient",
        args=(),
        kwargs={"connection_id": "cn_a", "resource_id": "1"},
        options=options,
        message_timestamp=int(time.time() * 1000),
    )


def test_a_lease_lives_the_jobs_time_limit_and_a_grace() -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.actor(actor_name="sync_patient", broker=broker, time_limit=120_000)(lambda: None)
    assert lease_seconds(broker, message()) == 120 + LEASE_GRACE_SECONDS
    assert lease_seconds(broker, message(time_limit=5_000)) == 5 + LEASE_GRACE_SECONDS
    unknown = dramatiq.Message(queue_name="live", actor_name="gone", args=(), kwargs={}, options={})
    assert lease_seconds(broker, unknown) == 600 + LEASE_GRACE_SECONDS  # Dramatiq's default


def test_a_deferral_spends_none_of_the_retry_budget(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    keys = Keys(f"{base_settings.redis_namespace}-fair-middleware")
    leases = ThreadLeases(redis_server_client, keys)
    fair = FairShare(leases, Heartbeats(redis_server_client, keys, Kind.WORKER), share=0.25)
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.actor(actor_name="sync_patient", queue_name="live", broker=broker, **RETRY_OPTIONS)(
        lambda: None
    )
    now = time.time()
    # cn_a holds its one thread (a pool of one), and another connection's live message is due
    # with no thread.
    assert leases.take("cn_a", "a", now=now, lapses_at=now + 60, cap=1, key_seconds=9)
    queued_messages = QueuedMessages(redis_server_client, keys)
    queued_messages.add("cn_b", "live", "b1", now)
    queued = dramatiq.MessageProxy(message(retries=3))
    try:
        with pytest.raises(FairShareDeferred) as deferred:
            fair.before_process_message(broker, queued)
        assert isinstance(deferred.value, dramatiq.middleware.MiddlewareError)  # let out
        assert queued.options[DEFERRALS] == 1
        assert FIRST_DEFERRAL_MS / 2 <= (deferred.value.delay or 0) <= FIRST_DEFERRAL_MS

        Retries().after_process_message(broker, queued, exception=deferred.value)
        assert queued.options["retries"] == 3  # as before it was turned away
        # Counted as waiting: neither a failure nor throughput.
        waiting = JOBS.labels("sync_patient", "live", "cn_a", "waiting")
        before = waiting._value.get()
        JobMetrics().after_process_message(broker, queued, exception=deferred.value)
        assert waiting._value.get() == before + 1
        assert "waiting" in NOT_PROCESSED
        assert "waiting" not in FAILED
        fair.after_process_message(broker, queued, exception=deferred.value)
        assert leases.held(["cn_a"], now)["cn_a"] == 1  # it took none, so gives none back

        # Once cn_a's thread is free, the message takes one, and gives it back after.
        leases.give_back("cn_a", "a")
        fair.before_process_message(broker, queued)
        assert DEFERRALS not in queued.options
        assert leases.held(["cn_a"], now)["cn_a"] == 1
        fair.after_process_message(broker, queued)
        assert leases.held(["cn_a"], now)["cn_a"] == 0
    finally:
        leases.forget("cn_a")
        leases.forget("cn_b")
        queued_messages.forget("cn_b")


def test_the_pool_is_every_workers_threads_from_their_heartbeats(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    keys = Keys(f"{base_settings.redis_namespace}-fair-pool")
    heartbeats = Heartbeats(redis_server_client, keys, Kind.WORKER)
    beating = [WorkerHeartbeat(heartbeats, fresh_for=30.0) for _ in range(2)]
    try:
        for beat, threads in zip(beating, (16, 8), strict=True):
            beat.after_worker_boot(StubBroker(), SimpleNamespace(worker_threads=threads))
        fair = FairShare(ThreadLeases(redis_server_client, keys), heartbeats, share=0.25)
        fair.after_worker_boot(StubBroker(), SimpleNamespace(worker_threads=8))
        assert fair.pool() == 24
        assert fair.cap() == 6
    finally:
        for beat in beating:
            beat.before_worker_shutdown(StubBroker(), None)
    # Gone (stopped cleanly) or unreadable: a worker counts its own threads at least.
    fair = FairShare(ThreadLeases(redis_server_client, keys), heartbeats, share=0.25)
    fair.after_worker_boot(StubBroker(), SimpleNamespace(worker_threads=8))
    assert fair.pool() == 8
    assert fair.cap() == 2

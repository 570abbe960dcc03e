"""Messages a worker's consumer held when its connection broke go back on their queues when the
consumer starts again (`services/workers/orphans.py`); the failover test shows why."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from queue import PriorityQueue
from typing import Any

import dramatiq
import dramatiq.worker
import pytest
import redis
from dramatiq.message import Message
from dramatiq.worker import ConsumerThread

from services.workers.orphans import OrphanRequeuingRedisBroker
from shared.infra.config import Settings
from tests.redis_server import wait_for

_namespaces = itertools.count()


def broker_on(client: redis.Redis, settings: Settings) -> OrphanRequeuingRedisBroker:
    namespace = f"{settings.redis_namespace}-orphans-{next(_namespaces)}"
    broker = OrphanRequeuingRedisBroker(client=client, namespace=namespace)
    broker.declare_queue("live")

    @dramatiq.actor(broker=broker, queue_name="live", actor_name="sync_patient")
    def sync_patient(n: int) -> None: ...

    for n in range(5):
        broker.enqueue(sync_patient.message(n))
        broker.enqueue(sync_patient.message(100 + n), delay=60_000)
    return broker


def ids(client: redis.Redis, key: str) -> set[str]:
    kind = client.type(key)
    members: Any = client.lrange(key, 0, -1) if kind == b"list" else client.smembers(key)
    return {m.decode() for m in members}


def message_ids(client: redis.Redis, namespace: str, queue: str) -> list[str]:
    """The Dramatiq message ids on a queue, in order (its list holds each enqueue's own id)."""
    redis_ids = client.lrange(f"{namespace}:{queue}", 0, -1)
    stored = client.hmget(f"{namespace}:{queue}.msgs", redis_ids) if redis_ids else []
    return [Message.decode(data).message_id for data in stored if data is not None]


def cleanup(client: redis.Redis, broker: OrphanRequeuingRedisBroker) -> None:
    for key in client.scan_iter(match=f"{broker.namespace}:*"):
        client.delete(key)


def test_a_delay_queue_consumer_started_again_puts_back_all_it_held(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    client = redis_server_client
    broker = broker_on(client, base_settings)
    acks = f"{broker.namespace}:__acks__.{broker.broker_id}.live.DQ"
    try:
        first = broker.consume("live.DQ", prefetch=10)
        held = [next(first) for _ in range(3)]  # held in memory until due, as Dramatiq does
        assert all(message is not None for message in held)
        assert len(ids(client, acks)) == 5  # fetched: in the worker's acknowledgement set
        assert ids(client, f"{broker.namespace}:live.DQ") == set()

        # The connection broke: Dramatiq emptied the delay queue's memory, and starts again.
        broker.consume("live.DQ", prefetch=10)

        assert ids(client, acks) == set()
        assert len(ids(client, f"{broker.namespace}:live.DQ")) == 5
    finally:
        cleanup(client, broker)


def test_a_queue_consumer_started_again_puts_back_only_what_it_had_not_handed_on(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    client = redis_server_client
    broker = broker_on(client, base_settings)
    acks = f"{broker.namespace}:__acks__.{broker.broker_id}.live"
    try:
        # The first start has no predecessor: nothing is requeued.
        first = broker.consume("live", prefetch=5)
        handed_on = next(first)  # to a worker thread, which acknowledges it as usual
        assert handed_on is not None
        assert len(ids(client, acks)) == 5

        broker.consume("live", prefetch=5)

        assert ids(client, acks) == {handed_on.options["redis_message_id"]}
        assert len(ids(client, f"{broker.namespace}:live")) == 4
    finally:
        cleanup(client, broker)


def test_a_delay_queue_consumer_survives_redis_failing_as_it_moves_a_due_message(
    redis_server_client: redis.Redis, base_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away just as Dramatiq's delay-queue consumer moves a due message to its queue:
    the enqueue fails, and so does the requeue of what the consumer still held. The consumer
    thread lives on, and once Redis is back the due message reaches its queue and the other
    is held again: nothing stays behind in the worker's acknowledgement set."""
    client = redis_server_client
    namespace = f"{base_settings.redis_namespace}-orphans-{next(_namespaces)}"
    broker = OrphanRequeuingRedisBroker(client=client, namespace=namespace)
    broker.declare_queue("live")

    @dramatiq.actor(broker=broker, queue_name="live", actor_name="sync_patient")
    def sync_patient(n: int) -> None: ...

    due = broker.enqueue(sync_patient.message(1), delay=200)
    later = broker.enqueue(sync_patient.message(2), delay=600_000)
    away = threading.Event()  # Redis is away while it is set
    away.set()
    refused: Counter[str] = Counter()
    enqueue, requeue = broker.enqueue, broker.do_requeue

    def enqueue_unless_away(message: Any, *, delay: int | None = None) -> Any:
        if away.is_set():
            refused["enqueue"] += 1
            raise redis.exceptions.ConnectionError("Connection refused")
        return enqueue(message, delay=delay)

    def requeue_unless_away(*args: Any) -> Any:
        if away.is_set():
            refused["requeue"] += 1
            raise redis.exceptions.ConnectionError("Connection refused")
        return requeue(*args)

    monkeypatch.setattr(broker, "enqueue", enqueue_unless_away)
    monkeypatch.setattr(broker, "do_requeue", requeue_unless_away)
    monkeypatch.setattr(dramatiq.worker, "CONSUMER_RESTART_DELAY_SECS", 0.05)
    consumer = ConsumerThread(
        broker=broker,
        queue_name="live.DQ",
        prefetch=10,
        work_queue=PriorityQueue(),
        worker_timeout=50,
    )
    acks = f"{namespace}:__acks__.{broker.broker_id}.live.DQ"
    try:
        consumer.start()
        wait_for(lambda: refused["enqueue"] and refused["requeue"], "both to fail", 10)
        time.sleep(0.3)  # long enough to start again, and fail again, a few times
        assert consumer.is_alive()
        assert len(ids(client, acks)) == 2  # both still the worker's: nothing done with them

        away.clear()

        wait_for(
            lambda: message_ids(client, namespace, "live") == [due.message_id],
            "the due message on its queue",
            10,
        )
        wait_for(
            lambda: ids(client, acks) == {later.options["redis_message_id"]},
            "only the later message held",
            10,
        )
        assert consumer.is_alive()
    finally:
        consumer.stop()
        consumer.join(timeout=5)
        cleanup(client, broker)

"""Messages a worker's consumer held when its connection broke go back on their queues when the
consumer starts again (`services/workers/orphans.py`); the failover test shows why."""

from __future__ import annotations

import itertools
from typing import Any

import dramatiq
import redis

from services.workers.orphans import OrphanRequeuingRedisBroker
from shared.infra.config import Settings

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

"""The Dramatiq Redis broker and the adapter the receiver enqueues through."""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from shared.config import Settings
from shared.jobs import Job
from shared.store import Keys, redis_client, translate_redis_errors


def build_broker(settings: Settings, client: redis.Redis | None = None) -> RedisBroker:
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client or redis_client(settings),
        namespace=Keys(settings.redis_namespace).dramatiq_namespace(),
    )
    add_middleware(broker)
    return broker


def add_middleware(broker: dramatiq.Broker) -> None:
    """What every broker of ours needs beyond Dramatiq's defaults."""
    broker.add_middleware(CurrentMessage())  # lets log lines name the message and attempt


class DramatiqJobQueue:
    """`JobQueue` on a Dramatiq broker: one message per job, by actor name."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def enqueue(self, jobs: Sequence[Job]) -> None:
        with translate_redis_errors():
            for job in jobs:
                self._broker.enqueue(
                    dramatiq.Message(
                        queue_name=job.queue.value,
                        actor_name=job.actor.value,
                        args=(),
                        kwargs=job.kwargs,
                        options={},
                    )
                )

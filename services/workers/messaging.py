"""The Dramatiq Redis broker and the adapter the receiver enqueues through."""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries

from shared.config import Settings
from shared.dead_letters import DeadLetterStore
from shared.jobs import Job, QueueName, dramatiq_message
from shared.store import Keys, redis_client, translate_redis_errors
from shared.telemetry.push import MetricsPusher

# A worker that sent no command for this long is dead; its unacked messages are requeued at
# the next maintenance run (Dramatiq's default is 60 s).
HEARTBEAT_TIMEOUT_MS = 30_000
# Maintenance runs on about this many commands in a million; idle workers poll every second,
# so a dead worker's messages come back within a minute or so at any traffic.
MAINTENANCE_CHANCE = 20_000
MAINTENANCE_ALWAYS = 1_000_000


def build_broker(
    settings: Settings,
    client: redis.Redis | None = None,
    maintenance_chance: int = MAINTENANCE_CHANCE,
) -> RedisBroker:
    client = client or redis_client(settings)
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=Keys(settings.redis_namespace).dramatiq_namespace(),
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=maintenance_chance,
    )
    add_middleware(broker, settings, client)
    return broker


def add_middleware(broker: dramatiq.Broker, settings: Settings, client: redis.Redis) -> None:
    """What every broker of ours needs beyond Dramatiq's defaults."""
    from services.workers.dead_letter_middleware import RecordDeadLetters
    from services.workers.job_metrics import JobMetrics, PushMetrics

    broker.add_middleware(CurrentMessage())  # lets log lines name the message and attempt
    keys = Keys(settings.redis_namespace)
    broker.add_middleware(RecordDeadLetters(DeadLetterStore(client, keys)))
    # Before Retries in the list, so its "after" hooks (run in reverse) see Retries' verdict.
    broker.add_middleware(JobMetrics(), before=Retries)
    broker.add_middleware(PushMetrics(MetricsPusher(client, keys, settings.metrics_push_seconds)))
    for queue in QueueName:
        broker.declare_queue(queue.value)


class DramatiqJobQueue:
    """`JobQueue` on a Dramatiq broker: one message per job, by actor name."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def enqueue(self, jobs: Sequence[Job]) -> None:
        with translate_redis_errors():
            for job in jobs:
                self._broker.enqueue(dramatiq_message(job))


def requeue_from_dead_workers(settings: Settings, client: redis.Redis | None = None) -> None:
    """Run Dramatiq's maintenance now: messages held by workers whose heartbeat stopped more
    than HEARTBEAT_TIMEOUT_MS ago go back on their queues (the scheduler calls this)."""
    broker = build_broker(settings, client, maintenance_chance=MAINTENANCE_ALWAYS)
    for queue in QueueName:
        with translate_redis_errors():
            broker.do_qsize(queue.value)

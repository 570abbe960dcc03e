"""The Dramatiq Redis broker and the adapters the receiver queues work through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import dramatiq
import redis
import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries

from shared.connections import PausedConnections
from shared.halaxy import ChangedResource, HalaxyEvent
from shared.infra import (
    IntakeResult,
    Job,
    Keys,
    PipelinedScript,
    QueueName,
    Settings,
    epoch_seconds,
    redis_client,
    translate_redis_errors,
)
from shared.ops import DeadLetterStore, Heartbeats, Kind, QueuedMessages
from shared.patients import SEEN_TTL, ConnectionChanged, event_digest, job_for_event
from shared.telemetry import MetricsPusher

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
        # A worker that sent no command for this long is dead; its unacked messages are
        # requeued at the next maintenance run (Dramatiq's default is 60 s, ours 30 s).
        heartbeat_timeout=int(settings.worker_heartbeat_timeout_seconds * 1000),
        maintenance_chance=maintenance_chance,
    )
    add_middleware(broker, settings, client)
    return broker


def add_middleware(broker: dramatiq.Broker, settings: Settings, client: redis.Redis) -> None:
    """What every broker of ours needs beyond Dramatiq's defaults."""
    from services.workers.dead_letter_middleware import RecordDeadLetters
    from services.workers.heartbeat import WorkerHeartbeat
    from services.workers.holding import HoldPausedConnections
    from services.workers.job_metrics import JobMetrics, PushMetrics
    from services.workers.queued import TrackQueued

    broker.add_middleware(CurrentMessage())  # lets log lines name the message and attempt
    keys = Keys(settings.redis_namespace)
    broker.add_middleware(RecordDeadLetters(DeadLetterStore(client, keys)))
    # Before Retries in the list, so its "after" hooks (run in reverse) see Retries' verdict.
    broker.add_middleware(JobMetrics(), before=Retries)
    broker.add_middleware(PushMetrics(MetricsPusher(client, keys, settings.metrics_push_seconds)))
    # Each connection's unfinished messages per queue, for status and /metrics.
    broker.add_middleware(TrackQueued(QueuedMessages(client, keys)))
    # Only a worker (the `dramatiq` command) boots; the brokers that only enqueue never beat.
    heartbeats = Heartbeats(client, keys, Kind.WORKER)
    broker.add_middleware(WorkerHeartbeat(heartbeats, settings.worker_heartbeat_timeout_seconds))
    # A paused connection's messages are held, not run (services/workers/holding.py).
    broker.add_middleware(HoldPausedConnections(PausedConnections(client, keys)))
    for queue in QueueName:
        broker.declare_queue(queue.value)


# KEYS: the connection record, the queue's id list, the queue's message hash, the connection's
# set of queued messages (`shared.ops.queued`), then one seen key per event. ARGV: the record
# the caller authenticated against, the seen TTL in seconds, now (epoch seconds), then a
# (message id, encoded message) pair per event. The HSET and RPUSH are what Dramatiq's own
# enqueue does (dramatiq/brokers/redis/dispatch.lua, "enqueue"); tests/patients/test_intake.py
# checks that against RedisBroker.enqueue. The first write is the SET, so a Redis refusing
# writes (out of memory) fails the script before it has changed anything.
INTAKE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local accepted = {}
for i = 5, #KEYS do
  local arg = 4 + (i - 5) * 2
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('HSET', KEYS[3], ARGV[arg], ARGV[arg + 1])
    redis.call('RPUSH', KEYS[2], ARGV[arg])
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[arg])
    accepted[#accepted + 1] = i - 4
  end
end
return accepted
"""


class DramatiqEventIntake:
    """`EventIntake` on Redis, queueing straight onto Dramatiq's live queue."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = PipelinedScript(client, INTAKE_SCRIPT)

    async def accept(
        self,
        record: bytes,
        connection_id: str,
        event: HalaxyEvent,
        changed: Sequence[ChangedResource],
    ) -> IntakeResult:
        queue = QueueName.LIVE.value
        keys = [
            self._keys.connection(connection_id),
            self._keys.dramatiq_queue(queue),
            self._keys.dramatiq_messages(queue),
            self._keys.queued_messages(connection_id, queue),
        ]
        args: list[bytes | str | int | float] = [
            record,
            int(SEEN_TTL.total_seconds()),
            epoch_seconds(),
        ]
        for item in changed:
            keys.append(self._keys.seen_event(connection_id, event_digest(item.event_key)))
            job = job_for_event(connection_id, event, item)
            redis_id = str(uuid4())  # as RedisBroker.enqueue: unique per enqueue, not per job
            args += [redis_id, dramatiq_message(job, redis_message_id=redis_id).encode()]
        with translate_redis_errors():
            reply = await self._script(keys=keys, args=args)
        if reply == -1:
            raise ConnectionChanged(f"connection {connection_id} changed")
        fresh = {int(position) - 1 for position in reply}
        return IntakeResult(
            accepted=[item.event_key for n, item in enumerate(changed) if n in fresh],
            duplicates=[item.event_key for n, item in enumerate(changed) if n not in fresh],
        )


def dramatiq_message(job: Job, **options: Any) -> dramatiq.Message[Any]:
    """The Dramatiq message that runs `job`."""
    return dramatiq.Message(
        queue_name=job.queue.value,
        actor_name=job.actor_name,
        args=(),
        kwargs=job.kwargs,
        options=options,
    )


class DramatiqJobQueue:
    """`JobQueue` on a Dramatiq broker: one message per job, by actor name."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def enqueue(self, jobs: Sequence[Job]) -> None:
        with translate_redis_errors():
            for job in jobs:
                self._broker.enqueue(dramatiq_message(job))


class WorkerMaintenance:
    """Dramatiq's maintenance on demand: messages held by workers whose heartbeat stopped
    more than BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS ago go back on their queues (the
    scheduler calls it).

    Keep one for as long as it is called: its broker sends a heartbeat with every call, and a
    broker left behind becomes a dead worker whose clean-up runs KEYS over the whole keyspace
    (dramatiq/brokers/redis/dispatch.lua), which blocks Redis on a large one."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._broker = build_broker(settings, client, maintenance_chance=MAINTENANCE_ALWAYS)

    def requeue_from_dead_workers(self) -> None:
        for queue in QueueName:
            with translate_redis_errors():
                self._broker.do_qsize(queue.value)

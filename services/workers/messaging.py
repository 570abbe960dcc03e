"""The Dramatiq Redis broker and the adapters the receiver queues work through."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import uuid4

import dramatiq
import orjson
import redis
import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries

from services.workers.orphans import OrphanRequeuingRedisBroker
from shared.connections import PausedConnections
from shared.halaxy import ChangedResource, HalaxyEvent
from shared.infra import (
    IntakeResult,
    Job,
    Keys,
    PipelinedScript,
    QueueName,
    Settings,
    actor_for,
    epoch_seconds,
    redis_client,
    translate_redis_errors,
    utcnow,
)
from shared.ops import DeadLetterStore, Heartbeats, Kind, QueuedMessages, ThreadLeases
from shared.patients import SEEN_TTL, ConnectionChanged, event_digest, job_for_event
from shared.telemetry import (
    LOG_FUNCTIONS,
    STORM_EVENTS,
    EventLog,
    EventLogLayout,
    EventRecord,
    EventSource,
    LoggedEvent,
    MetricsPusher,
    not_recorded,
)

# Maintenance runs on about this many commands in a million; idle workers poll every second,
# so a dead worker's messages come back within a minute or so at any traffic.
MAINTENANCE_CHANCE = 20_000
MAINTENANCE_ALWAYS = 1_000_000
# A normal clinic's webhooks never come near it (docs/isolation.md).
STORM_EVENTS_PER_MINUTE = int(Settings.model_fields["storm_events_per_minute"].default)


def build_broker(
    settings: Settings,
    client: redis.Redis | None = None,
    maintenance_chance: int = MAINTENANCE_CHANCE,
) -> RedisBroker:
    client = client or redis_client(settings)
    broker = OrphanRequeuingRedisBroker(
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
    from services.workers.breaker import DeferOpenCircuits, circuit_breakers
    from services.workers.dead_letter_middleware import RecordDeadLetters
    from services.workers.event_attempts import RecordEventAttempts
    from services.workers.fair_share import FairShare
    from services.workers.heartbeat import WorkerHeartbeat
    from services.workers.holding import HoldPausedConnections
    from services.workers.job_metrics import JobMetrics, PushMetrics
    from services.workers.queued import TrackQueued
    from services.workers.retries import replace_retries

    # A job's retry survives Redis failing over (services/workers/retries.py).
    replace_retries(broker)
    broker.add_middleware(CurrentMessage())  # lets log lines name the message and attempt
    keys = Keys(settings.redis_namespace)
    broker.add_middleware(RecordDeadLetters(DeadLetterStore(client, keys)))
    # Before Retries in the list, so its "after" hooks (run in reverse) see Retries' verdict.
    broker.add_middleware(JobMetrics(), before=Retries)
    events = EventLog(client, keys, settings.event_log_max_per_connection)
    broker.add_middleware(RecordEventAttempts(events), before=Retries)
    broker.add_middleware(PushMetrics(MetricsPusher(client, keys, settings.metrics_push_seconds)))
    # Each connection's unfinished messages per queue, for status and /metrics.
    broker.add_middleware(TrackQueued(QueuedMessages(client, keys)))
    # Only a worker (the `dramatiq` command) boots; the brokers that only enqueue never beat.
    heartbeats = Heartbeats(client, keys, Kind.WORKER)
    broker.add_middleware(WorkerHeartbeat(heartbeats, settings.worker_heartbeat_timeout_seconds))
    # A paused connection's messages are held, not run (services/workers/holding.py).
    broker.add_middleware(HoldPausedConnections(PausedConnections(client, keys)))
    # After the pause (a paused connection's messages are held, not deferred): a connection
    # whose upstream's circuit is open has its messages deferred (services/workers/breaker.py).
    broker.add_middleware(DeferOpenCircuits(circuit_breakers(settings, client)))
    # No connection holds more than its share of the threads while another's live work waits
    # (services/workers/fair_share.py); after the pause, so a held message takes no lease.
    share = settings.connection_thread_share
    broker.add_middleware(FairShare(ThreadLeases(client, keys), heartbeats, share))
    for queue in QueueName:
        broker.declare_queue(queue.value)


# KEYS: the connection record, the live queue's id list, the live queue's message hash, the
# connection's set of queued live messages (`shared.ops.queued`), the connection's event log
# index and the set of connections with a log, the connection's live event count this minute,
# the storm queue's id list, message hash and the connection's queued set of it, fair share's
# index of connections that queued live work (`Keys.live_connections`), then one seen key per
# event, then one event log record key per event. ARGV: the record the caller
# authenticated against, the seen TTL in seconds, now (epoch seconds), how many events, the
# event log's TTL, the connection id, `trim_log`'s record prefix, attempts prefix, bound and
# oldest member, the storm limit (events a minute), then six per event: message id, encoded
# live message, the event log's record, status and index member ('' each when not logged), and
# the storm-lane message's head (`message_head`). Fresh events past the connection's storm limit
# this minute go to the storm queue (docs/isolation.md), decided here: no round trip of its own.
# A storm-lane message is the live one with the storm head in place of the live head: the same
# message, ids and all, for the actor's storm twin (`encoded_message` lays them out so).
# It answers -1 (the connection changed: nothing done), or the positions (from 1) of the events
# it queued, of those whose log record it could not write, and of those it put on the storm
# lane.
# The HSET and RPUSH are what Dramatiq's own enqueue does (dramatiq/brokers/redis/dispatch.lua,
# "enqueue"); tests/patients/test_intake.py checks that against RedisBroker.enqueue. The first
# write is the SET, so a Redis refusing writes (out of memory) fails the script before it has
# changed anything. The event log's writes come last and are `pcall`ed (`LOG_FUNCTIONS`): a log
# write that fails never fails the queueing, and costs no round trip of its own.
INTAKE_SCRIPT = (
    LOG_FUNCTIONS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local n = tonumber(ARGV[4])
local storm_limit = tonumber(ARGV[11])
local this_minute = tonumber(redis.call('GET', KEYS[7]) or '0')
local accepted = {}
local not_logged = {}
local stormed = {}
for i = 1, n do
  local arg = 11 + (i - 1) * 6
  local seen = KEYS[11 + i]
  if redis.call('SET', seen, '1', 'NX', 'EX', ARGV[2]) then
    local ids, messages, queued, message = KEYS[2], KEYS[3], KEYS[4], ARGV[arg + 2]
    this_minute = this_minute + 1
    if this_minute > storm_limit then
      ids, messages, queued = KEYS[8], KEYS[9], KEYS[10]
      local rest = string.find(message, '"args":', 1, true)
      message = ARGV[arg + 6] .. string.sub(message, rest)
      stormed[#stormed + 1] = i
    end
    redis.call('HSET', messages, ARGV[arg + 1], message)
    redis.call('RPUSH', ids, ARGV[arg + 1])
    redis.call('ZADD', queued, ARGV[3], ARGV[arg + 1])
    if this_minute <= storm_limit then
      redis.call('ZADD', KEYS[11], 'GT', ARGV[3], ARGV[6])
    end
    accepted[#accepted + 1] = i
    if ARGV[arg + 3] ~= '' and log_event(KEYS[5], KEYS[6], ARGV[6], KEYS[11 + n + i], ARGV[5],
                                         ARGV[arg + 3], ARGV[arg + 4], ARGV[arg + 5]) == 1 then
      not_logged[#not_logged + 1] = i
    end
  else
    -- Seen before: refreshed, so that even an answer of duplicates rests on a write of this
    -- connection, which the receiver's WAIT (BRIDGE_REPLICA_ACK_MS) then covers, and with it
    -- the first sighting's writes, made earlier on whichever connection.
    redis.call('EXPIRE', seen, ARGV[2])
  end
end
if #accepted > 0 then
  redis.call('SET', KEYS[7], this_minute, 'EX', 120)
  trim_log(KEYS[5], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
end
return {accepted, not_logged, stormed}
"""
)


class DramatiqEventIntake:
    """`EventIntake` on Redis, queueing straight onto Dramatiq's live queue (the storm queue
    past the connection's storm limit for the minute), and logging each event it queues in the
    event log (`shared.telemetry.event_log`) in the same script."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        events: EventLogLayout | None = None,
        storm_events_per_minute: int = STORM_EVENTS_PER_MINUTE,
        replica_ack_ms: int = 0,
    ) -> None:
        self._keys = keys
        self._events = events or EventLogLayout(keys)
        # With replica acks, the script and `WAIT` go in one pipeline (`PipelinedScript`).
        self._script = PipelinedScript(client, INTAKE_SCRIPT, replica_ack_ms)
        self.storm_events_per_minute = storm_events_per_minute

    async def accept(
        self,
        record: bytes,
        connection_id: str,
        event: HalaxyEvent,
        changed: Sequence[ChangedResource],
    ) -> IntakeResult:
        queue, storm = QueueName.LIVE.value, QueueName.STORM.value
        now = utcnow()
        trim = self._events.trim(connection_id, now)
        keys = [
            self._keys.connection(connection_id),
            self._keys.dramatiq_queue(queue),
            self._keys.dramatiq_messages(queue),
            self._keys.queued_messages(connection_id, queue),
            trim.index,
            self._keys.event_log_connections(),
            self._keys.storm_count(connection_id, int(epoch_seconds() // 60)),
            self._keys.dramatiq_queue(storm),
            self._keys.dramatiq_messages(storm),
            self._keys.queued_messages(connection_id, storm),
            self._keys.live_connections(),
        ]
        args: list[bytes | str | int | float] = [
            record,
            int(SEEN_TTL.total_seconds()),
            epoch_seconds(),
            len(changed),
            self._events.ttl_seconds,
            connection_id,
            trim.record_prefix,
            trim.attempts_prefix,
            trim.max_entries,
            trim.oldest,
            self.storm_events_per_minute,
        ]
        record_keys = []
        for item in changed:
            keys.append(self._keys.seen_event(connection_id, event_digest(item.event_key)))
            job = job_for_event(connection_id, event, item)
            redis_id = str(uuid4())  # as RedisBroker.enqueue: unique per enqueue, not per job
            logged = self._logged(connection_id, event, item, now)
            record_keys.append(logged.record_key if logged else self._keys.event_log_index(""))
            args += [redis_id, encoded_message(job, redis_id)]
            args += [logged.record, logged.status, logged.member] if logged else ["", "", ""]
            args.append(message_head(QueueName.STORM, actor_for(job.actor, QueueName.STORM)))
        keys += record_keys
        with translate_redis_errors():
            reply = await self._script(keys=keys, args=args)
        if reply == -1:
            raise ConnectionChanged(f"connection {connection_id} changed")
        queued, not_logged, stormed = reply
        if stormed:
            STORM_EVENTS.labels(connection_id).inc(len(stormed))
        for position in not_logged:  # queued all the same: only its log record is missing
            not_recorded("RedisRefused", connection_id, changed[int(position) - 1].event_key)
        fresh = {int(position) - 1 for position in queued}
        return IntakeResult(
            accepted=[item.event_key for n, item in enumerate(changed) if n in fresh],
            duplicates=[item.event_key for n, item in enumerate(changed) if n not in fresh],
        )

    def _logged(
        self, connection_id: str, event: HalaxyEvent, item: ChangedResource, now: datetime
    ) -> LoggedEvent | None:
        """The event's log entry; None (logged) if it cannot be made: the event is queued
        all the same."""
        try:
            return self._events.logged(
                EventRecord(
                    event_id=item.event_key,
                    connection_id=connection_id,
                    source=EventSource.HALAXY_WEBHOOK,
                    event_type=event.name,
                    resource_id=item.resource_id,
                    received_at=now,
                )
            )
        except Exception as exc:
            not_recorded(type(exc).__name__, connection_id, item.event_key)
            return None


def dramatiq_message(job: Job, **options: Any) -> dramatiq.Message[Any]:
    """The Dramatiq message that runs `job`."""
    return dramatiq.Message(
        queue_name=job.queue.value,
        actor_name=job.actor_name,
        args=(),
        kwargs=job.kwargs,
        options=options,
    )


def encoded_message(job: Job, redis_message_id: str) -> bytes:
    """The job's Dramatiq message, encoded: it decodes as `dramatiq_message(job,
    redis_message_id=...)` does, and takes about a quarter of the time to make (the receiver
    makes one per webhook event). Laid out as `message_head`, then the rest from `"args":`
    on, which the intake script keeps for the storm lane's twin."""
    rest = orjson.dumps(
        {
            "args": [],
            "kwargs": job.kwargs,
            "options": {"redis_message_id": redis_message_id},
            "message_id": str(uuid4()),
            "message_timestamp": int(epoch_seconds() * 1000),
        }
    )
    return message_head(job.queue, job.actor_name) + rest[1:]


@functools.cache
def message_head(queue: QueueName, actor_name: str) -> bytes:
    """The start of an encoded message for `actor_name` on `queue`, up to `"args":`."""
    return b'{"queue_name":%s,"actor_name":%s,' % (
        orjson.dumps(queue.value),
        orjson.dumps(actor_name),
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

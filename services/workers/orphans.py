"""Dramatiq's Redis broker, with the messages a worker loses track of on a lost connection put
back on their queues.

A worker's consumer takes messages from Redis into an acknowledgement set of its own
(`__acks__.<worker id>.<queue>`) and holds them in memory: the delayed ones (a retry's or a
deferral's wait) until they are due, the rest until a worker thread takes them. When the
connection to Redis breaks (Redis restarting, a Sentinel failover), Dramatiq's consumer thread
drops what it held in memory of a delay queue ("Consumer encountered a connection error",
`worker.py`: `self.delay_queue = PriorityQueue()`), and a new consumer starts with an empty
cache, while those messages stay in the worker's acknowledgement set. Redis gives a worker's
unacknowledged messages back only once that worker stops beating, which a live worker never
does: they would wait there until it restarts. The failover test lost nine acknowledged
webhooks this way, all deferred messages that were waiting in a delay queue's memory.

So when a queue's consumer is started again in the same worker, the messages its predecessor
could no longer hand on go back first: of a delay queue, every message of the worker's
acknowledgement set for it (its memory was emptied); of a queue, those the old consumer had
fetched but not yet handed to a worker thread (its cache). The ones handed on are in the
worker's hands and are acknowledged as usual.

Dramatiq's consumer also must survive the failover to be started again. A delay queue's consumer
moving a due message enqueues it with Redis's own error (not Dramatiq's `ConnectionClosed`), so
Dramatiq takes it for an unexpected error and closes the consumer, which first requeues what it
held in memory; that requeue fails too, with Redis's error again, which nothing catches: the
consumer thread ended, and with it the worker's handling of that delay queue, while the worker
lived on. The failover test, at the deployed fair share, lost two to five deferred webhooks a
run this way. So the consumer's requeue raises `ConnectionClosed` for any Redis error, which
Dramatiq's close passes over: the consumer starts again, and puts back what it held, as above.
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

log = structlog.get_logger("halaxy_bridge.workers")

# Message ids per requeue call: a delay queue's consumer may hold thousands (Dramatiq prefetches
# a thousand per worker thread of it), and a Lua call takes only so many arguments.
REQUEUE_BATCH = 500


class OrphanRequeuingRedisBroker(RedisBroker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._consumers: dict[str, Any] = {}

    @property
    def consumer_class(self) -> type[Consumer]:
        return _SurvivingConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        previous = self._consumers.get(queue_name)
        if previous is not None:
            try:
                requeued = self._requeue_orphans(queue_name, previous)
            except redis.exceptions.RedisError as exc:
                # Still away: the consumer thread tries again after its restart delay, with
                # the same predecessor.
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            if requeued:
                log.warning("worker.orphans_requeued", queue=queue_name, messages=requeued)
        consumer = super().consume(queue_name, prefetch, timeout)
        self._consumers[queue_name] = consumer
        return consumer

    def _requeue_orphans(self, queue_name: str, previous: Any) -> int:
        if queue_name.endswith(".DQ"):
            acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
            ids = [_text(member) for member in self.client.smembers(acks)]
        else:
            ids = [
                Message.decode(data).options["redis_message_id"]
                for data in previous.message_cache
                if data is not None
            ]
        for start in range(0, len(ids), REQUEUE_BATCH):
            self.do_requeue(queue_name, *ids[start : start + REQUEUE_BATCH])
        previous.message_cache = []
        return len(ids)


class _SurvivingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, whose requeue fails as a lost connection does, so that
    Dramatiq's consumer thread survives it."""

    def requeue(self, messages: Any) -> None:
        try:
            super().requeue(messages)  # type: ignore[no-untyped-call]
        except redis.exceptions.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

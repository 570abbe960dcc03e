"""Each connection's unfinished messages, per queue, kept beside Dramatiq's queues so that
status can say how many wait and for how long per clinic without reading every message.

One sorted set per connection and queue (`Keys.queued_messages`): the Redis message id of each
message of that connection not yet finished, scored by when it is due (enqueued, or the `eta`
of a delayed one). A message is in it from its enqueue to its ack or nack:

- Added in the same step as the enqueue where the bridge writes the queue itself (the
  receiver's intake script), else just before Dramatiq's enqueue (a middleware's
  `before_enqueue`: jobs queued by the receiver, the scheduler and replays, Dramatiq's retries,
  and a delayed message moved to its queue when due). Each enqueue has its own Redis message
  id, so a retry or a move is a new member and the old one goes at its ack. A live message's
  add also writes its connection into fair share's index (`Keys.live_connections`): fair share
  reads the live sets of the connections in it.
- Removed just after the ack or nack of that Redis message id (`after_ack`, `after_nack`). A
  redelivery (a worker killed mid-job, Dramatiq's maintenance) keeps its Redis id: still one
  member, removed once it is finally acked.

A member whose message is no longer in its queue's or its delay queue's message hash is stale
(a removal lost to a Redis blip, a queue flushed by hand, an enqueue that failed after the
add): the scheduler drops such members each tick (`prune`), looking only at members due longer
than `PRUNE_GRACE` ago, so a member added just before its message is never taken for one.

So `queued` counts a message ready in the queue, taken by a worker (running or prefetched), or
delayed (a retry's backoff, a deferral): the sum over connections is the queue's
depth + taken + delayed. Messages queued before this bookkeeping existed are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from shared.infra.jobs import QueueName
from shared.infra.store import Keys, translate_redis_errors

PRUNE_GRACE = 60.0  # seconds
PRUNE_BATCH = 50  # the oldest members a prune looks at per connection and queue

# KEYS: the tracking set, the queue's message hash, its delay queue's message hash.
# ARGV: how many of the oldest to look at, the latest due time of those to look at.
PRUNE_SCRIPT = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[1])
local gone = 0
for _, id in ipairs(members) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 and redis.call('HEXISTS', KEYS[3], id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    gone = gone + 1
  end
end
return gone
"""


@dataclass(frozen=True)
class Queued:
    """One connection's unfinished messages in one queue."""

    queued: int  # ready, taken by a worker, or delayed
    delayed: int  # not due yet
    oldest_due_at: float | None  # of those due, the earliest; None when none is due

    def shown(self, now: float) -> dict[str, Any]:
        age = None if self.oldest_due_at is None else round(max(0.0, now - self.oldest_due_at), 1)
        return {"queued": self.queued, "delayed": self.delayed, "oldest_age_seconds": age}


def canonical(queue_name: str) -> str:
    """`live.DQ` (the delay queue) counts as `live`."""
    return queue_name.removesuffix(".DQ")


class QueuedMessages:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._prune = client.register_script(PRUNE_SCRIPT)

    def add(self, connection_id: str, queue_name: str, message_id: str, due_at: float) -> None:
        """A live message also puts its connection in fair share's index of connections that
        queued live work (`shared.ops.fair_share`), in the same round trip."""
        queue = canonical(queue_name)
        key = self._keys.queued_messages(connection_id, queue)
        with translate_redis_errors():
            if queue != QueueName.LIVE.value:
                self._redis.zadd(key, {message_id: due_at})
                return
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(key, {message_id: due_at})
            pipe.zadd(self._keys.live_connections(), {connection_id: due_at}, gt=True)
            pipe.execute()

    def remove(self, connection_id: str, queue_name: str, message_id: str) -> None:
        key = self._keys.queued_messages(connection_id, canonical(queue_name))
        with translate_redis_errors():
            self._redis.zrem(key, message_id)

    def forget(self, connection_id: str) -> int:
        """Drop the connection's sets (its offboarding); how many there were."""
        with translate_redis_errors():
            return int(
                self._redis.delete(
                    *(self._keys.queued_messages(connection_id, q.value) for q in QueueName)
                )
            )

    def read(self, connection_ids: Iterable[str], now: float) -> dict[str, dict[str, Queued]]:
        """connection id -> queue name -> its count, in one round trip."""
        pairs = [(c, q.value) for c in connection_ids for q in QueueName]
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for connection_id, queue in pairs:
                key = self._keys.queued_messages(connection_id, queue)
                pipe.zcard(key)
                pipe.zcount(key, f"({now}", "+inf")
                pipe.zrangebyscore(key, "-inf", now, start=0, num=1, withscores=True)
            replies = pipe.execute()
        found: dict[str, dict[str, Queued]] = {}
        for n, (connection_id, queue) in enumerate(pairs):
            total, delayed, oldest = replies[3 * n : 3 * n + 3]
            found.setdefault(connection_id, {})[queue] = Queued(
                int(total), int(delayed), float(oldest[0][1]) if oldest else None
            )
        return found

    def prune(self, connection_ids: Iterable[str], now: float) -> int:
        """Drop the stale members among the oldest of each connection's sets; how many."""
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for connection_id in connection_ids:
                for queue in QueueName:
                    keys = [
                        self._keys.queued_messages(connection_id, queue.value),
                        self._keys.dramatiq_messages(queue.value),
                        self._keys.dramatiq_messages(f"{queue.value}.DQ"),
                    ]
                    self._prune(keys=keys, args=[PRUNE_BATCH, now - PRUNE_GRACE], client=pipe)
            return sum(int(gone) for gone in pipe.execute())

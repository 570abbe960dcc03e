"""Taking in a Halaxy delivery: drop events already seen, queue the rest, remember them.

One Lua script does it all in one round trip, atomically: it checks that the connection the
caller authenticated against is still the stored one, and for each event sets the seen mark
and queues the job together. Nothing can be queued without its mark or marked without being
queued, and a rotation or a disable that lands while a request is in flight is never missed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from uuid import uuid4

import redis.asyncio

from shared.errors import BridgeError
from shared.halaxy.events import HalaxyEvent
from shared.halaxy.notifications import ChangedResource
from shared.jobs import QueueName, dramatiq_message, job_for_event
from shared.store import Keys, translate_redis_errors

# Halaxy documents no retry policy; a week covers any plausible redelivery (DESIGN: >= 7 days).
SEEN_TTL = timedelta(days=8)

# KEYS: the connection record, the queue's id list, the queue's message hash, then one seen
# key per event. ARGV: the record the caller authenticated against, the seen TTL in seconds,
# then a (message id, encoded message) pair per event. The HSET and RPUSH are what Dramatiq's
# own enqueue does (dramatiq/brokers/redis/dispatch.lua, "enqueue"); tests/test_intake.py
# checks a real Dramatiq worker takes these messages. The first write is the SET, so a Redis
# refusing writes (out of memory) fails the script before it has changed anything.
INTAKE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local accepted = {}
for i = 4, #KEYS do
  local arg = 3 + (i - 4) * 2
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('HSET', KEYS[3], ARGV[arg], ARGV[arg + 1])
    redis.call('RPUSH', KEYS[2], ARGV[arg])
    accepted[#accepted + 1] = i - 3
  end
end
return accepted
"""


class ConnectionChanged(BridgeError):
    """The stored connection is no longer the record the caller authenticated against."""


@dataclass(frozen=True)
class IntakeResult:
    accepted: list[str]
    duplicates: list[str]


class EventIntake(Protocol):
    async def accept(
        self,
        record: bytes,
        connection_id: str,
        event: HalaxyEvent,
        changed: Sequence[ChangedResource],
    ) -> IntakeResult:
        """Queue the events not seen before, if `record` is still the stored connection.

        Raises `ConnectionChanged` if it is not (nothing is queued), `StoreUnavailable` if
        Redis cannot be reached or refuses (nothing is queued).
        """
        ...


class RedisEventIntake:
    """`EventIntake` on Redis, queueing straight onto Dramatiq's live queue."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = client.register_script(INTAKE_SCRIPT)

    async def accept(
        self,
        record: bytes,
        connection_id: str,
        event: HalaxyEvent,
        changed: Sequence[ChangedResource],
    ) -> IntakeResult:
        if not changed:
            return IntakeResult(accepted=[], duplicates=[])
        queue = QueueName.LIVE.value
        keys = [
            self._keys.connection(connection_id),
            self._keys.dramatiq_queue(queue),
            self._keys.dramatiq_messages(queue),
        ]
        args: list[bytes | str | int] = [record, int(SEEN_TTL.total_seconds())]
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


def event_digest(event_key: str) -> str:
    return hashlib.sha256(event_key.encode()).hexdigest()[:40]

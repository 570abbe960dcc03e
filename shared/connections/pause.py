"""Pausing a connection: its webhooks are still taken and kept, nothing of it is processed.

A paused connection's webhooks are answered as usual and queued as usual (the receiver does
not look at the pause: what it accepted is durable either way). What changes is the worker:
before a message of the connection runs, one Lua step checks the pause and, if it is set,
appends the message to the connection's held list (`Keys.held_messages`) and the worker skips
it (`services/workers/holding.py`). Program notes are messages like any other; the scheduler's
own work for a paused connection (reconcile sweep, Physitrack events poll, routing of kept
posts) waits too (`services/scheduler/loop.py`).

Resuming clears the pause and releases the held messages, oldest first, in batches: each batch
is put back on its Dramatiq queue and removed from the held list by one Lua step, so a crash
between batches loses nothing and repeats nothing; the scheduler releases what is left of any
connection that is no longer paused, every tick. While a connection still has held messages,
its new messages are held behind them (not run ahead of them); the ones a resume releases
carry `RELEASED` and run.

Dramatiq's Redis layout (a queue is a list of ids and a hash of encoded messages) is written
here as the receiver's intake writes it (`services/workers/messaging.py`, INTAKE_SCRIPT).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson
import redis
import structlog

from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.store import Keys, as_bytes, translate_redis_errors

log = structlog.get_logger("halaxy_bridge.connections")

# The option a resume sets on each message it releases: it runs although older held messages
# of its connection may still wait (they are released in order behind it).
RELEASED = "bridge_released"
RELEASE_BATCH = 200  # messages put back on the queues by one Lua step
# Rounds one `release` call makes at most when another process releases the same list at the
# same moment (each round, one of them moves a batch).
RELEASE_ROUNDS = 10_000


@dataclass(frozen=True)
class PauseRecord:
    """Why a connection processes nothing: since when, and who paused it."""

    paused_at: datetime
    by: str


@dataclass(frozen=True)
class HeldMessage:
    """A message of a paused connection, set aside by a worker instead of being run."""

    held_at: datetime
    queue: str  # the Dramatiq queue it goes back to
    message: str  # Dramatiq's encoded message, as the worker took it


PAUSE_RECORD = RecordCodec(PauseRecord)
HELD_MESSAGE = RecordCodec(HeldMessage)


@dataclass(frozen=True)
class Holding:
    """What `status` shows of a connection's pause."""

    paused: PauseRecord | None
    held: int
    oldest_held_at: datetime | None

    @property
    def is_paused(self) -> bool:
        return self.paused is not None


# KEYS: the paused connections, the connection's held list. ARGV: the connection id, "1" for a
# message a resume released, the held record. Held while paused; and while older messages of
# the connection are still held (a resume releasing them), unless released itself.
HOLD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
   or (ARGV[2] ~= '1' and redis.call('LLEN', KEYS[2]) > 0) then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: the paused connections, the held list, then a (queue id list, queue message hash,
# the connection's queued set of that queue) triple per message released. ARGV: the connection
# id, n (how many held records were read from the head), m (how many are released: an
# unreadable record is dropped, logged), now (epoch seconds), the n records as read, then m
# (message id, encoded message) pairs. Nothing moves if the connection was paused again or the
# head of the list is no longer what was read (another process released it). The HSET and
# RPUSH are what Dramatiq's own enqueue does (dispatch.lua, "enqueue"); the ZADD counts the
# message among the connection's queued ones, as every other enqueue does (`ops.queued`).
RELEASE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
local n, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local head = redis.call('LRANGE', KEYS[2], 0, n - 1)
if #head ~= n then return -2 end
for i = 1, n do
  if head[i] ~= ARGV[4 + i] then return -2 end
end
for i = 1, m do
  local id, message = ARGV[3 + n + 2 * i], ARGV[4 + n + 2 * i]
  redis.call('HSET', KEYS[3 * i + 1], id, message)
  redis.call('RPUSH', KEYS[3 * i], id)
  redis.call('ZADD', KEYS[3 * i + 2], ARGV[4], id)
end
redis.call('LTRIM', KEYS[2], n, -1)
return m
"""


class PausedConnections:
    """The pause of each connection and the messages held while it lasts."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._hold = client.register_script(HOLD)
        self._release = client.register_script(RELEASE)

    def pause(self, connection_id: str, by: str, now: datetime) -> bool:
        """Pause; False if it was paused already (the first pause's record stays)."""
        record = PAUSE_RECORD.encode(PauseRecord(paused_at=now, by=by))
        with translate_redis_errors():
            return bool(self._redis.hsetnx(self._keys.paused_connections(), connection_id, record))

    def resume(self, connection_id: str) -> bool:
        """Lift the pause (its held messages are not released by this: see `release`); False
        if it was not paused."""
        with translate_redis_errors():
            return bool(self._redis.hdel(self._keys.paused_connections(), connection_id))

    def is_paused(self, connection_id: str) -> bool:
        with translate_redis_errors():
            return bool(self._redis.hexists(self._keys.paused_connections(), connection_id))

    def paused_ids(self) -> set[str]:
        with translate_redis_errors():
            found = self._redis.hkeys(self._keys.paused_connections())
        return {as_bytes(i).decode() for i in found}

    def holding(self, connection_ids: Iterable[str]) -> dict[str, Holding]:
        """Each connection's pause and held messages, in one round trip."""
        ids = list(connection_ids)
        if not ids:
            return {}
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for connection_id in ids:
                pipe.hget(self._keys.paused_connections(), connection_id)
                pipe.llen(self._keys.held_messages(connection_id))
                pipe.lindex(self._keys.held_messages(connection_id), 0)
            replies = pipe.execute()
        found = {}
        for n, connection_id in enumerate(ids):
            paused, held, oldest = replies[3 * n : 3 * n + 3]
            found[connection_id] = Holding(
                paused=None if paused is None else _pause_record(connection_id, paused),
                held=int(held),
                oldest_held_at=None if oldest is None else _held_at(oldest),
            )
        return found

    def hold(self, connection_id: str, queue: str, message: bytes, released: bool) -> bool:
        """Set the message aside if its connection is paused (or older ones of it still wait);
        True if it was, and must not run."""
        record = HeldMessage(held_at=utcnow(), queue=queue, message=message.decode())
        with translate_redis_errors():
            held = self._hold(
                keys=[self._keys.paused_connections(), self._keys.held_messages(connection_id)],
                args=[connection_id, "1" if released else "0", HELD_MESSAGE.encode(record)],
            )
        return bool(held)

    def release(
        self, connection_id: str, batch: int = RELEASE_BATCH, max_batches: int | None = None
    ) -> int:
        """Put the held messages back on their queues, oldest first, a batch per Lua step,
        until none is left, the connection is paused again, or `max_batches` were moved; how
        many were put back."""
        released, batches = 0, 0
        key = self._keys.held_messages(connection_id)
        for _ in range(RELEASE_ROUNDS):
            if max_batches is not None and batches >= max_batches:
                break
            with translate_redis_errors():
                head = [as_bytes(r) for r in self._redis.lrange(key, 0, batch - 1)]
            if not head:
                break
            moved = self._release_batch(connection_id, head)
            if moved == -1:  # paused again: what is left waits for the next resume
                break
            if moved >= 0:
                released += moved
                batches += 1
        return released

    def forget(self, connection_id: str) -> int:
        """Erase the connection's pause and held messages (offboarding); how many were held."""
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.llen(self._keys.held_messages(connection_id))
            pipe.delete(self._keys.held_messages(connection_id))
            pipe.hdel(self._keys.paused_connections(), connection_id)
            held, _, _ = pipe.execute()
        return int(held)

    def _release_batch(self, connection_id: str, head: list[bytes]) -> int:
        keys = [self._keys.paused_connections(), self._keys.held_messages(connection_id)]
        pairs: list[str] = []
        for raw in head:
            prepared = _released(connection_id, raw)
            if prepared is None:
                continue
            queue, message_id, message = prepared
            keys += [
                self._keys.dramatiq_queue(queue),
                self._keys.dramatiq_messages(queue),
                self._keys.queued_messages(connection_id, queue),
            ]
            pairs += [message_id, message]
        args: list[str | bytes | int | float] = [
            connection_id,
            len(head),
            len(pairs) // 2,
            epoch_seconds(),
            *head,
            *pairs,
        ]
        with translate_redis_errors():
            moved = self._release(keys=keys, args=args)
        return int(moved)


def _released(connection_id: str, raw: bytes) -> tuple[str, str, str] | None:
    """The queue, a new Redis message id and the message to put back there; None (logged)
    for a record this version cannot read, which is dropped rather than block the rest."""
    try:
        held = HELD_MESSAGE.decode(raw)
        message: dict[str, Any] = orjson.loads(held.message)
        if not isinstance(message, dict) or not isinstance(message.get("options", {}), dict):
            raise UnreadableRecord("a held message is not a Dramatiq message")
    except (UnreadableRecord, orjson.JSONDecodeError):
        log.error("held.unreadable_dropped", connection_id=connection_id)
        return None
    queue = held.queue.removesuffix(".DQ")
    message_id = str(uuid4())  # as RedisBroker.enqueue: unique per enqueue
    options = {**message.get("options", {}), "redis_message_id": message_id, RELEASED: True}
    options.pop("eta", None)
    message.update(queue_name=queue, options=options)
    return queue, message_id, orjson.dumps(message).decode()


def _pause_record(connection_id: str, raw: bytes | str) -> PauseRecord:
    try:
        return PAUSE_RECORD.decode(as_bytes(raw))
    except UnreadableRecord:
        # Still paused: the pause is the hash field, whatever its value says.
        log.warning("pause.unreadable", connection_id=connection_id)
        return PauseRecord(paused_at=datetime.fromtimestamp(0, UTC), by="")


def _held_at(raw: bytes | str) -> datetime | None:
    try:
        return HELD_MESSAGE.decode(as_bytes(raw)).held_at
    except UnreadableRecord:
        return None

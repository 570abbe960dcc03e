"""Dead letters kept 30 days (Dramatiq keeps its own 7), with what ops need and no PHI.

Each record: the job (actor, queue, ids, for replay), the error class and reason (masked the
same way logs are), the attempts, and when it first ran and finally failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog

from shared.infra.clock import epoch_seconds
from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.store import Keys, as_bytes, translate_redis_errors

log = structlog.get_logger("halaxy_bridge.dead_letters")

RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    actor: str
    queue: str
    connection_id: str
    event: str
    resource_id: str
    error_class: str
    reason: str
    attempts: int
    first_enqueued_at: str
    failed_at: str
    kwargs: dict[str, Any] = field(default_factory=dict)


DEAD_LETTER = RecordCodec(DeadLetter)


class DeadLetterStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    def add(self, letter: DeadLetter) -> None:
        now = epoch_seconds()
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._keys.dead_letters(), letter.id, DEAD_LETTER.encode(letter))
            pipe.zadd(self._keys.dead_letter_times(), {letter.id: now})
            pipe.execute()
            self._trim(now)

    def list(
        self,
        connection_id: str | None = None,
        since: datetime | None = None,
        reason: str | None = None,
    ) -> list[DeadLetter]:
        low = since.timestamp() if since else "-inf"
        with translate_redis_errors():
            ids: list[Any] = self._redis.zrangebyscore(self._keys.dead_letter_times(), low, "+inf")
            raw = self._redis.hmget(self._keys.dead_letters(), ids) if ids else []
        letters = [letter for r in raw if r is not None and (letter := _readable(r)) is not None]
        return [
            letter
            for letter in letters
            if (connection_id is None or letter.connection_id == connection_id)
            and (
                reason is None or reason.lower() in f"{letter.error_class} {letter.reason}".lower()
            )
        ]

    def get(self, letter_id: str) -> DeadLetter | None:
        with translate_redis_errors():
            raw = self._redis.hget(self._keys.dead_letters(), letter_id)
        return None if raw is None else DEAD_LETTER.decode(as_bytes(raw))

    def remove(self, letter_id: str) -> bool:
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(self._keys.dead_letters(), letter_id)
            pipe.zrem(self._keys.dead_letter_times(), letter_id)
            removed, _ = pipe.execute()
        return bool(removed)

    def _trim(self, now: float) -> None:
        cutoff = now - RETENTION.total_seconds()
        old = self._redis.zrangebyscore(self._keys.dead_letter_times(), "-inf", cutoff, 0, 500)
        if old:
            self._redis.hdel(self._keys.dead_letters(), *old)
            self._redis.zrem(self._keys.dead_letter_times(), *old)


def _readable(raw: bytes | str) -> DeadLetter | None:
    """The letter, or None (logged) when another version wrote one this one cannot read: one
    such record must not hide every other letter from ops."""
    try:
        return DEAD_LETTER.decode(as_bytes(raw))
    except UnreadableRecord as exc:
        log.warning("dead_letters.unreadable", detail=str(exc))
        return None


def iso(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="seconds")

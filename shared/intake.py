"""Taking in a Halaxy delivery: drop events already seen, queue the rest, remember them.

The order makes loss impossible: events are marked seen only after their jobs are queued. A
crash between the two can queue an event twice, which the idempotent actors absorb.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import redis

from shared.halaxy.events import HalaxyEvent
from shared.halaxy.notifications import ChangedResource
from shared.jobs import JobQueue, job_for_event
from shared.store import Keys, translate_redis_errors

# Halaxy documents no retry policy; a week covers any plausible redelivery (DESIGN: >= 7 days).
SEEN_TTL = timedelta(days=8)


@dataclass(frozen=True)
class IntakeResult:
    accepted: list[str]
    duplicates: list[str]


class WebhookIntake:
    def __init__(self, client: redis.Redis, keys: Keys, queue: JobQueue) -> None:
        self._redis = client
        self._keys = keys
        self._queue = queue

    def accept(
        self, connection_id: str, event: HalaxyEvent, changed: list[ChangedResource]
    ) -> IntakeResult:
        """Queue the events not seen before; raise `StoreUnavailable` if that cannot be done."""
        if not changed:
            return IntakeResult(accepted=[], duplicates=[])
        seen_keys = [self._seen_key(connection_id, item.event_key) for item in changed]
        with translate_redis_errors():
            seen = self._which_exist(seen_keys)
        fresh = [item for item, key in zip(changed, seen_keys, strict=True) if key not in seen]
        if fresh:
            self._queue.enqueue([job_for_event(connection_id, event, item) for item in fresh])
            with translate_redis_errors():
                pipe = self._redis.pipeline(transaction=False)
                for item in fresh:
                    pipe.set(self._seen_key(connection_id, item.event_key), b"1", ex=SEEN_TTL)
                pipe.execute()
        return IntakeResult(
            accepted=[item.event_key for item in fresh],
            duplicates=[item.event_key for item in changed if item not in fresh],
        )

    def _which_exist(self, keys: list[str]) -> set[str]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return {key for key, found in zip(keys, pipe.execute(), strict=True) if found}

    def _seen_key(self, connection_id: str, event_key: str) -> str:
        digest = hashlib.sha256(event_key.encode()).hexdigest()[:40]
        return self._keys.seen_event(connection_id, digest)

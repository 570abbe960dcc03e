"""The audit trail: an append-only Redis stream of writes to outside systems and ops actions.

Each entry: time (the stream id), who, what, connection, resource ids, outcome. Ids only,
never patient details. Entries older than a year are trimmed as new ones arrive.
"""

from __future__ import annotations

import time
from datetime import timedelta

import redis

from shared.store import Keys, translate_redis_errors

RETENTION = timedelta(days=365)


class AuditTrail:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._key = keys.audit()

    def record(
        self,
        *,
        actor: str,
        action: str,
        connection_id: str = "",
        resource_ids: str = "",
        outcome: str = "ok",
    ) -> None:
        oldest_ms = int((time.time() - RETENTION.total_seconds()) * 1000)
        with translate_redis_errors():
            self._redis.xadd(
                self._key,
                {
                    "actor": actor,
                    "action": action,
                    "connection_id": connection_id,
                    "resource_ids": resource_ids,
                    "outcome": outcome,
                },
                minid=oldest_ms,
                approximate=True,
            )

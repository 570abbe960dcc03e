"""The receiver's view of connections: the record last read of each, opened once.

A webhook is authenticated against the record last read, with no Redis round trip; the intake
script then queues only if that record is still the stored one (`ConnectionChanged` if not).
Entries exist only for connections found in Redis, so there are never more than there are
connections.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from shared.connections import Connection, ConnectionStore
from shared.infra import as_bytes, translate_redis_errors


@dataclass(frozen=True)
class Opened:
    record: bytes  # as stored, sealed
    connection: Connection


class KnownConnections:
    def __init__(self, client: redis.asyncio.Redis, store: ConnectionStore) -> None:
        self._redis = client
        self._store = store
        self._last: dict[str, Opened] = {}

    def last_read(self, connection_id: str) -> Opened | None:
        return self._last.get(connection_id)

    async def read(self, connection_id: str) -> Opened | None:
        """The stored connection now; raises `StoreUnavailable` if Redis cannot say."""
        with translate_redis_errors():
            record = await self._redis.get(self._store.keys.connection(connection_id))
        if record is None:
            self._last.pop(connection_id, None)
            return None
        opened = Opened(as_bytes(record), self._store.open_record(as_bytes(record)))
        self._last[connection_id] = opened
        return opened

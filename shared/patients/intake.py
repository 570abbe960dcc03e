"""Taking in a Halaxy delivery: drop events already seen, queue the rest, remember them.

`EventIntake` does it in one atomic step: it checks that the connection the caller was
authenticated against is still the stored one, and for each event sets the seen mark and
queues the job together. Nothing can be queued without its mark or marked without being
queued, and a rotation or a disable that lands while a request is in flight is never missed.
Its implementation on Dramatiq's Redis broker: `services.workers.messaging.DramatiqEventIntake`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from shared.halaxy.events import HalaxyEvent
from shared.halaxy.notifications import ChangedResource
from shared.infra.errors import BridgeError

# Halaxy documents no retry policy; a week covers any plausible redelivery (DESIGN: >= 7 days).
SEEN_TTL = timedelta(days=8)


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


def event_digest(event_key: str) -> str:
    return hashlib.sha256(event_key.encode()).hexdigest()[:40]

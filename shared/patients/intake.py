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
from datetime import timedelta
from typing import Protocol

from shared.halaxy.events import HalaxyEvent
from shared.halaxy.notifications import ChangedResource
from shared.infra.errors import BridgeError
from shared.infra.jobs import ActorName, IntakeResult, Job, QueueName

# Halaxy documents no retry policy; a week covers any plausible redelivery (DESIGN: >= 7 days).
SEEN_TTL = timedelta(days=8)


class ConnectionChanged(BridgeError):
    """The stored connection is no longer the record the caller authenticated against."""


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


ACTOR_FOR_RESOURCE = {
    "Patient": ActorName.SYNC_PATIENT,
    "Appointment": ActorName.SYNC_APPOINTMENT,
    "Invoice": ActorName.RECORD_INVOICE,
}


def job_for_event(connection_id: str, event: HalaxyEvent, changed: ChangedResource) -> Job:
    """The live job for one changed resource: ids only, never patient details."""
    return Job(
        actor=ACTOR_FOR_RESOURCE[changed.resource_type],
        queue=QueueName.LIVE,
        kwargs={
            "connection_id": connection_id,
            "resource_id": changed.resource_id,
            "event": event.name,
            "event_id": changed.event_key,
        },
    )


def event_digest(event_key: str) -> str:
    return hashlib.sha256(event_key.encode()).hexdigest()[:40]

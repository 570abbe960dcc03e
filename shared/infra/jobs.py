"""The work the receiver hands to the workers: which actor, on which queue, with what.

Messages carry ids only (connection, resource, event), never patient details: the worker
fetches the resource from Halaxy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from shared.halaxy.events import HalaxyEvent
from shared.halaxy.notifications import ChangedResource


class QueueName(StrEnum):
    LIVE = "live"  # webhook work: a clinic waits for it
    BULK = "bulk"  # backfill, reconcile, replays: must not delay live work


class ActorName(StrEnum):
    SYNC_PATIENT = "sync_patient"
    SYNC_APPOINTMENT = "sync_appointment"
    RECORD_INVOICE = "record_invoice"
    WRITE_PROGRAM_NOTE = "write_program_note"


ACTOR_FOR_RESOURCE = {
    "Patient": ActorName.SYNC_PATIENT,
    "Appointment": ActorName.SYNC_APPOINTMENT,
    "Invoice": ActorName.RECORD_INVOICE,
}


# Dramatiq runs lower numbers first: a free worker thread takes live work before bulk work.
LIVE_PRIORITY = 0
BULK_PRIORITY = 100


def actor_for(actor: ActorName, queue: QueueName) -> str:
    """The Dramatiq actor name: the live actor, or its bulk twin (`<name>_bulk`)."""
    return actor.value if queue is QueueName.LIVE else f"{actor.value}_bulk"


@dataclass(frozen=True)
class Job:
    actor: ActorName
    queue: QueueName
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def actor_name(self) -> str:
        return actor_for(self.actor, self.queue)


class JobQueue(Protocol):
    """Where jobs go; `enqueue` returns only once every job is durably queued."""

    def enqueue(self, jobs: Sequence[Job]) -> None: ...


def job_for_event(connection_id: str, event: HalaxyEvent, changed: ChangedResource) -> Job:
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


def job_for_note(connection_id: str, note_id: str) -> Job:
    return Job(
        actor=ActorName.WRITE_PROGRAM_NOTE,
        queue=QueueName.LIVE,
        kwargs={"connection_id": connection_id, "note_id": note_id, "event_id": note_id},
    )

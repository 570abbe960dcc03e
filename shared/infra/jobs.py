"""The work the receiver hands to the workers: which actor, on which queue, with what.

Messages carry ids only (connection, resource, event), never patient details: the worker
fetches the resource from Halaxy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class QueueName(StrEnum):
    LIVE = "live"  # webhook work: a clinic waits for it
    BULK = "bulk"  # backfill, reconcile, replays: must not delay live work


class ActorName(StrEnum):
    SYNC_PATIENT = "sync_patient"
    SYNC_APPOINTMENT = "sync_appointment"
    RECORD_INVOICE = "record_invoice"
    WRITE_PROGRAM_NOTE = "write_program_note"
    PROBE_CONNECTION = "probe_connection"  # a test event sent from /ops: reads, never writes


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


@dataclass(frozen=True)
class IntakeResult:
    """What an intake did with a delivery: the ids it queued, and those it had seen before."""

    accepted: list[str]
    duplicates: list[str]


class JobQueue(Protocol):
    """Where jobs go; `enqueue` returns only once every job is durably queued."""

    def enqueue(self, jobs: Sequence[Job]) -> None: ...

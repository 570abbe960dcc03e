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
    # A connection's live events over BRIDGE_STORM_EVENTS_PER_MINUTE (a bulk import in Halaxy):
    # they must not delay other clinics' live events.
    STORM = "storm"
    BULK = "bulk"  # backfill, reconcile, replays: must not delay live work


class ActorName(StrEnum):
    SYNC_PATIENT = "sync_patient"
    SYNC_APPOINTMENT = "sync_appointment"
    RECORD_INVOICE = "record_invoice"
    WRITE_PROGRAM_NOTE = "write_program_note"
    PROBE_CONNECTION = "probe_connection"  # a test event sent from /ops: reads, never writes


# Dramatiq runs lower numbers first: a free worker thread takes live work before bulk work.
LIVE_PRIORITY = 0
STORM_PRIORITY = 50  # after every clinic's live work, before backfill
BULK_PRIORITY = 100


def actor_for(actor: ActorName, queue: QueueName) -> str:
    """The Dramatiq actor name: the live actor, or its twin on another queue (`<name>_bulk`,
    `<name>_storm`)."""
    return actor.value if queue is QueueName.LIVE else f"{actor.value}_{queue.value}"


def base_actor(actor_name: str) -> ActorName:
    """The job a Dramatiq actor name runs, whichever queue's twin it names (ValueError if
    none)."""
    for queue in QueueName:
        suffix = f"_{queue.value}"
        if queue is not QueueName.LIVE and actor_name.endswith(suffix):
            return ActorName(actor_name.removesuffix(suffix))
    return ActorName(actor_name)


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

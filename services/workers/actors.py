"""The actors the receiver enqueues. Thin shells: load the connection, call domain code.

Until patient sync and the program write-back land (issues 3 and 4), each actor logs the job
it received (ids only) and acknowledges it.
"""

from __future__ import annotations

import dramatiq
import structlog

from shared.jobs import ActorName, QueueName

log = structlog.get_logger("halaxy_bridge.workers")


def _received(actor: str, connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    log.info(
        "job.received",
        actor=actor,
        connection_id=connection_id,
        resource_id=resource_id,
        halaxy_event=event,
        event_id=event_id,
        outcome="not_implemented_yet",
    )


@dramatiq.actor(actor_name=ActorName.SYNC_PATIENT.value, queue_name=QueueName.LIVE.value)
def sync_patient(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    _received(ActorName.SYNC_PATIENT, connection_id, resource_id, event, event_id)


@dramatiq.actor(actor_name=ActorName.SYNC_APPOINTMENT.value, queue_name=QueueName.LIVE.value)
def sync_appointment(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    _received(ActorName.SYNC_APPOINTMENT, connection_id, resource_id, event, event_id)


@dramatiq.actor(actor_name=ActorName.RECORD_INVOICE.value, queue_name=QueueName.LIVE.value)
def record_invoice(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    _received(ActorName.RECORD_INVOICE, connection_id, resource_id, event, event_id)

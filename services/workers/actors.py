"""The actors the receiver enqueues. Thin shells: load the connection, call domain code,
let `policy.job_outcome` turn errors into retry, defer or dead-letter."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq

from services.workers.policy import RETRY_OPTIONS, job_outcome
from services.workers.runtime import current_runtime
from services.workers.time_limits import TIME_LIMITS_MS
from shared.infra import (
    BULK_PRIORITY,
    LIVE_PRIORITY,
    STORM_PRIORITY,
    ActorName,
    BridgeError,
    QueueName,
    actor_for,
    held_lease,
    utcnow,
)
from shared.notes import write_note
from shared.patients import sync_appointment as sync_appointment_of
from shared.patients import sync_patient as sync_patient_of
from shared.telemetry import NOTES, note_result

NOTE_OUTCOMES = frozenset({"posted", "parked", "failed"})
NOTE_LEASE_SECONDS = 30.0  # renewed every 10 s; lapses within 30 s of a crash


def sync_patient(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    with job_outcome(
        ActorName.SYNC_PATIENT,
        connection_id=connection_id,
        event_id=event_id,
        halaxy_event=event,
        patient_id=resource_id,
    ) as log:
        rt = current_runtime()
        services = rt.services(connection_id)
        outcome = sync_patient_of(
            services.halaxy, services.accounts, services.links, rt.audit, resource_id
        )
        log.info("patient.synced", outcome=outcome.value)
        note_result(outcome.value)  # for the event log


def sync_appointment(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    with job_outcome(
        ActorName.SYNC_APPOINTMENT,
        connection_id=connection_id,
        event_id=event_id,
        halaxy_event=event,
        appointment_id=resource_id,
    ) as log:
        rt = current_runtime()
        services = rt.services(connection_id)
        outcome, patient_id = sync_appointment_of(
            services.halaxy,
            services.links,
            resource_id,
            deleted=event == "appointment-deleted",
            # A booked enquiry has become a patient: it is created, in the account of the
            # practitioner it is booked with.
            sync=lambda pid, booked_with: sync_patient_of(
                services.halaxy,
                services.accounts,
                services.links,
                rt.audit,
                pid,
                booked=True,
                booked_with=booked_with,
            ),
            practitioners=services.accounts.seats,
        )
        log.info("appointment.synced", outcome=outcome.value, patient_id=patient_id)
        note_result(outcome.value)


def record_invoice(connection_id: str, resource_id: str, event: str, event_id: str) -> None:
    """Invoice events are recorded, nothing more: no therapy platform stores invoices."""
    with job_outcome(
        ActorName.RECORD_INVOICE,
        connection_id=connection_id,
        event_id=event_id,
        halaxy_event=event,
        invoice_id=resource_id,
    ) as log:
        log.info("invoice.recorded")
        note_result("recorded")


def write_program_note(connection_id: str, note_id: str, event_id: str) -> None:
    with job_outcome(
        ActorName.WRITE_PROGRAM_NOTE,
        connection_id=connection_id,
        event_id=event_id,
        note_id=note_id,
    ) as log:
        rt = current_runtime()
        services = rt.services(connection_id)
        # One worker per note at a time; the lease lapses soon after its holder dies.
        with held_lease(
            rt.redis,
            rt.keys.note_lock(connection_id, note_id),
            ttl=NOTE_LEASE_SECONDS,
            wait=5.0,
            busy="another worker holds this note",
            renewer=rt.renewer,
        ):
            result = write_note(
                connection=services.connection,
                note_id=note_id,
                outbox=rt.outbox,
                fetcher=services.pdfs,
                halaxy=services.halaxy,
                audit=rt.audit,
                now=utcnow(),
            )
        if result.outcome.value in NOTE_OUTCOMES:
            NOTES.labels(connection_id, result.outcome.value).inc()
        note_result(result.outcome.value)
        level = {"posted": log.info, "parked": log.warning, "failed": log.error}.get(
            result.outcome.value, log.info
        )
        level(
            "note." + result.outcome.value,
            outcome=result.outcome.value,
            docref_id=result.docref_id or None,
            reason=result.reason or None,
        )


TEST_EVENT = "test-event"
# Who a test event looks for, in Halaxy and on the platform: no patient has this id.
PROBE_EXTERNAL_ID = "halaxy-bridge-test-event"


def probe_connection(connection_id: str, event_id: str, event: str = TEST_EVENT) -> None:
    """A test event sent from /ops: a read from Halaxy (a token, then a Patient search for an
    id no patient has) and a look-up on the platform, through the connection's own clients, so the
    event's trail in the log shows what each answered. It writes nothing anywhere, and a failure
    is its result (`failed`, the calls' status codes in the trail), never retried or
    dead-lettered: it is a question, not work."""
    with job_outcome(
        ActorName.PROBE_CONNECTION, connection_id=connection_id, event_id=event_id
    ) as log:
        services = current_runtime().services(connection_id)
        try:
            # `_id` (FHIR R4 search, every resource) of an id no patient has: Halaxy reads the
            # key and answers an empty Bundle, so no patient's details are fetched.
            probe = {"_id": PROBE_EXTERNAL_ID, "_count": "1"}
            next(iter(services.halaxy.search("Patient", probe)), None)
            services.platform.find_patient(PROBE_EXTERNAL_ID)
        except BridgeError as exc:
            note_result("failed")
            log.warning("connection.probe_failed", error=type(exc).__name__)
            return
        note_result("probed")
        log.info("connection.probed")


# Each job runs as a live actor (webhooks: a clinic waits) and as a bulk twin on its own queue
# at a lower priority (backfill, reconcile, replays), so bulk work never delays live work; and
# as a storm twin between the two (a connection's live events past its storm limit: the
# receiver's intake), so one clinic's storm never delays other clinics' live work.
FUNCTIONS: dict[ActorName, Callable[..., None]] = {
    ActorName.SYNC_PATIENT: sync_patient,
    ActorName.SYNC_APPOINTMENT: sync_appointment,
    ActorName.RECORD_INVOICE: record_invoice,
    ActorName.WRITE_PROGRAM_NOTE: write_program_note,
    ActorName.PROBE_CONNECTION: probe_connection,
}
for _name, _function in FUNCTIONS.items():
    for _queue, _priority in (
        (QueueName.LIVE, LIVE_PRIORITY),
        (QueueName.STORM, STORM_PRIORITY),
        (QueueName.BULK, BULK_PRIORITY),
    ):
        dramatiq.actor(
            actor_name=actor_for(_name, _queue),
            queue_name=_queue.value,
            priority=_priority,
            time_limit=TIME_LIMITS_MS[_name],
            **RETRY_OPTIONS,
        )(_function)

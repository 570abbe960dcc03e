"""Patient sync: Halaxy Patient -> therapy platform, exactly once per change.

The whole sync of one patient runs under a per-patient lock, Halaxy read included, so two
events for the same patient cannot interleave and write an older state last. Every outcome is
counted per connection (`halaxy_bridge_patient_outcomes`), a refusal under its reason, so ops
can see why a patient never arrived (`status`, `/ops`, `/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.halaxy.client import HalaxyClient, HalaxyNotFound
from shared.halaxy.fhir import is_resource_id
from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.errors import Permanent
from shared.patients.links import PatientLink, PatientLinks
from shared.patients.mapping import (
    PatientNotUsable,
    Refusal,
    Standing,
    assess,
    map_patient,
)
from shared.platforms import PatientDetails, TherapyPlatform, fingerprint
from shared.telemetry.definitions import PATIENT_OUTCOMES


class SyncOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED_INACTIVE = "skipped_inactive"  # archived or blocked: not created
    SKIPPED_DECEASED = "skipped_deceased"  # deceased: not created
    SKIPPED_ENQUIRY = "skipped_enquiry"  # a Halaxy enquiry (`contact`): not created
    LEFT_INACTIVE = "left_inactive"  # became inactive after it was synced: left as it is
    LEFT_DECEASED = "left_deceased"  # died after it was synced: left as it is
    ALREADY_SYNCED = "already_synced"  # appointment whose patient is linked already
    NOTHING_TO_DO = "nothing_to_do"  # appointment deleted, or without a patient


# A patient not in good standing: (outcome without a link, outcome with one).
NOT_WRITTEN = {
    Standing.INACTIVE: (SyncOutcome.SKIPPED_INACTIVE, SyncOutcome.LEFT_INACTIVE),
    Standing.DECEASED: (SyncOutcome.SKIPPED_DECEASED, SyncOutcome.LEFT_DECEASED),
    # A linked enquiry is updated like any patient, so it is never "left".
    Standing.ENQUIRY: (SyncOutcome.SKIPPED_ENQUIRY, SyncOutcome.SKIPPED_ENQUIRY),
}
REFUSED = "refused"


def sync_patient(
    halaxy: HalaxyClient,
    platform: TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    now: datetime | None = None,
    booked: bool = False,
) -> SyncOutcome:
    """Sync one patient and count the outcome per connection (a refusal under its reason).

    `booked`: an appointment brought the patient in, so an enquiry (`contact`) is created: it
    has become a patient. `now` defaults to the product's clock."""
    try:
        outcome = _sync(halaxy, platform, links, audit, patient_id, now or utcnow(), booked=booked)
    except PatientNotUsable as exc:
        PATIENT_OUTCOMES.labels(links.connection_id, REFUSED, exc.reason.value).inc()
        raise
    PATIENT_OUTCOMES.labels(links.connection_id, outcome.value, "").inc()
    return outcome


def _sync(
    halaxy: HalaxyClient,
    platform: TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    now: datetime,
    booked: bool,
) -> SyncOutcome:
    if not is_resource_id(patient_id):
        # The receiver refuses such ids; a message from elsewhere (a replay) asks for nothing.
        raise PatientNotUsable("?", [Refusal.BAD_ID])
    with links.locked(patient_id):
        resource = halaxy.read(f"Patient/{patient_id}")
        found = assess(resource, now, patient_id)
        if isinstance(found, Standing):
            link = links.get(patient_id)
            linked = link is not None and not link.creating
            if found is not Standing.ENQUIRY or not (booked or linked):
                return _not_written(links, patient_id, link, found)
            found = map_patient(resource, now)
        return _write(platform, links, audit, patient_id, found)


def _not_written(
    links: PatientLinks, patient_id: str, link: PatientLink | None, standing: Standing
) -> SyncOutcome:
    """Nothing is created for a patient not in good standing; one written before is left as
    it is (Halaxy has no delete event, the platforms no delete endpoint), its link saying why."""
    skipped, left = NOT_WRITTEN[standing]
    if link is None or link.creating:
        return skipped
    if link.stopped != standing.value:
        links.stop(patient_id, link, standing.value)
    return left


def _write(
    platform: TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    details: PatientDetails,
) -> SyncOutcome:
    # Marked before the platform is asked to create a patient it has no link for.
    link = links.get(patient_id, mark_creating=True)
    digest = fingerprint(platform, details)
    if link is not None and link.fingerprint == digest:
        return SyncOutcome.UNCHANGED
    platform_id = link.platform_id if link is not None else None
    if link is not None and link.creating:
        # A worker died after asking for a create: the platform may have made the client.
        platform_id = platform.find_patient(patient_id)
        if platform_id is None:
            links.mark_creating(patient_id)
    try:
        result = platform.upsert_patient(details, platform_id)
    except Permanent as exc:
        audit.record_write(
            "platform.patient_write",
            links.connection_id,
            _ids(patient_id, platform_id),
            f"refused: {type(exc).__name__}",
        )
        raise
    outcome = SyncOutcome.CREATED if result.created else SyncOutcome.UPDATED
    entry = audit.pending_write(
        f"platform.patient_{outcome.value}",
        links.connection_id,
        _ids(patient_id, result.platform_id),
    )
    links.save(patient_id, result.platform_id, digest, audit=entry)
    return outcome


def _ids(patient_id: str, platform_id: str | None) -> str:
    return f"Patient/{patient_id} platform:{platform_id or '-'}"


def sync_appointment(
    halaxy: HalaxyClient,
    links: PatientLinks,
    appointment_id: str,
    deleted: bool,
    sync: Callable[[str], SyncOutcome],
) -> tuple[SyncOutcome, str | None]:
    """Make sure an appointment's patient is in the platform; a deletion needs nothing."""
    if deleted:
        return SyncOutcome.NOTHING_TO_DO, None
    try:
        appointment = halaxy.read(f"Appointment/{appointment_id}")
    except HalaxyNotFound:
        raise Permanent(f"Halaxy has no Appointment {appointment_id}") from None
    patient_id = patient_participant(appointment)
    if patient_id is None:
        return SyncOutcome.NOTHING_TO_DO, None
    link = links.get(patient_id)
    if link is not None and not link.creating:
        return SyncOutcome.ALREADY_SYNCED, patient_id
    return sync(patient_id), patient_id


def patient_participant(appointment: dict[str, Any]) -> str | None:
    """The id of the appointment's patient participant (`Patient/{id}`, absolute or not)."""
    for participant in appointment.get("participant") or []:
        actor = participant.get("actor") if isinstance(participant, dict) else None
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if isinstance(reference, str) and "Patient/" in reference:
            patient_id = reference.rsplit("Patient/", 1)[1].split("/")[0]
            if patient_id:
                return patient_id
    return None

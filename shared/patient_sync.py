"""Patient sync: Halaxy Patient -> therapy platform, exactly once per change.

The whole sync of one patient runs under a per-patient lock, Halaxy read included, so two
events for the same patient cannot interleave and write an older state last.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from shared.audit import AuditTrail
from shared.errors import Permanent
from shared.halaxy.client import HalaxyClient, HalaxyNotFound
from shared.patient_links import PatientLinks
from shared.patients import map_patient
from shared.platforms import TherapyPlatform, fingerprint


class SyncOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED_INACTIVE = "skipped_inactive"  # archived, blocked or deceased: not created
    LEFT_INACTIVE = "left_inactive"  # became inactive after it was synced: left as it is
    ALREADY_SYNCED = "already_synced"  # appointment whose patient is linked already
    NOTHING_TO_DO = "nothing_to_do"  # appointment deleted, or without a patient


def sync_patient(
    halaxy: HalaxyClient,
    platform: TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
) -> SyncOutcome:
    with links.locked(patient_id):
        details = map_patient(halaxy.read(f"Patient/{patient_id}"))
        # Marked before the platform is asked to create an active patient it has no link for.
        link = links.get(patient_id, mark_creating=not details.inactive)
        if details.inactive:
            if link is None or link.creating:
                return SyncOutcome.SKIPPED_INACTIVE
            return SyncOutcome.LEFT_INACTIVE
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

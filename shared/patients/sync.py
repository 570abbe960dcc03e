"""Patient sync: Halaxy Patient -> therapy platform, exactly once per change.

The whole sync of one patient runs under a per-patient lock, Halaxy read included, so two
events for the same patient cannot interleave and write an older state last. Every outcome is
counted per connection (`halaxy_bridge_patient_outcomes`), a refusal under its reason, so ops
can see why a patient never arrived (`status`, `/ops`, `/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.connections.practitioner import CONNECTION_ACCOUNT, referenced_practitioners
from shared.halaxy.client import HalaxyClient, HalaxyNotFound
from shared.halaxy.fhir import is_resource_id, last_updated
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
from shared.patients.routing import accounts_for
from shared.platforms import GenderRefused, PatientDetails, TherapyPlatform, fingerprint
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
    SKIPPED_STALE = "skipped_stale"  # a version older than the one written: not written
    SKIPPED_GENDER = "skipped_gender"  # the platform needs a gender the record does not give


# A patient not in good standing: (outcome without a link, outcome with one).
NOT_WRITTEN = {
    Standing.INACTIVE: (SyncOutcome.SKIPPED_INACTIVE, SyncOutcome.LEFT_INACTIVE),
    Standing.DECEASED: (SyncOutcome.SKIPPED_DECEASED, SyncOutcome.LEFT_DECEASED),
    # A linked enquiry is updated like any patient, so it is never "left".
    Standing.ENQUIRY: (SyncOutcome.SKIPPED_ENQUIRY, SyncOutcome.SKIPPED_ENQUIRY),
}
REFUSED = "refused"
ORDER_OF_TELLING = (
    SyncOutcome.CREATED,
    SyncOutcome.UPDATED,
    SyncOutcome.SKIPPED_GENDER,
    SyncOutcome.SKIPPED_STALE,
)


@dataclass(frozen=True)
class PlatformAccounts:
    """The platform accounts of a connection a patient can be written to, by practitioner
    PR- id (`CONNECTION_ACCOUNT`, None: the connection's own), and where a patient with no
    practitioner of their own goes (`Connection.default_seat`)."""

    platforms: Mapping[str | None, TherapyPlatform]
    default: str | None = CONNECTION_ACCOUNT
    # Each practitioner's PR- id to the seat their patients are kept under
    # (`Connection.practitioner_seats`).
    seats: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def only(cls, platform: TherapyPlatform) -> PlatformAccounts:
        """The connection's own account alone (a platform without practitioner accounts)."""
        return cls({CONNECTION_ACCOUNT: platform})


def sync_patient(
    halaxy: HalaxyClient,
    accounts: PlatformAccounts | TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    now: datetime | None = None,
    booked: bool = False,
    booked_with: str | None = None,
) -> SyncOutcome:
    """Sync one patient to every account they belong in, and count the outcome per
    connection (a refusal under its reason).

    `booked`: an appointment brought the patient in, so an enquiry (`contact`) is created: it
    has become a patient; `booked_with`: the PR- id of that appointment's practitioner, whose
    account the patient must be in (`routing.accounts_for`). `now` defaults to the product's
    clock."""
    if not isinstance(accounts, PlatformAccounts):
        accounts = PlatformAccounts.only(accounts)
    try:
        outcome = _sync(
            halaxy, accounts, links, audit, patient_id, now or utcnow(), booked, booked_with
        )
    except PatientNotUsable as exc:
        PATIENT_OUTCOMES.labels(links.connection_id, REFUSED, exc.reason.value).inc()
        raise
    PATIENT_OUTCOMES.labels(links.connection_id, outcome.value, "").inc()
    return outcome


def _sync(
    halaxy: HalaxyClient,
    accounts: PlatformAccounts,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    now: datetime,
    booked: bool,
    booked_with: str | None,
) -> SyncOutcome:
    if not is_resource_id(patient_id):
        # The receiver refuses such ids; a message from elsewhere (a replay) asks for nothing.
        raise PatientNotUsable("?", [Refusal.BAD_ID])
    with links.locked(patient_id):
        resource = halaxy.read(f"Patient/{patient_id}")
        found = assess(resource, now, patient_id)
        linked = links.of_seats(patient_id, list(accounts.platforms))
        written = {seat: link for seat, link in linked.items() if not link.creating}
        if isinstance(found, Standing):
            if found is not Standing.ENQUIRY or not (booked or written):
                return _not_written(links, patient_id, written, found)
            found = map_patient(resource, now)
        seats = accounts_for(resource, list(linked), accounts.seats, accounts.default, booked_with)
        version = last_updated(resource)
        outcomes = [
            _write(accounts.platforms[seat], links, audit, patient_id, found, seat, version)
            for seat in seats
        ]
        return combined(outcomes)


def combined(outcomes: list[SyncOutcome]) -> SyncOutcome:
    """One outcome for writes to several accounts: the most telling of them."""
    for outcome in ORDER_OF_TELLING:
        if outcome in outcomes:
            return outcome
    return SyncOutcome.UNCHANGED


def _not_written(
    links: PatientLinks,
    patient_id: str,
    written: Mapping[str | None, PatientLink],
    standing: Standing,
) -> SyncOutcome:
    """Nothing is created for a patient not in good standing; one written before is left as
    it is (Halaxy has no delete event, the platforms no delete endpoint), each link saying
    why."""
    skipped, left = NOT_WRITTEN[standing]
    if not written:
        return skipped
    for seat, link in written.items():
        if link.stopped != standing.value:
            links.stop(patient_id, link, standing.value, seat=seat)
    return left


def _write(
    platform: TherapyPlatform,
    links: PatientLinks,
    audit: AuditTrail,
    patient_id: str,
    details: PatientDetails,
    seat: str | None,
    version: datetime | None,
) -> SyncOutcome:
    # Marked before the platform is asked to create a patient it has no link for.
    link = links.get(patient_id, mark_creating=True, seat=seat)
    if link is not None and is_older(version, link.source_updated):
        return SyncOutcome.SKIPPED_STALE
    digest = fingerprint(platform, details)
    if link is not None and link.fingerprint == digest:
        return SyncOutcome.UNCHANGED
    platform_id = link.platform_id if link is not None else None
    if link is not None and link.creating:
        # A worker died after asking for a create: the platform may have made the client.
        platform_id = platform.find_patient(patient_id)
        if platform_id is None:
            links.mark_creating(patient_id, seat=seat)
    ids = _ids(patient_id, platform_id, seat)
    if platform_id is None:
        # The `creating` mark turns a repeat of this create into a search (above). Redis
        # replicates asynchronously: the mark must be on a replica before the platform is
        # asked, or a failover could promote one without it, and a later sync create the
        # patient twice. Not held in time: NotReplicated, a Transient, and nothing created.
        links.confirm_replicated()
    try:
        result = platform.upsert_patient(details, platform_id)
    except GenderRefused:
        # The platform takes no patient without a sex the record does not give (physitrack.py,
        # "Gender"): counted and left for the next change of the Patient, never dead-lettered.
        if platform_id is None:
            links.unmark_creating(patient_id, seat=seat)  # refused: nothing was created
        audit.record_write("platform.patient_write", links.connection_id, ids, "refused: gender")
        return SyncOutcome.SKIPPED_GENDER
    except Permanent as exc:
        audit.record_write(
            "platform.patient_write", links.connection_id, ids, f"refused: {type(exc).__name__}"
        )
        raise
    outcome = SyncOutcome.CREATED if result.created else SyncOutcome.UPDATED
    entry = audit.pending_write(
        f"platform.patient_{outcome.value}",
        links.connection_id,
        _ids(patient_id, result.platform_id, seat),
    )
    links.save(
        patient_id,
        result.platform_id,
        digest,
        audit=entry,
        seat=seat,
        source_updated=None if version is None else version.isoformat(),
    )
    return outcome


def is_older(version: datetime | None, written: str | None) -> bool:
    """The version read is older than the one written (both known): it must not overwrite it."""
    if version is None or written is None:
        return False
    return version < datetime.fromisoformat(written)


def _ids(patient_id: str, platform_id: str | None, seat: str | None = None) -> str:
    account = "" if seat is None else f" account:{seat}"
    return f"Patient/{patient_id} platform:{platform_id or '-'}{account}"


def sync_appointment(
    halaxy: HalaxyClient,
    links: PatientLinks,
    appointment_id: str,
    deleted: bool,
    sync: Callable[[str, str | None], SyncOutcome],
    practitioners: Mapping[str, str | None] | None = None,
) -> tuple[SyncOutcome, str | None]:
    """Make sure an appointment's patient is in the platform, in the account of the
    appointment's practitioner when they are one of `practitioners` (PR- id to seat,
    `Connection.practitioner_seats`); a deletion needs nothing. `sync(patient_id,
    booked_with)` syncs the patient, `booked_with` the practitioner's PR- id or None."""
    practitioners = practitioners or {}
    if deleted:
        return SyncOutcome.NOTHING_TO_DO, None
    try:
        appointment = halaxy.read(f"Appointment/{appointment_id}")
    except HalaxyNotFound:
        raise Permanent(f"Halaxy has no Appointment {appointment_id}") from None
    patient_id = patient_participant(appointment)
    if patient_id is None:
        return SyncOutcome.NOTHING_TO_DO, None
    booked_with = next(
        (pr for pr in appointment_practitioners(appointment) if pr in practitioners), None
    )
    if booked_with is not None:
        link = links.get(patient_id, seat=practitioners[booked_with])
        if link is not None and not link.creating:
            return SyncOutcome.ALREADY_SYNCED, patient_id
    else:
        seats = list(dict.fromkeys([CONNECTION_ACCOUNT, *practitioners.values()]))
        if any(not link.creating for link in links.of_seats(patient_id, seats).values()):
            return SyncOutcome.ALREADY_SYNCED, patient_id
    return sync(patient_id, booked_with), patient_id


def appointment_practitioners(appointment: dict[str, Any]) -> list[str]:
    """The PR- ids of the appointment's practitioner participants (halaxy-api.md 5:
    `participant[].actor` is `PractitionerRole/PR-…`)."""
    return referenced_practitioners(
        reference
        for participant in appointment.get("participant") or []
        if isinstance(participant, dict)
        for reference in [_reference(participant.get("actor"))]
        if reference is not None
    )


def _reference(element: object) -> str | None:
    reference = element.get("reference") if isinstance(element, dict) else None
    return reference if isinstance(reference, str) else None


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

"""Patients in: Halaxy delivery intake, FHIR Patient mapping, sync, links and reconcile."""

from shared.patients.intake import (
    SEEN_TTL,
    ConnectionChanged,
    EventIntake,
    event_digest,
    job_for_event,
)
from shared.patients.links import PatientLinks
from shared.patients.reconcile import SweepLog, due, sweep
from shared.patients.sync import PlatformAccounts, SyncOutcome, sync_appointment, sync_patient

__all__ = [
    "SEEN_TTL",
    "ConnectionChanged",
    "EventIntake",
    "PatientLinks",
    "PlatformAccounts",
    "SweepLog",
    "SyncOutcome",
    "due",
    "event_digest",
    "job_for_event",
    "sweep",
    "sync_appointment",
    "sync_patient",
]

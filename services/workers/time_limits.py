"""How long each job may run before Dramatiq interrupts it."""

from __future__ import annotations

from shared.infra import ActorName

TIME_LIMITS_MS = {
    ActorName.SYNC_PATIENT: 120_000,
    ActorName.SYNC_APPOINTMENT: 120_000,
    ActorName.RECORD_INVOICE: 30_000,
    ActorName.WRITE_PROGRAM_NOTE: 10 * 60_000,  # a 20 MB PDF down and ~27 MB of JSON up
    ActorName.PROBE_CONNECTION: 60_000,
}
LONGEST_JOB_SECONDS = max(TIME_LIMITS_MS.values()) / 1000

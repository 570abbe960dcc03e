"""A person settles a note the bridge could not: one parked (its POST ended ambiguously) or
one failed (Halaxy or the PDF refused it, so nothing was written). It was posted after all,
or retry it, or drop it.

The person names the state they looked at, and the note moves only from that state: a note
that failed, was retried by someone else and then parked may be in Halaxy, and a retry meant
for the failed note must not post it again.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.errors import InvalidInput, NotFound
from shared.infra.jobs import JobQueue
from shared.notes.callback import is_link_expired
from shared.notes.intake import job_for_note
from shared.notes.outbox import NoteOutbox, NoteRecord, NoteState
from shared.telemetry import Attempt, AttemptOutcome, EventLog, EventState, EventStatus

DOCREF_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Resolution(StrEnum):
    POSTED = "posted"  # the note is in Halaxy: record its DocumentReference id
    RETRY = "retry"  # the note is not in Halaxy: post it again
    DROP = "drop"  # give up on this note


class Waiting(StrEnum):
    """The states a person settles."""

    PARKED = NoteState.PARKED.value
    FAILED = NoteState.FAILED.value


class NoteNotWaiting(NotFound):
    """No parked or failed note has that id: never seen, settled, or expired."""


class NoteStateConflict(NotFound):
    """The note is not in the state the person named: it moved since they looked, or they
    named the wrong one. `actual` is the state it is in."""

    def __init__(self, message: str, actual: NoteState) -> None:
        super().__init__(message)
        self.actual = actual


class NoteCannotBeRetried(InvalidInput):
    """A retry that could only fail: the PDF link is gone or has expired."""


def find_waiting(outbox: NoteOutbox, note_id: str, state: Waiting) -> NoteRecord:
    """The note with this id, which the person saw `state`."""
    record = outbox.waiting(NoteState(state.value), note_id)
    if record is not None:
        return record
    for other in Waiting:
        if other is not state and outbox.waiting(NoteState(other.value), note_id) is not None:
            raise NoteStateConflict(
                f"note {note_id} is {other}, not {state}: look at it again "
                f"(notes {other}) before settling it",
                NoteState(other.value),
            )
    raise NoteNotWaiting(f"no parked or failed note {note_id}")


def resolve_note(
    outbox: NoteOutbox,
    queue: JobQueue,
    record: NoteRecord,
    resolution: Resolution,
    by: str,
    audit: AuditTrail,
    docref_id: str | None = None,
    now: datetime | None = None,
    events: EventLog | None = None,
) -> NoteRecord:
    """Apply `resolution` to a parked or failed note, moving it only from the state it has
    in `record`, recording who and when; the settled record. With `events`, the note's event
    log record shows the resolution as an attempt and takes its state."""
    if resolution is not Resolution.POSTED and docref_id is not None:
        raise InvalidInput("a DocumentReference id goes only with posted")
    resolved = {
        "resolved_by": by,
        "resolution": resolution.value,
        "resolved_at": utcnow().isoformat(timespec="seconds"),
    }
    if resolution is Resolution.POSTED:
        if not docref_id or not DOCREF_ID.fullmatch(docref_id):
            raise InvalidInput("posted needs the DocumentReference id Halaxy shows, like DR-123")
        target, extra = NoteState.POSTED, {"docref_id": docref_id}
    elif resolution is Resolution.RETRY:
        _check_retryable(outbox, record, now or utcnow())
        target, extra = NoteState.QUEUED, {}
    else:
        target, extra = NoteState.DROPPED, {}
    moved, found = outbox.move(
        record.connection_id, record.note_id, {record.state}, target, **resolved, **extra
    )
    if not moved:
        if found is None:
            raise NoteNotWaiting(f"no parked or failed note {record.note_id}")
        raise NoteStateConflict(f"note {record.note_id} is {found}, not {record.state}", found)
    # Recorded before the enqueue: if that fails the note is still watched (and queued again
    # within WATCH_NEW), and the trail says who sent it back.
    audit.record(
        actor=by,
        action="note.resolved",
        connection_id=record.connection_id,
        resource_ids=" ".join(
            [f"note:{record.note_id}", *(f"DocumentReference/{d}" for d in extra.values())]
        ),
        outcome=resolution.value,
    )
    if events is not None:
        _log_resolution(events, record, resolution)
    if resolution is Resolution.RETRY:
        queue.enqueue([job_for_note(record.connection_id, record.note_id)])
    settled = outbox.get(record.connection_id, record.note_id)
    assert settled is not None
    return settled


RESOLVED_STATE = {
    Resolution.POSTED: EventState.DONE,
    Resolution.RETRY: EventState.QUEUED,
    Resolution.DROP: EventState.DROPPED,
}


def _log_resolution(events: EventLog, record: NoteRecord, resolution: Resolution) -> None:
    now = utcnow()
    events.attempted(
        record.connection_id,
        record.note_id,
        Attempt(now, AttemptOutcome.RESOLVED, "notes resolve", detail=resolution.value),
        EventStatus(RESOLVED_STATE[resolution], now, detail=f"resolved: {resolution.value}"),
    )


def _check_retryable(outbox: NoteOutbox, record: NoteRecord, now: datetime) -> None:
    callback = outbox.callback(record.connection_id, record.note_id)
    if callback is None:
        raise NoteCannotBeRetried(
            f"note {record.note_id} no longer has its PDF link; ask the clinician to send "
            "the program again, then drop this note"
        )
    if is_link_expired(callback, now):
        raise NoteCannotBeRetried(
            f"the PDF link of note {record.note_id} expired (24 hours after the program "
            "was assigned); ask the clinician to send the program again, then drop this note"
        )

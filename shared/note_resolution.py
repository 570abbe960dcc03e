"""A person settles a note the bridge could not: one parked (its POST ended ambiguously) or
one failed (Halaxy or the PDF refused it, so nothing was written). It was posted after all,
or retry it, or drop it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from shared.audit import AuditTrail
from shared.connections import utcnow
from shared.errors import InvalidInput
from shared.jobs import JobQueue, job_for_note
from shared.notes_outbox import WAITING_STATES, NoteOutbox, NoteRecord, NoteState
from shared.programs import is_link_expired

DOCREF_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Resolution(StrEnum):
    POSTED = "posted"  # the note is in Halaxy: record its DocumentReference id
    RETRY = "retry"  # the note is not in Halaxy: post it again
    DROP = "drop"  # give up on this note


class NoteNotWaiting(InvalidInput):
    """No parked or failed note has that id: never seen, settled, or expired."""


class NoteMovedMeanwhile(InvalidInput):
    """The note was in a state a person settles when looked up, and left it before the move."""


class NoteCannotBeRetried(InvalidInput):
    """A retry that could only fail: the PDF link is gone or has expired."""


def find_waiting(outbox: NoteOutbox, note_id: str) -> NoteRecord:
    """The parked or failed note with this id."""
    for record in [*outbox.parked(), *outbox.failed()]:
        if record.note_id == note_id:
            return record
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
) -> NoteRecord:
    """Apply `resolution` to a parked or failed note, recording who and when; the settled
    record."""
    resolved = {
        "resolved_by": by,
        "resolution": resolution.value,
        "resolved_at": utcnow().isoformat(timespec="seconds"),
    }
    if resolution is Resolution.POSTED:
        if not docref_id or not DOCREF_ID.fullmatch(docref_id):
            raise InvalidInput("--posted needs the DocumentReference id Halaxy shows")
        target, extra = NoteState.POSTED, {"docref_id": docref_id}
    elif resolution is Resolution.RETRY:
        _check_retryable(outbox, record, now or utcnow())
        target, extra = NoteState.QUEUED, {}
    else:
        target, extra = NoteState.DROPPED, {}
    moved, found = outbox.move(
        record.connection_id, record.note_id, set(WAITING_STATES), target, **resolved, **extra
    )
    if not moved:
        raise NoteMovedMeanwhile(f"note {record.note_id} is {found}, not parked or failed")
    if resolution is Resolution.RETRY:
        queue.enqueue([job_for_note(record.connection_id, record.note_id)])
    audit.record(
        actor=by,
        action="note.resolved",
        connection_id=record.connection_id,
        resource_ids=" ".join(
            [f"note:{record.note_id}", *(f"DocumentReference/{d}" for d in extra.values())]
        ),
        outcome=resolution.value,
    )
    settled = outbox.get(record.connection_id, record.note_id)
    assert settled is not None
    return settled


def _check_retryable(outbox: NoteOutbox, record: NoteRecord, now: datetime) -> None:
    callback = outbox.callback(record.connection_id, record.note_id)
    if callback is None:
        # Notes that failed before failed notes kept their callback.
        raise NoteCannotBeRetried(
            f"note {record.note_id} no longer has its PDF link; ask the clinician to send "
            "the program again, then drop this note"
        )
    if is_link_expired(callback, now):
        raise NoteCannotBeRetried(
            f"the PDF link of note {record.note_id} expired (24 hours after the program "
            "was assigned); ask the clinician to send the program again, then drop this note"
        )

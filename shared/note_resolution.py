"""A person settles a parked note: it was posted after all, or retry it, or drop it."""

from __future__ import annotations

import re
from enum import StrEnum

from shared.audit import AuditTrail
from shared.connections import utcnow
from shared.errors import InvalidInput
from shared.jobs import JobQueue, job_for_note
from shared.notes_outbox import NoteOutbox, NoteRecord, NoteState

DOCREF_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Resolution(StrEnum):
    POSTED = "posted"  # the note is in Halaxy: record its DocumentReference id
    RETRY = "retry"  # the note is not in Halaxy: post it again
    DROP = "drop"  # give up on this note


def find_parked(outbox: NoteOutbox, note_id: str) -> NoteRecord:
    for record in outbox.parked():
        if record.note_id == note_id:
            return record
    raise InvalidInput(f"no parked note {note_id}")


def resolve_note(
    outbox: NoteOutbox,
    queue: JobQueue,
    record: NoteRecord,
    resolution: Resolution,
    by: str,
    audit: AuditTrail,
    docref_id: str | None = None,
) -> NoteRecord:
    """Apply `resolution` to a parked note, recording who and when; the settled record."""
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
        target, extra = NoteState.QUEUED, {}
    else:
        target, extra = NoteState.DROPPED, {}
    moved, found = outbox.move(
        record.connection_id, record.note_id, {NoteState.PARKED}, target, **resolved, **extra
    )
    if not moved:
        raise InvalidInput(f"note {record.note_id} is {found}, not parked")
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

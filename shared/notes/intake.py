"""Taking in a "program assigned" callback: record the note, queue its job, answer.

The outbox record is both the note's durable state and the dedup memory. A repeat of a note
still `queued` is queued again (cheap, and safe: one worker at a time per note, and the outbox
moves by compare-and-set), which also covers a crash between recording and queueing.

A new note is logged in the event log under its note id (`shared.telemetry.event_log`), with
where it came from (`source`): the log write never fails the intake.
"""

from __future__ import annotations

from shared.infra.clock import utcnow
from shared.infra.jobs import ActorName, IntakeResult, Job, JobQueue, QueueName
from shared.notes.callback import ProgramCallback
from shared.notes.outbox import NoteOutbox, NoteState
from shared.telemetry import EventLog, EventRecord, EventSource


def job_for_note(connection_id: str, note_id: str) -> Job:
    """The live job that writes one note: ids only, the callback stays in the outbox."""
    return Job(
        actor=ActorName.WRITE_PROGRAM_NOTE,
        queue=QueueName.LIVE,
        kwargs={"connection_id": connection_id, "note_id": note_id, "event_id": note_id},
    )


def program_event(
    connection_id: str,
    note_id: str,
    callback: ProgramCallback,
    source: EventSource,
    routed_from: str = "",
) -> EventRecord:
    """A program's event log record: its note id is its event id."""
    return EventRecord(
        event_id=note_id,
        connection_id=connection_id,
        source=source,
        event_type="program-updated" if callback.updated else "program-assigned",
        resource_id=callback.patient_id,
        received_at=utcnow(),
        note_id=note_id,
        routed_from=routed_from,
    )


class ProgramIntake:
    def __init__(self, outbox: NoteOutbox, queue: JobQueue, events: EventLog | None = None) -> None:
        self._outbox = outbox
        self._queue = queue
        self._events = events

    def accept(
        self,
        connection_id: str,
        note_id: str,
        callback: ProgramCallback,
        source: EventSource = EventSource.PROGRAM_CALLBACK,
        routed_from: str = "",
    ) -> IntakeResult:
        if self._outbox.create(connection_id, note_id, callback):
            # Logged first: the worker may take the job before this thread goes on.
            if self._events is not None:
                self._events.received(
                    program_event(connection_id, note_id, callback, source, routed_from)
                )
            # If this enqueue fails the caller answers 503 and the record stays `queued`; the
            # platform's retry of the callback then queues it (below). The record is never
            # deleted here: the enqueue may have landed although Redis did not say so.
            self._queue.enqueue([job_for_note(connection_id, note_id)])
            return IntakeResult(accepted=[note_id], duplicates=[])
        record = self._outbox.get(connection_id, note_id)
        if record is not None and record.state is NoteState.QUEUED:
            self._queue.enqueue([job_for_note(connection_id, note_id)])
        return IntakeResult(accepted=[], duplicates=[note_id])

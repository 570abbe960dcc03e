"""Programs back: the platform's callback, its intake, PDF fetch, the outbox, the writer and
the resolution of parked notes.
"""

from shared.notes.callback import (
    ProgramCallback,
    callback_note_id,
    is_link_expired,
    note_id_for,
    parse_callback,
    physitrack_note_id,
    program_note_id,
)
from shared.notes.intake import ProgramIntake, job_for_note
from shared.notes.outbox import OFFSET_MAX, PAGE_DEFAULT, PAGE_MAX, NoteOutbox, NotesPage, NoteState
from shared.notes.pdf_fetch import PdfFetcher, PdfRefused, Resolver, check_listed, system_resolver
from shared.notes.program_poll import PollCursor, PollCursors, PollResult, poll_practitioner
from shared.notes.resolution import (
    NoteNotWaiting,
    NoteStateConflict,
    Resolution,
    Waiting,
    find_waiting,
    resolve_note,
)
from shared.notes.unrouted import (
    UnroutedPrograms,
    UnroutedReason,
    owner_of,
    route_unrouted,
)
from shared.notes.writer import write_note

__all__ = [
    "OFFSET_MAX",
    "PAGE_DEFAULT",
    "PAGE_MAX",
    "NoteNotWaiting",
    "NoteOutbox",
    "NoteState",
    "NoteStateConflict",
    "NotesPage",
    "PdfFetcher",
    "PdfRefused",
    "PollCursor",
    "PollCursors",
    "PollResult",
    "ProgramCallback",
    "ProgramIntake",
    "Resolution",
    "Resolver",
    "UnroutedPrograms",
    "UnroutedReason",
    "Waiting",
    "callback_note_id",
    "check_listed",
    "find_waiting",
    "is_link_expired",
    "job_for_note",
    "note_id_for",
    "owner_of",
    "parse_callback",
    "physitrack_note_id",
    "poll_practitioner",
    "program_note_id",
    "resolve_note",
    "route_unrouted",
    "system_resolver",
    "write_note",
]

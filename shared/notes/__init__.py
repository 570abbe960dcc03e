"""Programs back: the platform's callback, its intake, PDF fetch, the outbox, the writer and
the resolution of parked notes.
"""

from shared.notes.callback import (
    ProgramCallback,
    is_link_expired,
    note_id_for,
    parse_callback,
    program_note_id,
)
from shared.notes.claims import ProgramClaims
from shared.notes.intake import ProgramIntake, job_for_note
from shared.notes.outbox import (
    OFFSET_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    NoteOutbox,
    NoteRecord,
    NotesPage,
    NoteState,
)
from shared.notes.pdf_fetch import PdfFetcher, PdfRefused, Resolver, check_listed, system_resolver
from shared.notes.program_poll import (
    PollCursor,
    PollCursors,
    PollHooks,
    PollResult,
    Taken,
    poll_practitioner,
)
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
    forget_polled,
    owner_of,
    route_unrouted,
    unrouted_id,
)
from shared.notes.writer import failed_for_its_link, write_note

__all__ = [
    "OFFSET_MAX",
    "PAGE_DEFAULT",
    "PAGE_MAX",
    "NoteNotWaiting",
    "NoteOutbox",
    "NoteRecord",
    "NoteState",
    "NoteStateConflict",
    "NotesPage",
    "PdfFetcher",
    "PdfRefused",
    "PollCursor",
    "PollCursors",
    "PollHooks",
    "PollResult",
    "ProgramCallback",
    "ProgramClaims",
    "ProgramIntake",
    "Resolution",
    "Resolver",
    "Taken",
    "UnroutedPrograms",
    "UnroutedReason",
    "Waiting",
    "check_listed",
    "failed_for_its_link",
    "find_waiting",
    "forget_polled",
    "is_link_expired",
    "job_for_note",
    "note_id_for",
    "owner_of",
    "parse_callback",
    "poll_practitioner",
    "program_note_id",
    "resolve_note",
    "route_unrouted",
    "system_resolver",
    "unrouted_id",
    "write_note",
]

"""Program write-back: fetch the PDF, post one clinical note, keep the outbox truthful.

At most once, and exactly once whenever the outcome is knowable: a note is taken into
`posting` by compare-and-set just before the POST; a note found in `posting` by a later
attempt (a worker died mid-POST) is parked, never posted again; an ambiguous end of the POST
parks it; an answer that proves nothing was written lets it be retried or failed.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog

from shared.connections.model import Connection
from shared.halaxy.client import HalaxyClient, HalaxyNotFound
from shared.infra.audit import AuditTrail
from shared.infra.errors import Ambiguous, Permanent, StoreUnavailable, Transient
from shared.notes.callback import (
    ProgramCallback,
    author_for,
    document_reference,
    is_link_expired,
    note_body_parts,
)
from shared.notes.outbox import NoteOutbox, NoteState
from shared.notes.pdf_fetch import FetchedPdf, PdfFetcher, PdfNotThere

log = structlog.get_logger("halaxy_bridge.notes")

B64_CHUNK = 3 * 64 * 1024  # a multiple of 3: chunks encode without padding in between
PDF_MAKING = timedelta(minutes=30)  # how long a fresh link's missing file is "not made yet"
NO_CALLBACK = "the callback is no longer stored"
LINK_EXPIRED = "the PDF link expired (24 hours) before it was fetched"
# How long the move that records what became of a POST (back to `queued`: nothing was sent;
# `posted`: Halaxy answered 201) is tried while Redis fails over (the sentinels' down-after
# plus an election), and how often.
OUTCOME_MOVE_PATIENCE_SECONDS = 30.0
OUTCOME_MOVE_PAUSE_SECONDS = 0.5


def failed_for_its_link(reason: str) -> bool:
    """A failure a fresh PDF link can mend (the events poll asks Physitrack for one): the link
    expired, the file was gone, or the stored callback was."""
    return reason in (NO_CALLBACK, LINK_EXPIRED) or reason.startswith(PdfNotThere.PREFIX)


class NoteOutcome(StrEnum):
    POSTED = "posted"
    PARKED = "parked"
    FAILED = "failed"
    NOTHING_TO_DO = "nothing_to_do"  # already settled, or unknown


@dataclass(frozen=True)
class NoteResult:
    outcome: NoteOutcome
    reason: str = ""
    docref_id: str = ""


def write_note(
    *,
    connection: Connection,
    note_id: str,
    outbox: NoteOutbox,
    fetcher: PdfFetcher,
    halaxy: HalaxyClient,
    audit: AuditTrail,
    now: datetime,
) -> NoteResult:
    """Move one note forward; callers hold the note's lease (one worker per note)."""
    record = outbox.get(connection.id, note_id)
    if record is None or record.state in (NoteState.POSTED, NoteState.FAILED, NoteState.DROPPED):
        return NoteResult(NoteOutcome.NOTHING_TO_DO)
    if record.state is NoteState.PARKED:
        return NoteResult(NoteOutcome.NOTHING_TO_DO, record.reason)
    if record.state is NoteState.POSTING:
        return _park(
            outbox,
            connection,
            note_id,
            "an earlier attempt stopped while posting to Halaxy (worker died or timed out); "
            "check the patient's notes in Halaxy, then resolve",
            {NoteState.POSTING},
        )
    callback = outbox.callback(connection.id, note_id)
    if callback is None:
        return _fail(outbox, connection, note_id, NO_CALLBACK)
    if is_link_expired(callback, now):
        return _fail(outbox, connection, note_id, LINK_EXPIRED)
    outbox.move(connection.id, note_id, {NoteState.QUEUED, NoteState.FETCHING}, NoteState.FETCHING)
    outbox.add_attempt(connection.id, note_id)
    try:
        pdf = fetcher.fetch(
            callback.file_url, connection.allowed_pdf_hosts, connection.pdf_hosts is not None
        )
    except PdfNotThere as exc:
        if callback.link_made_at is not None and now - callback.link_made_at < PDF_MAKING:
            # A link the events poll just asked for: Physitrack answers 202 and may still be
            # making the file (therapy-platforms.md 2.3), so try again later.
            raise Transient("the program PDF is not there yet") from exc
        return _fail(outbox, connection, note_id, str(exc))
    except Permanent as exc:
        return _fail(outbox, connection, note_id, str(exc))
    try:
        return _post(connection, note_id, callback, pdf, outbox, halaxy, audit)
    except Permanent as exc:
        # Refused before the POST (the patient read, a revoked key): nothing was written.
        return _fail(outbox, connection, note_id, str(exc))
    finally:
        pdf.close()


def _post(
    connection: Connection,
    note_id: str,
    callback: ProgramCallback,
    pdf: FetchedPdf,
    outbox: NoteOutbox,
    halaxy: HalaxyClient,
    audit: AuditTrail,
) -> NoteResult:
    # The callback's patient_id is the external_id the bridge sent: the Halaxy id
    # (therapy-platforms.md 2.1). Never read it as a platform id: both are plain numbers, and
    # one patient's platform id can be another patient's Halaxy id.
    patient_id = callback.patient_id
    try:
        halaxy.read(f"Patient/{patient_id}")
    except HalaxyNotFound:
        return _fail(outbox, connection, note_id, f"Halaxy has no patient {patient_id}")
    note = document_reference(
        connection, patient_id, callback, author_for(connection, callback.token)
    )
    head, tail = note_body_parts(note)
    length = len(head) + 4 * ((pdf.size + 2) // 3) + len(tail)

    def body() -> Iterator[bytes]:
        pdf.file.seek(0)
        yield head
        while chunk := pdf.file.read(B64_CHUNK):
            yield base64.b64encode(chunk)
        yield tail

    moved, found = _mark_posting(outbox, connection, note_id)
    if not moved:
        return NoteResult(NoteOutcome.NOTHING_TO_DO, f"the note was {found} meanwhile")
    ids = f"note:{note_id} Patient/{patient_id}"
    try:
        created = halaxy.create("DocumentReference", body, length)
    except Ambiguous as exc:
        audit.record_write("halaxy.note_post", connection.id, ids, "ambiguous: parked")
        return _park(
            outbox,
            connection,
            note_id,
            f"{exc}; check the patient's notes in Halaxy",
            {NoteState.POSTING},
        )
    except Permanent as exc:
        audit.record_write("halaxy.note_post", connection.id, ids, f"refused: {type(exc).__name__}")
        return _fail(
            outbox, connection, note_id, f"Halaxy refused the note: {exc}", {NoteState.POSTING}
        )
    except Transient:
        # Nothing was written (refused connection, 429, or Redis failing the token or the rate
        # budget just before the POST): the note may be posted again later. In that last case
        # the move back meets the same failover, hence the patience of `_back_to_queued`.
        _back_to_queued(outbox, connection, note_id)
        raise
    docref_id = str(created.get("id") or "unknown")
    # Logged first, so the id survives whatever happens next.
    log.info(
        "note.created_in_halaxy", connection_id=connection.id, note_id=note_id, docref_id=docref_id
    )
    # A 201 proves the note exists: record it even if the note was parked meanwhile, and
    # through a failover (left `posting`, the retry would park a note that is there).
    moved, found = _move_through_failover(
        outbox,
        connection,
        note_id,
        {NoteState.POSTING, NoteState.PARKED},
        NoteState.POSTED,
        docref_id=docref_id,
    )
    audit.record_write("halaxy.note_posted", connection.id, f"{ids} DocumentReference/{docref_id}")
    if not moved:
        log.error(
            "note.posted_but_not_recorded",
            connection_id=connection.id,
            note_id=note_id,
            docref_id=docref_id,
            state=str(found),
        )
    return NoteResult(NoteOutcome.POSTED, docref_id=docref_id)


def _mark_posting(
    outbox: NoteOutbox, connection: Connection, note_id: str
) -> tuple[bool, NoteState | None]:
    """Take the note into `posting`, the mark that keeps it from being posted twice (an
    attempt that finds it parks the note); whether it moved, and the state it was found in.

    Redis replicates asynchronously: the mark must be on a replica before the POST, or a
    failover could promote one that still hands the note out. Not held in time
    (`NotReplicated`), or Redis gone before it answered (a failover under way: the mark may
    be on the replica being promoted all the same): nothing was posted, so the note goes
    back to `queued` and the job is retried (a Transient) to post it, not to park it."""
    try:
        moved, found = outbox.move(connection.id, note_id, {NoteState.FETCHING}, NoteState.POSTING)
        if moved:
            outbox.confirm_replicated()
    except StoreUnavailable:
        _back_to_queued(outbox, connection, note_id)
        raise
    return moved, found


def _back_to_queued(outbox: NoteOutbox, connection: Connection, note_id: str) -> None:
    """Move the note from `posting` back to `queued` (nothing was posted), through a
    failover. Should Redis stay away longer, the mark stays and a retry parks the note: safe,
    and for ops to resolve."""
    try:
        _move_through_failover(outbox, connection, note_id, {NoteState.POSTING}, NoteState.QUEUED)
    except StoreUnavailable:
        log.warning("note.left_posting", connection_id=connection.id, note_id=note_id)


def _move_through_failover(
    outbox: NoteOutbox,
    connection: Connection,
    note_id: str,
    allowed: set[NoteState],
    to: NoteState,
    **values: str,
) -> tuple[bool, NoteState | None]:
    """`outbox.move`, tried again while Redis fails over (for OUTCOME_MOVE_PATIENCE_SECONDS): the
    moves that say what became of a POST, which a retry could not learn again."""
    deadline = time.monotonic() + OUTCOME_MOVE_PATIENCE_SECONDS
    while True:
        try:
            return outbox.move(connection.id, note_id, allowed, to, **values)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(OUTCOME_MOVE_PAUSE_SECONDS)


def _park(
    outbox: NoteOutbox,
    connection: Connection,
    note_id: str,
    reason: str,
    allowed: set[NoteState],
) -> NoteResult:
    outbox.move(connection.id, note_id, allowed, NoteState.PARKED, reason=reason)
    return NoteResult(NoteOutcome.PARKED, reason)


def _fail(
    outbox: NoteOutbox,
    connection: Connection,
    note_id: str,
    reason: str,
    allowed: set[NoteState] | None = None,
) -> NoteResult:
    outbox.move(
        connection.id,
        note_id,
        allowed or {NoteState.QUEUED, NoteState.FETCHING},
        NoteState.FAILED,
        reason=reason,
    )
    return NoteResult(NoteOutcome.FAILED, reason)

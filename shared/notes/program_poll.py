"""No program lost: poll each practitioner's Physitrack events and write what the webhook missed.

Physitrack retries a failed PDF-webhook delivery once and cannot be asked again; missed events
are to be read from `GET /api/v2/events` (therapy-platforms.md 2.2). For each practitioner the
scheduler reads the events after its cursor (the highest event id seen), asks for each new or
updated program's PDF (`…/programs/{access_code}/exercises?format=pdf`: 202 and a URL, 2.3),
and records the note in the same outbox under the id the webhook's post of the same program
takes (`shared.notes.claims`), so a program that arrives both ways is one note.

Only programs of clients the bridge made are taken: the event's client must be the one the
bridge linked to that Halaxy patient in this practitioner's account. The events API lists every
client of the practitioner, and another system's `external_id` could name a different Halaxy
patient: a note in the wrong record is worse than none.

The events API pages oldest first: the recorded exchange (jzntam/physitrack_api,
get_all_events.yml) holds ids 2329-2529 on page 1 and 2530-2938 on page 2, with gaps (ids are
shared by all practitioners). So the cursor keeps the page its last event was on as well, and a
poll starts there (from page 1 again if that page no longer holds the cursor's event: events
purged, or another order), reads on while pages are full, and takes only ids above the cursor.
The cursor also keeps a floor, `not_before`: no program older than that is taken, however many
polls a long history takes to read. A practitioner's first floor is when they were added, or
the oldest post kept for their token before that (`shared.notes.unrouted`), whichever is
earlier: programs before it went to Halaxy another way, or never were the bridge's. The cursor
moves only after every event up to it is recorded; an event Physitrack refuses (a program
deleted since) is counted and passed over, so one cannot stop a practitioner's poll for good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import redis

from shared.connections.model import Connection
from shared.connections.practitioner import Practitioner
from shared.halaxy.fhir import is_resource_id
from shared.infra.codec import RecordCodec
from shared.infra.errors import InvalidInput, Permanent
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import ProgramCallback, parse_callback
from shared.notes.pdf_fetch import PdfRefused, check_listed
from shared.platforms import EventsPage, ProgramEvent

MAX_PAGES = 25  # 5,000 events a poll; a longer backlog is read on by the next polls
# Physitrack's clock and ours, and its whole seconds against our microseconds: the floor is
# set this much earlier, so a program assigned just as its practitioner is added is taken.
CLOCKS_APART = timedelta(minutes=5)
POLLED = "events-api"  # what stands in a polled program's `api_key`: no post carried one


@dataclass(frozen=True)
class PollCursor:
    last_event_id: int
    polled_at: datetime
    page: int = 1  # the page the poll goes on from
    not_before: datetime | None = None  # no program older than this is taken

    def waited(self, now: datetime) -> PollCursor:
        """The cursor unmoved, but polled at `now`: a poll that failed waits its interval."""
        return PollCursor(self.last_event_id, now, self.page, self.not_before)


CURSOR = RecordCodec(PollCursor)


class PollCursors:
    """Each practitioner's cursor: one Redis hash per connection, PR- id -> cursor."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    def get(self, connection_id: str, practitioner: str) -> PollCursor | None:
        with translate_redis_errors():
            raw = self._redis.hget(self._keys.program_poll_cursors(connection_id), practitioner)
        return None if raw is None else CURSOR.decode(as_bytes(raw))

    def save(self, connection_id: str, practitioner: str, cursor: PollCursor) -> None:
        with translate_redis_errors():
            self._redis.hset(
                self._keys.program_poll_cursors(connection_id), practitioner, CURSOR.encode(cursor)
            )


class ProgramEvents(Protocol):
    """What the poll needs of a practitioner's Physitrack account (`Physitrack` has it)."""

    def events_page(self, page: int) -> EventsPage: ...

    def client_external_id(self, client_id: str) -> str | None: ...

    def program_pdf_url(self, client_id: str, access_code: str) -> str: ...


@dataclass
class PollResult:
    queued: int = 0
    duplicates: int = 0
    revived: int = 0
    skipped_type: int = 0
    skipped_client: int = 0
    invalid: int = 0
    refused: int = 0
    pages: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "duplicate": self.duplicates,
            "revived": self.revived,
            "skipped_type": self.skipped_type,
            "skipped_client": self.skipped_client,
            "invalid": self.invalid,
            "refused": self.refused,
        }


class Taken(StrEnum):
    QUEUED = "queued"  # a new note, recorded and queued
    REVIVED = "revived"  # a note that had failed for its PDF link, queued again with this one
    DUPLICATE = "duplicate"  # recorded meanwhile (the webhook's post, say)


@dataclass(frozen=True)
class PollHooks:
    """What the poll does with what it finds (the scheduler's outbox, claims and links)."""

    note_id: Callable[[str, ProgramEvent], str]  # patient id, event: the program's note id
    known: Callable[[str], bool]  # note id: recorded already (and needs nothing)
    # note id, callback: record and queue it (or queue again a note that failed for its link)
    accept: Callable[[str, ProgramCallback], Taken]
    # patient id, Physitrack client id: the bridge made this client for this patient
    owns: Callable[[str, str], bool]


def poll_practitioner(
    source: ProgramEvents,
    connection: Connection,
    practitioner: Practitioner,
    cursor: PollCursor | None,
    now: datetime,
    hooks: PollHooks,
    first_floor: datetime | None = None,
) -> tuple[PollResult, PollCursor]:
    """Record a note for each program event after `cursor`; the result and the new cursor.
    `first_floor`: the floor of a practitioner polled for the first time (default: when
    they were added)."""
    floor = cursor.not_before if cursor is not None else None
    if cursor is None:
        floor = (first_floor or practitioner.added_at) - CLOCKS_APART
    result = PollResult()
    events, highest, page = _new_events(source, cursor, floor, result)
    for event in sorted(events, key=lambda e: e.event_id):
        try:
            _take(source, connection, practitioner, event, now, hooks, result)
        except Permanent:
            result.refused += 1  # a program deleted since, say: counted, passed over
    last = max(highest or 0, cursor.last_event_id if cursor else 0)
    return result, PollCursor(last, now, page, floor)


def _take(
    source: ProgramEvents,
    connection: Connection,
    practitioner: Practitioner,
    event: ProgramEvent,
    now: datetime,
    hooks: PollHooks,
    result: PollResult,
) -> None:
    patient_id = source.client_external_id(event.client_id)
    if patient_id is None or not is_resource_id(patient_id):
        result.skipped_client += 1
        return
    if not hooks.owns(patient_id, event.client_id):
        result.skipped_client += 1  # a client the bridge did not make for this patient
        return
    note_id = hooks.note_id(patient_id, event)
    if hooks.known(note_id):
        result.duplicates += 1
        return
    try:
        file_url = source.program_pdf_url(event.client_id, event.access_code)
        check_listed(file_url, connection.allowed_pdf_hosts, connection.pdf_hosts is not None)
        callback = parse_callback(
            {
                "api_key": POLLED,
                "token": practitioner.token.get_secret_value(),
                "patient_id": patient_id,
                "file_url": file_url,
                "name": event.program_name,
                "date": event.created.date(),
                "date_iso": event.created,
                "updated": event.updated,
                "link_made_at": now,
            }
        )
    except (InvalidInput, PdfRefused):
        result.invalid += 1
        return
    taken = hooks.accept(note_id, callback)
    if taken is Taken.REVIVED:
        result.revived += 1
    elif taken is Taken.DUPLICATE:
        result.duplicates += 1
    else:
        result.queued += 1


def _new_events(
    source: ProgramEvents, cursor: PollCursor | None, floor: datetime | None, result: PollResult
) -> tuple[list[ProgramEvent], int | None, int]:
    """The program events after the cursor and not older than `floor`, the highest event id
    seen, and the page to go on from next time."""
    first = cursor.page if cursor is not None else 1
    found, highest, number, restart = _read_pages(source, cursor, floor, first, result)
    if restart:  # the cursor's page no longer holds its event: read from the start
        found, highest, number, _ = _read_pages(source, cursor, floor, 1, result)
    return found, highest, number


def _read_pages(
    source: ProgramEvents,
    cursor: PollCursor | None,
    floor: datetime | None,
    first: int,
    result: PollResult,
) -> tuple[list[ProgramEvent], int | None, int, bool]:
    found: list[ProgramEvent] = []
    highest: int | None = None
    number = first
    for number in range(first, first + MAX_PAGES):
        page = source.events_page(number)
        result.pages += 1
        if number == first > 1 and cursor is not None and not _holds(page, cursor):
            return [], None, 1, True
        if page.highest_id is not None:
            highest = max(highest or 0, page.highest_id)
        if cursor is None or (page.highest_id or 0) > cursor.last_event_id:
            # Other types are counted on the page that first shows them (a close guess: a
            # page read again may hold some seen before).
            result.skipped_type += page.skipped
        for event in page.events:
            if cursor is not None and event.event_id <= cursor.last_event_id:
                continue
            if floor is not None and event.created < floor:
                continue
            found.append(event)
        if not page.full:
            break
    # The next poll starts on the last page read: it holds the cursor's event (or, at the end
    # of the events, where the next ones will be).
    return found, highest, number, False


def _holds(page: EventsPage, cursor: PollCursor) -> bool:
    """The page still reaches back to the cursor's event (pages run oldest first)."""
    return page.lowest_id is not None and page.lowest_id <= cursor.last_event_id

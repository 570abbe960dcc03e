"""No program lost: poll each practitioner's Physitrack events and write what the webhook missed.

Physitrack retries a failed PDF-webhook delivery once and cannot be asked again; missed events
are to be read from `GET /api/v2/events` (therapy-platforms.md 2.2). For each practitioner the
scheduler reads the events after its cursor (the highest event id seen), asks for each new or
updated program's PDF (`…/programs/{access_code}/exercises?format=pdf`: 202 and a URL, 2.3),
and records the note in the same outbox under the same id the webhook would give it
(`program_note_id`), so a program that arrives both ways is one note.

The events API pages oldest first: the recorded exchange (jzntam/physitrack_api,
get_all_events.yml) holds ids 2329-2529 on page 1 and 2530-2938 on page 2, with gaps (ids are
shared by all practitioners). So the cursor keeps the page its last event was on as well, and a
poll starts there, reads on while pages are full, and takes only ids above the cursor. A
practitioner polled for the first time reads to the end and takes the events of the last
`FIRST_LOOK_BACK` (the life of a webhook's link: anything older the webhook could not have
delivered either), not all history. The cursor moves only after every event up to it is
recorded: a poll that fails halfway reads the same events again, and the outbox drops what it
has already.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import redis

from shared.connections.model import Connection
from shared.connections.practitioner import Practitioner
from shared.halaxy.fhir import is_resource_id
from shared.infra.codec import RecordCodec
from shared.infra.errors import InvalidInput
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import (
    FILE_URL_LIFETIME,
    ProgramCallback,
    parse_callback,
    program_note_id,
)
from shared.platforms import EventsPage, ProgramEvent

FIRST_LOOK_BACK = FILE_URL_LIFETIME
MAX_PAGES = 25  # 5,000 events a poll; a longer backlog is read on by the next polls
POLLED = "events-api"  # what stands in a polled program's `api_key`: no post carried one


@dataclass(frozen=True)
class PollCursor:
    last_event_id: int
    polled_at: datetime
    page: int = 1  # the page the poll goes on from


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
    skipped_type: int = 0
    skipped_client: int = 0
    invalid: int = 0
    pages: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "duplicate": self.duplicates,
            "skipped_type": self.skipped_type,
            "skipped_client": self.skipped_client,
            "invalid": self.invalid,
        }


Accept = Callable[[str, ProgramCallback], object]  # note id, callback: record and queue it
Known = Callable[[str], bool]  # note id: recorded already


def poll_practitioner(
    source: ProgramEvents,
    connection: Connection,
    practitioner: Practitioner,
    cursor: PollCursor | None,
    now: datetime,
    accept: Accept,
    known: Known,
) -> tuple[PollResult, PollCursor]:
    """Record a note for each program event after `cursor`; the result and the new cursor."""
    result = PollResult()
    events, highest, page = _new_events(source, cursor, now, result)
    external_ids: dict[str, str | None] = {}
    for event in sorted(events, key=lambda e: e.event_id):
        if event.client_id not in external_ids:
            external_ids[event.client_id] = source.client_external_id(event.client_id)
        patient_id = external_ids[event.client_id]
        if patient_id is None or not is_resource_id(patient_id):
            result.skipped_client += 1  # not a client the bridge made from a Halaxy patient
            continue
        note_id = program_note_id(
            connection.id,
            practitioner.halaxy_practitioner,
            patient_id,
            event.program_name,
            event.created,
            event.updated,
        )
        if known(note_id):
            result.duplicates += 1
            continue
        try:
            callback = parse_callback(
                {
                    "api_key": POLLED,
                    "token": practitioner.token.get_secret_value(),
                    "patient_id": patient_id,
                    "file_url": source.program_pdf_url(event.client_id, event.access_code),
                    "name": event.program_name,
                    "date": event.created.date(),
                    "date_iso": event.created,
                    "updated": event.updated,
                    "link_made_at": now,
                }
            )
        except InvalidInput:
            result.invalid += 1
            continue
        accept(note_id, callback)
        result.queued += 1
    last = max(highest or 0, cursor.last_event_id if cursor else 0)
    return result, PollCursor(last, now, page)


def _new_events(
    source: ProgramEvents, cursor: PollCursor | None, now: datetime, result: PollResult
) -> tuple[list[ProgramEvent], int | None, int]:
    """The program events after the cursor (the first time: of the last `FIRST_LOOK_BACK`),
    the highest event id seen, and the page to go on from next time."""
    since = now - FIRST_LOOK_BACK
    found: list[ProgramEvent] = []
    highest: int | None = None
    first = cursor.page if cursor is not None else 1
    number = first
    for number in range(first, first + MAX_PAGES):
        page = source.events_page(number)
        result.pages += 1
        if page.highest_id is not None:
            highest = max(highest or 0, page.highest_id)
        if cursor is None or (page.highest_id or 0) > cursor.last_event_id:
            # Other types are counted on the page that first shows them (a close guess: a
            # page read again may hold some seen before).
            result.skipped_type += page.skipped
        for event in page.events:
            if cursor is not None and event.event_id <= cursor.last_event_id:
                continue
            if cursor is None and event.created < since:
                continue
            found.append(event)
        if not page.full:
            break
    else:
        number += 1  # stopped at the limit on a full page: the next poll reads on after it
    return found, highest, number

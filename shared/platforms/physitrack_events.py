"""Physitrack's events API read as program events: what the bridge polls so that a program
whose callback never came still becomes a note (therapy-platforms.md 2.2). Pure.

`GET /api/v2/events?page=N` answers `{"events": [...]}`, 200 to a full page. An item is
`{"id", "type", "created", "data", "practitioner_id", "url"}`; for the two program types
`data` is the program and `url` is `/api/v2/clients/{client_id}/programs/{access_code}`. The
2018 recording lists page 1 oldest first (ids ascending, with gaps: ids are shared by every
practitioner), so a page says which ids it holds and whether it was full, and the caller
decides where to read next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROGRAM_KINDS = frozenset({"new_program_assigned", "program_updated"})
PAGE_SIZE = 200  # the Ruby client asks for the next page when one holds 200 events
DEFAULT_PROGRAM_NAME = "Home program"
MAX_NAME = 300  # as the program callback allows
PROGRAM_URL = re.compile(r"/clients/([0-9]{1,18})/programs/([A-Za-z0-9_-]{1,64})/?\Z")


@dataclass(frozen=True)
class ProgramEvent:
    """A program assigned or updated, as the events API tells it."""

    event_id: int
    kind: str
    created: datetime
    client_id: str
    access_code: str
    program_name: str
    updated: bool


@dataclass(frozen=True)
class EventsPage:
    """One page of a practitioner's events: the program events on it, how many other items it
    held (other types, unknown types, malformed), and the span of ids it held."""

    events: list[ProgramEvent]
    skipped: int
    highest_id: int | None
    lowest_id: int | None
    full: bool


def parse_events_page(body: Any) -> EventsPage | None:
    """The page in `{"events": [...]}` or a bare list; None when the body is neither."""
    items = body.get("events") if isinstance(body, dict) else body
    if not isinstance(items, list):
        return None
    events = [event for event in map(parse_event, items) if event is not None]
    ids = [i for i in map(_event_id, items) if i is not None]
    return EventsPage(
        events=events,
        skipped=len(items) - len(events),
        highest_id=max(ids, default=None),
        lowest_id=min(ids, default=None),
        full=len(items) >= PAGE_SIZE,
    )


def parse_event(item: Any) -> ProgramEvent | None:
    """The program event in `item`; None for another type or anything malformed."""
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(kind, str) or kind not in PROGRAM_KINDS:
        return None
    event_id = _event_id(item)
    created = _created(item.get("created"))
    url = item.get("url")
    where = PROGRAM_URL.search(url) if isinstance(url, str) else None
    if event_id is None or created is None or where is None:
        return None
    data = item.get("data")
    return ProgramEvent(
        event_id=event_id,
        kind=kind,
        created=created,
        client_id=where.group(1),
        access_code=where.group(2),
        program_name=program_name(data.get("name") if isinstance(data, dict) else None),
        updated=kind == "program_updated",
    )


def program_name(value: Any) -> str:
    """The name as the program callback reads it (white space folded), so a program that
    arrives both ways is named alike; the default where it has none that reads as text."""
    if not isinstance(value, str):
        return DEFAULT_PROGRAM_NAME
    name = " ".join(value.split())
    if not name or not name.isprintable():
        return DEFAULT_PROGRAM_NAME
    return name[:MAX_NAME]


def _event_id(item: Any) -> int | None:
    value = item.get("id") if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _created(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return None  # Physitrack writes UTC with a Z; without a zone it is no instant
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment if 2000 <= moment.year <= 2100 else None  # as the program callback allows

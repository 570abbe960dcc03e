"""The events poll on its own (shared/notes/program_poll.py): which events become notes, where
the cursor goes, and that nothing is lost when a poll fails halfway. A stand-in event source
serves pages as the recording shows them: oldest first, 200 to a full page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.connections.model import Connection
from shared.connections.practitioner import Practitioner
from shared.infra.clock import utcnow
from shared.infra.errors import Transient
from shared.notes.callback import ProgramCallback, program_note_id
from shared.notes.program_poll import FIRST_LOOK_BACK, PollCursor, poll_practitioner
from shared.platforms import EventsPage
from shared.platforms.physitrack_events import PAGE_SIZE, parse_events_page
from tests.strategies import json_values


@dataclass
class Source:
    items: list[Any]
    externals: dict[str, str | None] = field(default_factory=dict)
    fail_pdf_for: set[str] = field(default_factory=set)
    pages_read: list[int] = field(default_factory=list)

    def events_page(self, page: int) -> EventsPage:
        self.pages_read.append(page)
        parsed = parse_events_page(self.items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])
        assert parsed is not None
        return parsed

    def client_external_id(self, client_id: str) -> str | None:
        return self.externals.get(client_id, f"h{client_id}")

    def program_pdf_url(self, client_id: str, access_code: str) -> str:
        if access_code in self.fail_pdf_for:
            raise Transient("Physitrack answered 503")
        return f"https://physitrackuploads.s3.amazonaws.com/pdfs/{access_code}.pdf"


def program(
    event_id: int, created: datetime, client: str = "7961", kind: str = "new_program_assigned"
) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": kind,
        "created": created.isoformat().replace("+00:00", "Z"),
        "data": {"name": f"Program {event_id}", "access_code": f"code{event_id}"},
        "practitioner_id": 7960,
        "url": f"/api/v2/clients/{client}/programs/code{event_id}",
    }


@pytest.fixture
def practitioner() -> Practitioner:
    return Practitioner(
        halaxy_practitioner="PR-1",
        token=SecretStr("practitioner-token-1"),
        api_key=SecretStr("key"),
        added_at=utcnow(),
    )


@pytest.fixture
def connection(practitioner: Practitioner) -> Connection:
    now = utcnow()
    return Connection(
        id="cn_test",
        name="Clinic",
        created_at=now,
        updated_at=now,
        halaxy_base_url="https://au-api.halaxy.com/main",
        halaxy_client_id="id",
        halaxy_client_secret=SecretStr("secret"),
        platform="physitrack",  # type: ignore[arg-type]
        platform_base_url="https://au.physitrack.com/api/v2",
        platform_api_key=SecretStr("key"),
        webhook_secret=SecretStr("w"),
        program_api_key=SecretStr("p"),
        physitrack_practitioners=(practitioner,),
    )


class Recorder:
    def __init__(self) -> None:
        self.notes: dict[str, ProgramCallback] = {}

    def accept(self, note_id: str, callback: ProgramCallback) -> None:
        self.notes.setdefault(note_id, callback)

    def known(self, note_id: str) -> bool:
        return note_id in self.notes


def test_the_first_poll_takes_the_last_day_and_skips_what_is_not_a_program(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [
        program(1, now - FIRST_LOOK_BACK - timedelta(minutes=1)),  # older than any live link
        {"id": 2, "type": "new_client_created", "created": now.isoformat(), "data": {}},
        {"id": 3, "type": "some_future_type"},
        "not an event",
        program(4, now - timedelta(hours=1)),
        program(5, now - timedelta(minutes=1), kind="program_updated"),
    ]
    recorder = Recorder()
    result, cursor = poll_practitioner(
        Source(items), connection, practitioner, None, now, recorder.accept, recorder.known
    )
    assert [c.name for c in recorder.notes.values()] == ["Program 4", "Program 5"]
    assert [c.updated for c in recorder.notes.values()] == [False, True]
    assert result.counts() == {
        "queued": 2,
        "duplicate": 0,
        "skipped_type": 3,
        "skipped_client": 0,
        "invalid": 0,
    }
    assert cursor == PollCursor(last_event_id=5, polled_at=now, page=1)
    callback = recorder.notes[next(iter(recorder.notes))]
    assert callback.patient_id == "h7961"
    assert callback.token == "practitioner-token-1"
    assert callback.link_made_at == now  # its 24 hours count from the poll


def test_a_later_poll_goes_on_after_the_cursor_across_pages(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(1, 451)]
    recorder = Recorder()
    cursor = PollCursor(last_event_id=380, polled_at=now - timedelta(minutes=5), page=2)
    source = Source(items)
    result, moved = poll_practitioner(
        source, connection, practitioner, cursor, now, recorder.accept, recorder.known
    )
    assert source.pages_read == [2, 3]
    assert [c.name for c in recorder.notes.values()] == [f"Program {i}" for i in range(381, 451)]
    assert moved == PollCursor(last_event_id=450, polled_at=now, page=3)
    assert result.queued == 70


def test_a_poll_that_fails_halfway_keeps_its_cursor_and_the_next_writes_each_once(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(1, 6)]
    recorder = Recorder()
    cursor = PollCursor(last_event_id=0, polled_at=now, page=1)
    failing = Source(items, fail_pdf_for={"code4"})
    with pytest.raises(Transient):
        poll_practitioner(
            failing, connection, practitioner, cursor, now, recorder.accept, recorder.known
        )
    assert len(recorder.notes) == 3  # recorded before the failure; the cursor was not moved
    result, moved = poll_practitioner(
        Source(items), connection, practitioner, cursor, now, recorder.accept, recorder.known
    )
    assert (result.queued, result.duplicates) == (2, 3)
    assert len(recorder.notes) == 5
    assert moved.last_event_id == 5


def test_a_client_the_bridge_did_not_create_is_skipped_and_counted(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(1, now, client="11"), program(2, now, client="12")]
    recorder = Recorder()
    source = Source(items, externals={"11": None, "12": "not a/halaxy id"})
    result, _ = poll_practitioner(
        source, connection, practitioner, None, now, recorder.accept, recorder.known
    )
    assert result.skipped_client == 2
    assert recorder.notes == {}


def test_a_polled_program_has_the_note_id_its_callback_would_have(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow().replace(microsecond=0)
    recorder = Recorder()
    poll_practitioner(
        Source([program(1, now)]),
        connection,
        practitioner,
        None,
        now,
        recorder.accept,
        recorder.known,
    )
    assert list(recorder.notes) == [
        program_note_id(connection.id, "PR-1", "h7961", "Program 1", now, updated=False)
    ]


@given(items=st.lists(json_values, max_size=30))
def test_any_events_page_is_read_without_raising(items: list[Any]) -> None:
    practitioner = Practitioner(
        halaxy_practitioner="PR-1",
        token=SecretStr("t" * 12),
        api_key=SecretStr("k"),
        added_at=utcnow(),
    )
    now = utcnow()
    connection = Connection.model_construct(id="cn_x")
    recorder = Recorder()
    result, cursor = poll_practitioner(
        Source(items), connection, practitioner, None, now, recorder.accept, recorder.known
    )
    assert result.queued + result.skipped_type + result.skipped_client + result.invalid >= len(
        recorder.notes
    )
    assert cursor.last_event_id >= 0

"""The events poll on its own (shared/notes/program_poll.py): which events become notes, where
the cursor goes, and that nothing is lost or written twice when a poll fails, when history is
long, or when an event names a client the bridge did not make. A stand-in event source serves
pages as the recording shows them: oldest first, 200 to a full page."""

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
from shared.infra.errors import Permanent, Transient
from shared.notes.callback import ProgramCallback, program_note_id
from shared.notes.program_poll import (
    CLOCKS_APART,
    MAX_PAGES,
    PollCursor,
    PollHooks,
    PollResult,
    Taken,
    poll_practitioner,
)
from shared.platforms import EventsPage, ProgramEvent
from shared.platforms.physitrack_events import PAGE_SIZE, parse_events_page
from tests.strategies import json_values


@dataclass
class Source:
    items: list[Any]
    externals: dict[str, str | None] = field(default_factory=dict)
    refuse_pdf_for: dict[str, Exception] = field(default_factory=dict)
    pages_read: list[int] = field(default_factory=list)

    def events_page(self, page: int) -> EventsPage:
        self.pages_read.append(page)
        parsed = parse_events_page(self.items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])
        assert parsed is not None
        return parsed

    def client_external_id(self, client_id: str) -> str | None:
        return self.externals.get(client_id, f"h{client_id}")

    def program_pdf_url(self, client_id: str, access_code: str) -> str:
        if access_code in self.refuse_pdf_for:
            raise self.refuse_pdf_for[access_code]
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


ADDED = utcnow() - timedelta(days=2)


@pytest.fixture
def practitioner() -> Practitioner:
    return Practitioner(
        halaxy_practitioner="PR-1",
        token=SecretStr("practitioner-token-1"),
        api_key=SecretStr("key"),
        added_at=ADDED,
    )


@pytest.fixture
def connection(practitioner: Practitioner) -> Connection:
    return clinic(practitioner)


def clinic(practitioner: Practitioner) -> Connection:
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
    """The scheduler's side, in memory: note ids as the claims give a first arrival, the
    outbox as a dict, and links saying the bridge made client N for patient hN."""

    def __init__(self, not_ours: set[str] | None = None) -> None:
        self.notes: dict[str, ProgramCallback] = {}
        self.not_ours = not_ours or set()

    def hooks(self, connection: Connection) -> PollHooks:
        def note_id(patient_id: str, event: ProgramEvent) -> str:
            return program_note_id(
                connection.id, "PR-1", patient_id, event.program_name, event.created, event.updated
            )

        return PollHooks(
            note_id=note_id,
            known=self.notes.__contains__,
            accept=self.accept,
            owns=lambda patient_id, client_id: (
                patient_id == f"h{client_id}" and client_id not in self.not_ours
            ),
        )

    def accept(self, note_id: str, callback: ProgramCallback) -> Taken:
        if note_id in self.notes:
            return Taken.DUPLICATE
        self.notes[note_id] = callback
        return Taken.QUEUED


def poll(
    source: Source,
    connection: Connection,
    practitioner: Practitioner,
    cursor: PollCursor | None,
    now: datetime,
    recorder: Recorder,
) -> tuple[PollResult, PollCursor]:
    return poll_practitioner(
        source, connection, practitioner, cursor, now, recorder.hooks(connection)
    )


def test_the_first_poll_starts_when_the_practitioner_was_added_and_skips_other_types(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [
        program(1, ADDED - timedelta(minutes=6)),  # before the bridge knew the practitioner
        {"id": 2, "type": "new_client_created", "created": now.isoformat(), "data": {}},
        {"id": 3, "type": "some_future_type"},
        "not an event",
        program(4, now - timedelta(hours=1)),
        program(5, now - timedelta(minutes=1), kind="program_updated"),
    ]
    recorder = Recorder()
    result, cursor = poll(Source(items), connection, practitioner, None, now, recorder)
    assert [c.name for c in recorder.notes.values()] == ["Program 4", "Program 5"]
    assert [c.updated for c in recorder.notes.values()] == [False, True]
    assert result.counts() == {
        "queued": 2,
        "duplicate": 0,
        "revived": 0,
        "skipped_type": 3,
        "skipped_client": 0,
        "invalid": 0,
        "refused": 0,
    }
    floor = ADDED - CLOCKS_APART
    assert cursor == PollCursor(last_event_id=5, polled_at=now, page=1, not_before=floor)
    callback = next(iter(recorder.notes.values()))
    assert callback.patient_id == "h7961"
    assert callback.token == "practitioner-token-1"
    assert callback.link_made_at == now  # its 24 hours count from the poll


def test_a_later_poll_goes_on_after_the_cursor_across_pages(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(1, 451)]
    recorder = Recorder()
    cursor = PollCursor(380, now - timedelta(minutes=5), 2, ADDED)
    source = Source(items)
    result, moved = poll(source, connection, practitioner, cursor, now, recorder)
    assert source.pages_read == [2, 3]
    assert [c.name for c in recorder.notes.values()] == [f"Program {i}" for i in range(381, 451)]
    assert moved == PollCursor(450, now, 3, ADDED)
    assert result.queued == 70


def test_a_long_history_read_over_several_polls_never_takes_programs_before_the_floor(
    connection: Connection, practitioner: Practitioner
) -> None:
    """More pages than one poll reads: the second poll has a cursor, and the floor still
    keeps a year-old program out (it would be written as new)."""
    now = utcnow()
    old = [program(i, now - timedelta(days=400)) for i in range(1, PAGE_SIZE * MAX_PAGES + 51)]
    recent = program(PAGE_SIZE * MAX_PAGES + 51, now - timedelta(minutes=5))
    source = Source([*old, recent])
    recorder = Recorder()
    first, cursor = poll(source, connection, practitioner, None, now, recorder)
    assert (first.queued, cursor.page) == (0, MAX_PAGES)
    second, _ = poll(source, connection, practitioner, cursor, now, recorder)
    assert second.queued == 1
    assert [c.name for c in recorder.notes.values()] == [f"Program {PAGE_SIZE * MAX_PAGES + 51}"]


def test_a_cursor_page_that_no_longer_holds_its_event_is_read_again_from_page_one(
    connection: Connection, practitioner: Practitioner
) -> None:
    """Old events purged (or pages in another order): the saved page would skip new ones."""
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(300, 320)]
    source = Source(items)
    recorder = Recorder()
    cursor = PollCursor(305, now - timedelta(minutes=5), 3, ADDED)
    result, moved = poll(source, connection, practitioner, cursor, now, recorder)
    assert source.pages_read == [3, 1]
    assert result.queued == 14
    assert (moved.last_event_id, moved.page) == (319, 1)


def test_a_program_physitrack_refuses_is_counted_and_passed_over(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(1, 4)]
    source = Source(items, refuse_pdf_for={"code2": Permanent("Program ... does not exist")})
    recorder = Recorder()
    result, moved = poll(source, connection, practitioner, None, now, recorder)
    assert (result.queued, result.refused) == (2, 1)
    assert moved.last_event_id == 3  # one bad event never stops the practitioner's poll


def test_a_poll_that_fails_halfway_keeps_its_cursor_and_the_next_writes_each_once(
    connection: Connection, practitioner: Practitioner
) -> None:
    now = utcnow()
    items = [program(i, now - timedelta(minutes=10)) for i in range(1, 6)]
    recorder = Recorder()
    cursor = PollCursor(0, now, 1, ADDED)
    failing = Source(items, refuse_pdf_for={"code4": Transient("Physitrack answered 503")})
    with pytest.raises(Transient):
        poll(failing, connection, practitioner, cursor, now, recorder)
    assert len(recorder.notes) == 3  # recorded before the failure; the cursor was not moved
    result, moved = poll(Source(items), connection, practitioner, cursor, now, recorder)
    assert (result.queued, result.duplicates) == (2, 3)
    assert len(recorder.notes) == 5
    assert moved.last_event_id == 5


def test_a_client_the_bridge_did_not_make_for_that_patient_is_skipped(
    connection: Connection, practitioner: Practitioner
) -> None:
    """Another system's external id could name a different Halaxy patient: no note in the
    wrong record. Only a client the bridge linked to the patient counts."""
    now = utcnow()
    items = [program(1, now, client="11"), program(2, now, client="12"), program(3, now, "13")]
    recorder = Recorder(not_ours={"13"})
    source = Source(items, externals={"11": None, "12": "not a/halaxy id", "13": "4242"})
    result, _ = poll(source, connection, practitioner, None, now, recorder)
    assert result.skipped_client == 3
    assert recorder.notes == {}


def test_a_pdf_link_on_a_host_the_connection_does_not_allow_is_not_recorded(
    connection: Connection, practitioner: Practitioner
) -> None:
    listed = connection.model_copy(update={"pdf_hosts": ("pdfs.example.com",)})
    now = utcnow()
    recorder = Recorder()
    result, _ = poll(Source([program(1, now)]), listed, practitioner, None, now, recorder)
    assert (result.invalid, result.queued) == (1, 0)


@given(items=st.lists(json_values, max_size=30))
def test_any_events_page_is_read_without_raising(items: list[Any]) -> None:
    practitioner = Practitioner(
        halaxy_practitioner="PR-1",
        token=SecretStr("t" * 12),
        api_key=SecretStr("k"),
        added_at=ADDED,
    )
    now = utcnow()
    connection = clinic(practitioner)
    recorder = Recorder()
    result, cursor = poll(Source(items), connection, practitioner, None, now, recorder)
    assert result.queued == len(recorder.notes)
    assert cursor.last_event_id >= 0

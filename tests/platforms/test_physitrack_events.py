"""Physitrack event items read as program events: the recorded shape, and anything else."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.platforms import EventsPage, ProgramEvent, parse_event
from shared.platforms.physitrack_events import PAGE_SIZE, parse_events_page
from tests.strategies import json_values

# Event 2330 as recorded in 2018 (therapy-platforms.md 2.2; jzntam/physitrack_api,
# spec/cassettes/physitrack/get_all_events.yml).
RECORDED: dict[str, Any] = {
    "id": 2330,
    "type": "new_program_assigned",
    "created": "2018-06-12T22:20:08Z",
    "data": {
        "id": 7530,
        "external_id": None,
        "template_id": 1180,
        "author": "Gary Roberts",
        "author_email": "jason@janeapp.com",
        "name": "Total body circuit",
        "access_code": "jccnkbas",
        "start_date": "2018-06-12T00:00:00Z",
        "end_date": "2018-07-09T00:00:00Z",
        "track_adherence": True,
        "track_pain_levels": True,
        "access_code_sent_date": None,
        "access_code_sent_via": None,
        "last_access_date": None,
        "avg_adherence": None,
    },
    "practitioner_id": 7960,
    "url": "/api/v2/clients/7961/programs/jccnkbas",
}


def item(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(RECORDED), **changes}


def test_the_recorded_program_event() -> None:
    assert parse_event(RECORDED) == ProgramEvent(
        event_id=2330,
        kind="new_program_assigned",
        created=datetime(2018, 6, 12, 22, 20, 8, tzinfo=UTC),
        client_id="7961",
        access_code="jccnkbas",
        program_name="Total body circuit",
        updated=False,
    )
    update = parse_event(item(type="program_updated", created="2018-06-14T16:23:02+10:00"))
    assert update == ProgramEvent(
        2330,
        "program_updated",
        datetime(2018, 6, 14, 6, 23, 2, tzinfo=UTC),
        "7961",
        "jccnkbas",
        "Total body circuit",
        updated=True,
    )


@pytest.mark.parametrize(
    "other",
    [
        item(type="new_client_created", url="/api/v2/clients/7961"),
        item(type="program_ended"),  # a program url, but not a program to write back
        item(type="program_accessed"),
        item(type="new_message", url="/api/v2/clients/8205/messages/15331"),
        item(type="something_new"),
        item(id=True),
        item(id="2330"),
        item(id=0),
        item(created="2018-06-12T22:20:08"),  # no zone
        item(created="1999-12-31T23:59:59Z"),
        item(created="yesterday"),
        item(url="/api/v2/clients/7961/programs/../../x"),
        item(url="/api/v2/clients/seven/programs/jccnkbas"),
        item(url="/api/v2/clients/7961/programs/jccnkbas?format=pdf"),
        item(url=None),
        {"type": "new_program_assigned"},
        ["new_program_assigned"],
    ],
)
def test_what_is_not_a_program_event(other: Any) -> None:
    assert parse_event(other) is None


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("  Knee\n rehab\tphase 2 ", "Knee rehab phase 2"),  # as the callback folds it
        (None, "Home program"),
        ("", "Home program"),
        ("bad\x00name", "Home program"),
        (42, "Home program"),
        ("x" * 400, "x" * 300),
    ],
)
def test_the_program_name(name: Any, read: str) -> None:
    event = parse_event(item(data={**RECORDED["data"], "name": name}))
    assert event is not None
    assert event.program_name == read
    assert parse_event(item(data="not a program")) is not None


def test_a_page_counts_what_it_skips_and_spans_every_id() -> None:
    items = [
        item(id=2329, type="new_client_created", url="/api/v2/clients/7961"),
        RECORDED,
        item(id=2331, type="program_updated"),
        {"id": 2340, "type": "mystery"},
        "not an event",
    ]
    page = parse_events_page({"events": items})
    assert page is not None
    assert [e.event_id for e in page.events] == [2330, 2331]
    assert (page.skipped, page.lowest_id, page.highest_id, page.full) == (3, 2329, 2340, False)
    assert parse_events_page(items) == page  # a bare list too
    assert parse_events_page({"events": []}) == EventsPage([], 0, None, None, False)
    assert parse_events_page({"events": [RECORDED] * PAGE_SIZE}).full  # type: ignore[union-attr]
    assert parse_events_page({"clients": []}) is None
    assert parse_events_page("events") is None


@given(json_values)
def test_any_json_is_an_event_or_none(value: Any) -> None:
    event = parse_event(value)
    assert event is None or isinstance(event, ProgramEvent)
    page = parse_events_page(value)
    assert page is None or page.skipped + len(page.events) == len(value)


@given(
    field=st.sampled_from(["id", "type", "created", "data", "url", "practitioner_id"]),
    value=json_values,
)
def test_any_value_in_a_field_is_read_or_skipped(field: str, value: Any) -> None:
    event = parse_event(item(**{field: value}))
    if event is not None:
        assert event.created.tzinfo is UTC
        assert event.client_id.isdigit()
        assert 0 < len(event.program_name) <= 300


@given(st.text(max_size=60))
def test_any_created_text_is_a_utc_time_or_skipped(created: str) -> None:
    event = parse_event(item(created=created))
    assert event is None or event.created.utcoffset() is not None

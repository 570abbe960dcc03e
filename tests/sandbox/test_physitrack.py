"""The fake Physitrack behaves as therapy-platforms.md sections 1 and 2 say Physitrack does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from services.sandbox.physitrack import AssignedProgram, FakePhysitrack, FakePractitioner
from shared.infra.clock import utcnow

CLIENT = {
    "external_id": "1001",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "year_of_birth": 1990,
    "gender": "f",
    "email": None,
    "mobile_phone": None,
}
EVENT_KEYS = {"id", "type", "created", "data", "practitioner_id", "url"}


def create(physitrack_http: TestClient, who: FakePractitioner, **changes: Any) -> dict[str, Any]:
    response = physitrack_http.post(
        "/api/v2/clients", json={**CLIENT, **changes}, headers=who.headers()
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def events(
    physitrack_http: TestClient, who: FakePractitioner, page: int = 1
) -> list[dict[str, Any]]:
    response = physitrack_http.get("/api/v2/events", params={"page": page}, headers=who.headers())
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


@dataclass
class Hook:
    """Where `assign(deliver_to="/hook", http=hook.http)` posts, and what it received."""

    http: TestClient
    received: list[dict[str, Any]]


@pytest.fixture
def hook() -> Iterator[Hook]:
    received: list[dict[str, Any]] = []

    async def keep(request: Request) -> Response:
        received.append(await request.json())
        return Response(status_code=200)

    with TestClient(Starlette(routes=[Route("/hook", keep, methods=["POST"])])) as client:
        yield Hook(client, received)


@pytest.fixture
def who(fake_physitrack: FakePhysitrack, physitrack_http: TestClient) -> FakePractitioner:
    """A practitioner with one client, external id 1001."""
    practitioner = fake_physitrack.add_practitioner()
    create(physitrack_http, practitioner)
    return practitioner


def exercises(program: AssignedProgram) -> str:
    return f"/api/v2/clients/{program.client_id}/programs/{program.access_code}/exercises"


def test_each_practitioner_sees_only_their_own_clients(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient
) -> None:
    """1.3 [I]: auth is per practitioner; a client belongs to the key that created it."""
    alice, bob, carol = (fake_physitrack.add_practitioner() for _ in range(3))
    mine = create(physitrack_http, alice)
    theirs = create(physitrack_http, bob, external_id="1002")
    listed = physitrack_http.get("/api/v2/clients", params={"page": 1}, headers=alice.headers())
    assert [c["id"] for c in listed.json()["clients"]] == [mine["id"]]
    for method in ("GET", "PUT"):
        answer = physitrack_http.request(
            method, f"/api/v2/clients/{theirs['id']}", json=CLIENT, headers=alice.headers()
        )
        assert (answer.status_code, answer.json()) == (
            404,
            {"errors": ["Client with given id does not exist"]},
        )
    assert physitrack_http.get("/api/v2/clients", headers=carol.headers()).json() == {"clients": []}
    assert events(physitrack_http, carol) == []
    assert fake_physitrack.clients_of(carol.api_key) == []
    assert fake_physitrack.by_external_id("1001", bob.api_key) == []
    assert fake_physitrack.by_external_id("1001") == [mine]


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        ({"X-Api-PMS-Name": "halaxy_bridge", "X-Api-PMS-Key": "Key-Of-30-Chars"}, 200),
        ({"X-Api-PMS-Name": "halaxy_bridge", "X-Api-PMS-Key": "key-of-30-chars"}, 401),
        ({"X-Api-PMS-Name": "Halaxy_Bridge", "X-Api-PMS-Key": "Key-Of-30-Chars"}, 401),
        ({}, 401),
    ],
)
def test_both_auth_modes(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, sent: dict[str, str], status: int
) -> None:
    """1.3: a PT Direct key alone; without PT Direct, the key and both PMS headers."""
    direct = fake_physitrack.add_practitioner()
    without = fake_physitrack.add_practitioner(pms=("halaxy_bridge", "Key-Of-30-Chars"))
    assert physitrack_http.get("/api/v2/clients", headers=direct.headers()).status_code == 200
    answer = physitrack_http.get("/api/v2/clients", headers={"X-Api-Key": without.api_key, **sent})
    assert answer.status_code == status
    if status == 401:
        assert answer.json() == {"errors": ["Practitioner was not found"]}
    assert (
        physitrack_http.get("/api/v2/events", headers={"X-Api-Key": "pt-unknown"}).status_code
        == 401
    )
    assert (
        fake_physitrack.add_key() in fake_physitrack.api_keys
    )  # the older face still makes a practitioner


def test_a_key_added_directly_is_a_practitioner(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient
) -> None:
    fake_physitrack.api_keys.add("pt-given-on-the-command-line")
    who = fake_physitrack.practitioner("pt-given-on-the-command-line")
    create(physitrack_http, who)
    [event] = events(physitrack_http, who)
    assert event["practitioner_id"] == who.practitioner_id
    assert len({fake_physitrack.add_practitioner().token for _ in range(5)} | {who.token}) == 6


def test_events_are_shaped_as_recorded_and_listed_oldest_first(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient
) -> None:
    """2.2: the 2018 recording lists page 1 oldest first; ids rise across practitioners."""
    alice, bob = fake_physitrack.add_practitioner(), fake_physitrack.add_practitioner()
    client = create(physitrack_http, alice)
    create(physitrack_http, bob, external_id="2001")
    assigned = fake_physitrack.assign(alice, "1001", name="Total body circuit")
    made, program = events(physitrack_http, alice)
    assert set(made) == set(program) == EVENT_KEYS
    assert (made["type"], made["data"], made["url"]) == (
        "new_client_created",
        client,
        f"/api/v2/clients/{client['id']}",
    )
    assert program["type"] == "new_program_assigned"
    assert program["id"] == assigned.event_id > made["id"] + 1  # bob's event sits between
    assert program["practitioner_id"] == alice.practitioner_id
    assert program["url"] == f"/api/v2/clients/{client['id']}/programs/{assigned.access_code}"
    assert program["created"].endswith("Z")
    assert {"id", "template_id", "name", "access_code", "start_date", "end_date"} <= set(
        program["data"]
    )
    assert program["data"]["name"] == "Total body circuit"
    fake_physitrack.newest_first = True
    assert [e["id"] for e in events(physitrack_http, alice)] == [program["id"], made["id"]]


def test_events_come_200_to_a_page(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient
) -> None:
    who = fake_physitrack.add_practitioner()
    for number in range(201):
        fake_physitrack.add_client(who.api_key, external_id=f"x{number}")
    first, second = events(physitrack_http, who, 1), events(physitrack_http, who, 2)
    assert (len(first), len(second), events(physitrack_http, who, 3)) == (200, 1, [])
    ids = [e["id"] for e in first + second]
    assert ids == sorted(ids)
    assert events(physitrack_http, who, 0) == first  # a page below 1 is page 1, as for clients
    one = physitrack_http.get(f"/api/v2/events/{ids[-1]}", headers=who.headers())
    assert one.json() == second[0]
    other = physitrack_http.get(
        f"/api/v2/events/{ids[-1]}", headers=fake_physitrack.add_practitioner().headers()
    )
    assert other.json() == {"errors": ["Event with given id does not exist"]}


def test_any_event_item_can_be_put_in(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient
) -> None:
    """2.2 lists eight event types; pollers must skip what they do not read."""
    who = fake_physitrack.add_practitioner()
    odd = {"id": 1, "type": "call_ended", "data": {"minutes": 3}}
    fake_physitrack.add_raw_event(who, odd)
    fake_physitrack.add_raw_event(who, "not even an object")
    assert events(physitrack_http, who) == [odd, "not even an object"]


def test_the_pdf_endpoint_answers_202_and_a_new_file_each_time(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner
) -> None:
    """1.4 and 2.3: `?format=pdf` answers 202 {"url": ...}."""
    program = fake_physitrack.assign(who, "1001")
    path = exercises(program)
    first = physitrack_http.get(path, params={"format": "pdf"}, headers=who.headers())
    second = physitrack_http.get(path, params={"format": "pdf"}, headers=who.headers())
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["url"] != second.json()["url"]
    assert first.json()["url"].startswith("http://testserver/files/")
    pdf = physitrack_http.get(first.json()["url"])
    assert (pdf.status_code, pdf.content[:5]) == (200, b"%PDF-")
    assert pdf.content == physitrack_http.get(program.file_url).content  # one program, one PDF
    assert physitrack_http.get(path, headers=who.headers()).json()["schedule_type"] == "weekly"


def test_the_pdf_endpoint_knows_only_the_clients_programs(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner
) -> None:
    other = fake_physitrack.add_practitioner()
    second = create(physitrack_http, who, external_id="1002")
    program = fake_physitrack.assign(who, "1001")
    first = program.client_id
    cases = [
        (who, f"{second['id']}/programs/{program.access_code}", "Program with given access code"),
        (who, f"{first}/programs/nosuchcd", "Program with given access code"),
        (other, f"{first}/programs/{program.access_code}", "Client with given id"),
    ]
    for practitioner, where, message in cases:
        answer = physitrack_http.get(
            f"/api/v2/clients/{where}/exercises",
            params={"format": "pdf"},
            headers=practitioner.headers(),
        )
        assert answer.status_code == 404
        assert answer.json()["errors"][0].startswith(message)


def test_a_file_may_not_exist_yet(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner
) -> None:
    """2.3 [I]: the 202 suggests the file is made later; S3 answers 404 until it is."""
    program = fake_physitrack.assign(who, "1001")
    fake_physitrack.pdf_ready_after_polls = 2
    url = physitrack_http.get(
        exercises(program), params={"format": "pdf"}, headers=who.headers()
    ).json()["url"]
    answers = [physitrack_http.get(url) for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 200]
    assert b"<Code>NoSuchKey</Code>" in answers[0].content
    assert len(fake_physitrack.file_requests) == 3


def test_a_file_is_gone_24_hours_after_it_was_made(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner
) -> None:
    """2.1: "the file is deleted 24 hours after generation"."""
    program = fake_physitrack.assign(who, "1001")
    with time_machine.travel(program.created + timedelta(hours=23, minutes=59), tick=False):
        assert physitrack_http.get(program.file_url).status_code == 200
    with time_machine.travel(program.created + timedelta(hours=24), tick=False):
        gone = physitrack_http.get(program.file_url)
    assert (gone.status_code, b"NoSuchKey" in gone.content) == (404, True)
    published = fake_physitrack.publish_pdf(b"%PDF-1.4 old")
    with time_machine.travel(utcnow() + timedelta(hours=25), tick=False):
        assert physitrack_http.get(published).status_code == 404


def test_the_callback_and_the_event_tell_the_same_moment(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner, hook: Hook
) -> None:
    """2.1: one `api_key` for the deployment, the practitioner's `token`, `date_iso` = the
    event's `created`."""
    fake_physitrack.webhook_api_key = "the-one-deployment-key"
    program = fake_physitrack.assign(who, "1001", name="Knee", deliver_to="/hook", http=hook.http)
    assert program.callback is not None
    assert program.callback.status_code == 200
    [event] = [e for e in events(physitrack_http, who) if e["type"] == "new_program_assigned"]
    assert hook.received == [
        {
            "api_key": "the-one-deployment-key",
            "token": who.token,
            "patient_id": "1001",
            "file_url": program.file_url,
            "name": "Knee",
            "date": event["created"][:10],
            "date_iso": event["created"],
            "updated": False,
        }
    ]


def test_a_dropped_callback_still_leaves_the_event_and_the_file(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner, hook: Hook
) -> None:
    dropped = fake_physitrack.assign(who, "1001", deliver_to="/hook", drop=True, http=hook.http)
    assert (dropped.callback, hook.received) == (None, [])
    assert [e["id"] for e in events(physitrack_http, who)][-1] == dropped.event_id
    assert physitrack_http.get(dropped.file_url).status_code == 200


def test_an_update_keeps_the_access_code_and_changes_the_pdf(
    fake_physitrack: FakePhysitrack, physitrack_http: TestClient, who: FakePractitioner, hook: Hook
) -> None:
    first = fake_physitrack.assign(who, "1001", name="Knee")
    again = fake_physitrack.assign(who, "1001", updated=True, deliver_to="/hook", http=hook.http)
    assert again.access_code == first.access_code
    assert [e["type"] for e in events(physitrack_http, who)][-2:] == [
        "new_program_assigned",
        "program_updated",
    ]
    assert (hook.received[0]["updated"], hook.received[0]["name"]) == (True, "Knee")
    assert (
        physitrack_http.get(again.file_url).content != physitrack_http.get(first.file_url).content
    )
    with pytest.raises(LookupError):
        fake_physitrack.assign(
            fake_physitrack.add_practitioner(), "1001"
        )  # not that practitioner's client

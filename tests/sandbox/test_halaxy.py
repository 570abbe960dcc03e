"""The fake Halaxy's quirks that the bridge relies on: withheld key permissions, searchset
Bundles with a `last` link, and the DocumentReference forms its docs allow (halaxy-api.md
sections 2, 3, 6 and 7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.sandbox.halaxy import (
    APPOINTMENTS_RETRIEVE,
    CLINICAL_NOTES_CREATE,
    PATIENTS_RETRIEVE,
    PERMISSIONS,
    FakeHalaxy,
    appointment_resource,
    patient_resource,
)
from tests.helpers import bearer_from

BASE = "http://testserver/main"
NOTE: dict[str, Any] = {
    "resourceType": "DocumentReference",
    "docStatus": "preliminary",
    "description": "Session note",
    "subject": {"type": "Patient", "reference": f"{BASE}/Patient/1001"},
    "content": [{"attachment": {"contentType": "text/html", "data": "<p>Note</p>"}}],
}


class Api:
    """A TestClient on the fake, holding a token of one key."""

    def __init__(self, http: TestClient, key: str) -> None:
        self.http = http
        self.headers = bearer_from(http, key)

    def get(self, path: str, **params: str) -> Any:
        return self.http.get(f"/main/{path}", params=params, headers=self.headers)

    def post_note(self, body: object) -> Any:
        return self.http.post(
            "/main/DocumentReference", content=orjson.dumps(body), headers=self.headers
        )


@pytest.fixture
def fake() -> FakeHalaxy:
    fake = FakeHalaxy()
    for number in range(5):
        patient_id = str(1001 + number)
        fake.patients[patient_id] = patient_resource(patient_id)
        fake.appointments[f"A{number}"] = appointment_resource(f"A{number}", patient_id)
    fake.appointments["A9"] = appointment_resource("A9", "1001")
    return fake


@pytest.fixture
def http(fake: FakeHalaxy) -> Iterator[TestClient]:
    with TestClient(fake.app(), headers={"User-Agent": "sandbox-tests"}) as client:
        yield client


def api(fake: FakeHalaxy, http: TestClient, withheld: set[str] | None = None) -> Api:
    return Api(http, fake.add_key(withheld=withheld or set()))


# --- permissions ------------------------------------------------------------------------------


def answers_by_permission(client: Api) -> dict[str, list[Any]]:
    """Each request that needs a permission, answered, under the permission it needs."""
    return {
        PATIENTS_RETRIEVE: [client.get("Patient/1001"), client.get("Patient", _count="1")],
        APPOINTMENTS_RETRIEVE: [
            client.get("Appointment/A1"),
            client.get("Appointment", _count="1"),
        ],
        CLINICAL_NOTES_CREATE: [client.post_note(NOTE)],
    }


@pytest.mark.parametrize("withheld", sorted(PERMISSIONS))
def test_a_withheld_permission_is_403_naming_it_and_the_others_still_work(
    fake: FakeHalaxy, http: TestClient, withheld: str
) -> None:
    answers = answers_by_permission(api(fake, http, {withheld}))

    for permission, answered in answers.items():
        for answer in answered:
            if permission == withheld:
                assert answer.status_code == 403
                [issue] = answer.json()["issue"]
                assert issue["code"] == "forbidden"
                assert withheld in issue["diagnostics"]
            else:
                assert answer.status_code in (200, 201), answer.text
    assert len(fake.notes) == (0 if withheld == CLINICAL_NOTES_CREATE else 1)


def test_a_key_keeps_every_permission_by_default(fake: FakeHalaxy, http: TestClient) -> None:
    client = Api(http, fake.add_key())

    assert client.get("Patient/1001").status_code == 200
    assert client.get("Appointment", _count="1").status_code == 200
    assert client.post_note(NOTE).status_code == 201


def test_a_note_without_the_permission_is_refused_before_its_body_is_read(
    fake: FakeHalaxy, http: TestClient
) -> None:
    client = api(fake, http, {CLINICAL_NOTES_CREATE})

    for body in ({"resourceType": "DocumentReference"}, "not a note", NOTE):
        assert client.post_note(body).status_code == 403
    assert fake.notes == []


def test_an_unknown_permission_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown permissions"):
        FakeHalaxy().add_key(withheld={"Patients -> Delete"})


# --- searchset Bundles ------------------------------------------------------------------------


def page_of(link: str) -> int:
    return int(parse_qs(urlsplit(link).query)["page"][0])


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


@pytest.mark.parametrize("resource_type", ["Patient", "Appointment"])
def test_a_search_pages_with_self_next_and_last_links_and_a_total(
    fake: FakeHalaxy, http: TestClient, resource_type: str
) -> None:
    client = api(fake, http)
    total = 5 if resource_type == "Patient" else 6

    seen: list[str] = []
    bundle = client.get(resource_type, _count="2").json()
    while True:
        assert bundle["type"] == "searchset"
        assert bundle["total"] == total
        found = links(bundle)
        assert page_of(found["last"]) == 3
        seen += [entry["resource"]["id"] for entry in bundle["entry"]]
        if "next" not in found:
            assert page_of(found["self"]) == 3
            break
        bundle = client.http.get(found["next"], headers=client.headers).json()
    assert len(seen) == len(set(seen)) == total


def test_an_empty_search_has_one_last_page_and_no_next() -> None:
    fake = FakeHalaxy()
    with TestClient(fake.app(), headers={"User-Agent": "sandbox-tests"}) as empty:
        bundle = api(fake, empty).get("Appointment").json()

    assert bundle["total"] == 0
    assert bundle["entry"] == []
    assert set(links(bundle)) == {"self", "last"}
    assert page_of(links(bundle)["last"]) == 1


def test_appointments_filter_by_a_patient_reference_and_refuse_a_bare_id(
    fake: FakeHalaxy, http: TestClient
) -> None:
    client = api(fake, http)

    bundle = client.get("Appointment", patient="Patient/1001").json()
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == ["A0", "A9"]
    assert bundle["total"] == 2
    assert "patient=Patient%2F1001" in links(bundle)["last"]
    # Halaxy answers 422 to a bare id in a reference parameter (halaxy-api.md section 4).
    assert client.get("Appointment", patient="1001").status_code == 422


SEARCH_PARAMETERS = {
    "Patient": ("_count", "page", "_lastUpdated"),
    "Appointment": ("_count", "page", "patient"),
}


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    resource_type=st.sampled_from(sorted(SEARCH_PARAMETERS)),
    values=st.lists(
        st.one_of(
            st.text(max_size=30), st.integers(-5, 10**6).map(str), st.just("gt2026-01-01T00:00Z")
        ),
        min_size=3,
        max_size=3,
    ),
)
def test_any_search_parameter_is_answered_without_a_server_error(
    resource_type: str, values: list[str]
) -> None:
    fake = FakeHalaxy()
    fake.patients["1"] = patient_resource("1", last_updated="2026-01-02T00:00:00Z")
    fake.appointments["A1"] = appointment_resource("A1", "1")
    params = dict(zip(SEARCH_PARAMETERS[resource_type], values, strict=True))
    with TestClient(fake.app(), headers={"User-Agent": "sandbox-tests"}) as http:
        answer = api(fake, http).get(resource_type, **params)

    assert answer.status_code in (200, 400, 422), answer.text
    body = answer.json()
    if answer.status_code == 200:
        assert body["resourceType"] == "Bundle"
        assert {"self", "last"} <= set(links(body))
    else:
        assert body["resourceType"] == "OperationOutcome"


# --- DocumentReference ------------------------------------------------------------------------


def author(reference: str) -> dict[str, str]:
    return {"type": "PractitionerRole", "reference": reference}


ACCEPTED = {
    "absolute-subject": {},
    "relative-subject": {"subject": {"type": "Patient", "reference": "/main/Patient/1001"}},
    "no-author": {"author": None},
    "one-author": {"author": [author(f"{BASE}/PractitionerRole/PR-1001")]},
    "one-relative-author": {"author": [author("/main/PractitionerRole/PR-1001")]},
    "empty-author-array": {"author": []},
}
REFUSED = {
    "bare-type-and-id-subject": (
        {"subject": {"type": "Patient", "reference": "Patient/1001"}},
        422,
        "subject",
    ),
    "subject-on-another-host": (
        {"subject": {"reference": "https://au-api.halaxy.com/main/Patient/1001"}},
        422,
        "subject",
    ),
    "two-authors": (
        {"author": [author("/main/PractitionerRole/PR-1"), author("/main/PractitionerRole/PR-2")]},
        422,
        "one PractitionerRole",
    ),
    "author-not-an-array": ({"author": author("/main/PractitionerRole/PR-1")}, 422, "one"),
    "author-a-practitioner": ({"author": [author("/main/Practitioner/PR-1")]}, 422, "author"),
    "external-author": ({"author": [author(f"{BASE}/PractitionerRole/EP-1")]}, 404, "Author"),
    "unknown-patient": ({"subject": {"reference": "/main/Patient/999"}}, 404, "Patient"),
}


@pytest.mark.parametrize("change", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_note_in_a_form_the_docs_allow_is_stored(
    fake: FakeHalaxy, http: TestClient, change: dict[str, Any]
) -> None:
    answer = api(fake, http).post_note({**NOTE, **change})

    assert answer.status_code == 201, answer.text
    assert [note["id"] for note in fake.notes] == [answer.json()["id"]]


@pytest.mark.parametrize(("change", "status", "names"), REFUSED.values(), ids=REFUSED.keys())
def test_a_note_in_another_form_is_refused_and_not_stored(
    fake: FakeHalaxy, http: TestClient, change: dict[str, Any], status: int, names: str
) -> None:
    answer = api(fake, http).post_note({**NOTE, **change})

    assert answer.status_code == status
    assert names in answer.json()["issue"][0]["diagnostics"]
    assert fake.notes == []

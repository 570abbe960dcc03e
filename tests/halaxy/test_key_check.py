"""The onboarding key check: which answer means which missing permission (pure), and the
check itself against the fake Halaxy with each permission withheld."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from services.sandbox.halaxy import PERMISSIONS, FakeHalaxy
from shared.halaxy.auth import HalaxyAccount
from shared.halaxy.key_check import (
    APPOINTMENTS_RETRIEVE,
    CLINICAL_NOTES_CREATE,
    PATIENTS_RETRIEVE,
    PROBES,
    Reading,
    check_key,
    reading,
    verdict,
)
from shared.infra.errors import InvalidInput, Permanent, Transient
from tests.helpers import assert_key_checked

USER_AGENT = "key-check-tests (qa@example.test)"
BASE = "http://testserver/main"
PATIENTS, APPOINTMENTS, NOTES = PROBES


def account(key: str, base_url: str = BASE) -> HalaxyAccount:
    client_id, _, secret = key.partition(":")
    return HalaxyAccount("cn_check", base_url, client_id, SecretStr(secret))


# --- which answer means what (pure) -----------------------------------------------------------


def test_the_probes_are_the_documented_requests_each_under_its_permission() -> None:
    assert [(str(p), p.permission) for p in PROBES] == [
        ("GET Patient?_count=1", PATIENTS_RETRIEVE),
        ("GET Appointment?_count=1", APPOINTMENTS_RETRIEVE),
        ("POST DocumentReference", CLINICAL_NOTES_CREATE),
    ]
    # The note lacks docStatus, subject and description, all required (halaxy-api.md 6).
    assert NOTES.body is not None
    assert orjson.loads(NOTES.body) == {"resourceType": "DocumentReference"}
    # The fake Halaxy names its toggles as the check does.
    assert {p.permission for p in PROBES} == PERMISSIONS


@pytest.mark.parametrize(
    ("status", "read", "note"),
    [
        (200, Reading.GRANTED, Reading.GRANTED),  # a 2xx to the note: Halaxy stored it
        (201, Reading.GRANTED, Reading.GRANTED),
        (400, Reading.UNCONFIRMED, Reading.GRANTED),  # refused for its body: authorized
        (422, Reading.UNCONFIRMED, Reading.GRANTED),
        (401, Reading.MISSING, Reading.MISSING),
        (403, Reading.MISSING, Reading.MISSING),
        (404, Reading.UNCONFIRMED, Reading.UNCONFIRMED),
        (405, Reading.UNCONFIRMED, Reading.UNCONFIRMED),
        (408, Reading.UNAVAILABLE, Reading.UNAVAILABLE),
        (429, Reading.UNAVAILABLE, Reading.UNAVAILABLE),
        (500, Reading.UNAVAILABLE, Reading.UNAVAILABLE),
        (503, Reading.UNAVAILABLE, Reading.UNAVAILABLE),
    ],
)
def test_each_answer_reads_as(status: int, read: Reading, note: Reading) -> None:
    assert reading(PATIENTS, status) is read
    assert reading(APPOINTMENTS, status) is read
    assert reading(NOTES, status) is note


def test_a_key_that_may_do_all_is_not_refused() -> None:
    assert verdict([(PATIENTS, 200), (APPOINTMENTS, 200), (NOTES, 422)]) is None


def test_each_missing_permission_is_named_with_one_problem_each() -> None:
    refusal = verdict([(PATIENTS, 403), (APPOINTMENTS, 200), (NOTES, 401)])

    assert isinstance(refusal, InvalidInput)
    assert str(refusal) == "the Halaxy key lacks: Patients -> Retrieve, Clinical Notes -> Create"
    assert refusal.problems == [
        "Patients -> Retrieve: Halaxy answered 403 to GET Patient?_count=1",
        "Clinical Notes -> Create: Halaxy answered 401 to POST DocumentReference",
    ]


def test_an_answer_that_proves_nothing_is_reported_as_not_confirmed() -> None:
    alone = verdict([(PATIENTS, 200), (APPOINTMENTS, 404), (NOTES, 422)])
    with_missing = verdict([(PATIENTS, 403), (APPOINTMENTS, 404), (NOTES, 422)])

    assert isinstance(alone, InvalidInput)
    assert str(alone) == "the Halaxy key's permissions could not be confirmed"
    assert alone.problems == [
        "Appointments -> Retrieve not confirmed: Halaxy answered 404 to GET Appointment?_count=1"
    ]
    assert isinstance(with_missing, InvalidInput)
    assert str(with_missing) == "the Halaxy key lacks: Patients -> Retrieve"
    assert len(with_missing.problems) == 2


def test_halaxy_unable_to_answer_is_transient_whatever_else_it_said() -> None:
    refusal = verdict([(PATIENTS, 403), (APPOINTMENTS, 429), (NOTES, 422)])

    assert isinstance(refusal, Transient)
    assert "429" in str(refusal)


@given(st.lists(st.integers(100, 599), min_size=3, max_size=3))
def test_any_answers_give_one_problem_per_permission_not_granted(statuses: list[int]) -> None:
    answers = list(zip(PROBES, statuses, strict=True))
    read = [reading(probe, status) for probe, status in answers]

    refusal = verdict(answers)

    if Reading.UNAVAILABLE in read:
        assert isinstance(refusal, Transient)
    elif set(read) == {Reading.GRANTED}:
        assert refusal is None
    else:
        assert isinstance(refusal, InvalidInput)
        kinds = {
            kind: [p.permission for p, r in zip(PROBES, read, strict=True) if r is kind]
            for kind in Reading
        }
        named = [
            problem.split(":")[0].removesuffix(" not confirmed") for problem in refusal.problems
        ]
        assert named == kinds[Reading.MISSING] + kinds[Reading.UNCONFIRMED]
        if kinds[Reading.MISSING]:
            assert str(refusal) == "the Halaxy key lacks: " + ", ".join(kinds[Reading.MISSING])


# --- the check against the fake Halaxy --------------------------------------------------------


@pytest.fixture
def fake() -> FakeHalaxy:
    return FakeHalaxy()


@pytest.fixture
def http(fake: FakeHalaxy) -> Iterator[TestClient]:
    with TestClient(fake.app()) as client:
        yield client


WITHHELD = [
    set(combination)
    for size in (1, 2, 3)
    for combination in itertools.combinations(sorted(PERMISSIONS), size)
]


@pytest.mark.parametrize("withheld", WITHHELD, ids=lambda w: " + ".join(sorted(w)))
def test_a_key_lacking_permissions_is_refused_naming_each(
    fake: FakeHalaxy, http: TestClient, withheld: set[str]
) -> None:
    key = fake.add_key(withheld=withheld)

    with pytest.raises(InvalidInput) as refused:
        check_key(http, account(key), USER_AGENT)

    named = [probe.permission for probe in PROBES if probe.permission in withheld]
    assert str(refused.value) == f"the Halaxy key lacks: {', '.join(named)}"
    assert [problem.split(":")[0] for problem in refused.value.problems] == named
    assert fake.notes == []
    [post] = [r for r in fake.requests if r.method == "POST" and "DocumentReference" in r.path]
    assert post.status == (403 if CLINICAL_NOTES_CREATE in withheld else 422)


def test_a_key_with_every_permission_passes_and_nothing_is_stored(
    fake: FakeHalaxy, http: TestClient
) -> None:
    check_key(http, account(fake.add_key()), USER_AGENT)

    assert_key_checked(fake, USER_AGENT)


def test_a_refused_key_stops_at_the_token(fake: FakeHalaxy, http: TestClient) -> None:
    client_id = fake.add_key().partition(":")[0]

    with pytest.raises(Permanent, match="Halaxy refused the API key"):
        check_key(http, account(f"{client_id}:wrong"), USER_AGENT)
    assert [r.path for r in fake.requests] == ["/main/oauth/token"]


@pytest.mark.parametrize("fault", [503, 429, 500])
def test_halaxy_failing_a_probe_is_transient(
    fake: FakeHalaxy, http: TestClient, fault: int
) -> None:
    fake.faults.script = [fault]

    with pytest.raises(Transient, match=str(fault)):
        check_key(http, account(fake.add_key()), USER_AGENT)
    assert fake.notes == []


def halaxy(answer_note: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    """A Halaxy that grants a token and the reads, and answers the note with `answer_note`."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        if request.method == "GET":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
        return answer_note(request)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_halaxy_unreachable_during_a_probe_is_transient() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Transient, match="POST DocumentReference failed"):
        check_key(halaxy(unreachable), account("cid:secret", BASE), USER_AGENT)


def test_a_note_halaxy_stored_passes_the_check_and_is_named_for_ops() -> None:
    stored = halaxy(
        lambda r: httpx.Response(201, json={"resourceType": "DocumentReference", "id": "DR-77"})
    )

    with capture_logs() as logs:
        check_key(stored, account("cid:secret"), USER_AGENT)

    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "halaxy.key_check_stored_a_note"
    assert warning["document_reference_id"] == "DR-77"
    assert warning["connection_id"] == "cn_check"

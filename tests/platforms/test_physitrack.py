"""The Physitrack adapter's program side against the fake, in-process: events, a client's
external id, the PDF URL, and the credentials check."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.physitrack import FakePhysitrack, FakePractitioner
from shared.infra.errors import Permanent, Transient
from shared.platforms import PlatformAccount, PlatformKind
from shared.platforms.http import PlatformNotFound
from shared.platforms.physitrack import Physitrack

BASE = "https://au.physitrack.com/api/v2"
UA = "halaxy-bridge/test (test@example.com)"

Adapter = Callable[[FakePractitioner], Physitrack]


def account(who: FakePractitioner) -> PlatformAccount:
    return PlatformAccount(
        kind=PlatformKind.PHYSITRACK,
        base_url=BASE,
        api_key=SecretStr(who.api_key),
        pms_name=who.pms[0] if who.pms else None,
        pms_key=SecretStr(who.pms[1]) if who.pms else None,
    )


@pytest.fixture
def adapter(physitrack_http: TestClient) -> Adapter:
    return lambda who: Physitrack(account(who), physitrack_http, UA)


def answering(status: int, body: object) -> Physitrack:
    """An adapter whose every call gets this answer."""
    transport = httpx.MockTransport(lambda _: httpx.Response(status, json=body))
    who = FakePractitioner("pt-key", "token", 1)
    return Physitrack(account(who), httpx.Client(transport=transport), UA)


def test_events_page_reads_the_programs_and_counts_the_rest(
    fake_physitrack: FakePhysitrack, adapter: Adapter
) -> None:
    who = fake_physitrack.add_practitioner()
    client = fake_physitrack.add_client(who.api_key, external_id="1001")
    first = fake_physitrack.assign(who, "1001", name="Knee")
    update = fake_physitrack.assign(who, "1001", updated=True)
    fake_physitrack.add_raw_event(who, {"id": 1, "type": "new_data_export", "data": {}})
    fake_physitrack.add_raw_event(who, {"type": "new_program_assigned", "url": "/nowhere"})
    page = adapter(who).events_page(1)
    assert [(e.event_id, e.kind, e.updated) for e in page.events] == [
        (first.event_id, "new_program_assigned", False),
        (update.event_id, "program_updated", True),
    ]
    assert {(e.client_id, e.access_code, e.program_name) for e in page.events} == {
        (str(client["id"]), first.access_code, "Knee")
    }
    assert page.events[0].created == first.created
    assert page.skipped == 3  # the client's creation, an export, one malformed
    assert (page.highest_id, page.full) == (update.event_id, False)


def test_a_full_page_says_so(fake_physitrack: FakePhysitrack, adapter: Adapter) -> None:
    who = fake_physitrack.add_practitioner()
    for number in range(201):
        fake_physitrack.add_client(who.api_key, external_id=f"x{number}")
    first, second = adapter(who).events_page(1), adapter(who).events_page(2)
    assert (first.full, first.skipped, second.full, second.skipped) == (True, 200, False, 1)
    assert (first.highest_id or 0) < (second.lowest_id or 0)
    assert adapter(fake_physitrack.add_practitioner()).events_page(1).highest_id is None


def test_events_page_bodies_the_adapter_cannot_read() -> None:
    assert answering(200, []).events_page(1).events == []
    with pytest.raises(Transient, match="without a list of events"):
        answering(200, {"clients": []}).events_page(1)


def test_client_external_id_is_the_practitioners_own(
    fake_physitrack: FakePhysitrack, adapter: Adapter
) -> None:
    who, other = fake_physitrack.add_practitioner(), fake_physitrack.add_practitioner()
    client = fake_physitrack.add_client(who.api_key, external_id="1001")
    assert adapter(who).client_external_id(str(client["id"])) == "1001"
    assert adapter(other).client_external_id(str(client["id"])) is None
    assert adapter(who).client_external_id("999999") is None
    assert adapter(who).client_external_id("../events") is None


def test_program_pdf_url_answers_where_the_pdf_will_be(
    fake_physitrack: FakePhysitrack, adapter: Adapter, physitrack_http: TestClient
) -> None:
    who = fake_physitrack.add_practitioner()
    client = fake_physitrack.add_client(who.api_key, external_id="1001")
    program = fake_physitrack.assign(who, "1001")
    fake_physitrack.pdf_ready_after_polls = 1
    url = adapter(who).program_pdf_url(str(client["id"]), program.access_code)
    assert [physitrack_http.get(url).status_code for _ in range(2)] == [404, 200]
    with pytest.raises(PlatformNotFound, match="Program with given access code"):
        adapter(who).program_pdf_url(str(client["id"]), "nosuchcd")
    with pytest.raises(Transient, match="has no url"):
        answering(202, {}).program_pdf_url("1", "abc")


@pytest.mark.parametrize("pms", [None, ("halaxy_bridge", "Pms-Key-Case-Sensitive")])
def test_verify_accepts_good_credentials(
    fake_physitrack: FakePhysitrack, adapter: Adapter, pms: tuple[str, str] | None
) -> None:
    adapter(fake_physitrack.add_practitioner(pms=pms)).verify()


@pytest.mark.parametrize(
    ("pms", "says"),
    [(None, "practitioner's API key \\(401"), (("n", "k"), "API key, PMS name and PMS key")],
)
def test_verify_names_what_was_refused(
    fake_physitrack: FakePhysitrack, adapter: Adapter, pms: tuple[str, str] | None, says: str
) -> None:
    who = fake_physitrack.add_practitioner(pms=pms)
    fake_physitrack.api_keys.clear()
    with pytest.raises(Permanent, match=says) as refused:
        adapter(who).verify()
    assert "Practitioner was not found" in str(refused.value)
    assert who.api_key not in str(refused.value)


def test_verify_retries_what_may_pass_later(
    fake_physitrack: FakePhysitrack, adapter: Adapter
) -> None:
    fake_physitrack.faults.script = [503, 501]
    who = fake_physitrack.add_practitioner()
    with pytest.raises(Transient):
        adapter(who).verify()
    with pytest.raises(Permanent, match="not implemented"):
        adapter(who).verify()

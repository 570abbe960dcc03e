"""The event log from the outside: `halaxy-bridge events list|show` and `GET /ops/events`,
`/ops/events/{event_id}` as JSON and as pages, paging by cursor, and every bad search refused
with a named reason (422, or the CLI's one line), generated inputs included."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient

from services.cli.main import cli
from services.sandbox.serve import ServerThread
from services.webhook_receiver.ops_page import SECURITY_HEADERS
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.telemetry.attempts import Call
from shared.telemetry.event_log import (
    QUERY_PARAMETERS,
    UNROUTED,
    Attempt,
    AttemptOutcome,
    EventLog,
    EventRecord,
    EventSource,
    EventState,
    EventStatus,
)
from tests.services.test_ops_page import Chromium, find_chromium

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BROWSER = {
    "Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode(),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}
CSP = SECURITY_HEADERS["Content-Security-Policy"]
A, B = "cn_aaaaaaaaaaaa", "cn_bbbbbbbbbbbb"
ODD_ID = 'Subscription/<b>"x"</b>#3'  # a Halaxy event id may be any text: escaped everywhere


@pytest.fixture
def events(redis_server_client: redis.Redis, keys: Keys) -> EventLog:
    """Twelve events of A (one dead, one with an odd id), three of B, one unrouted."""
    log = EventLog(redis_server_client, keys)
    now = utcnow()
    for n in range(12):
        log.received(record(f"ev-{n:02d}", A, now - timedelta(minutes=60 - n, seconds=30)))
    for n in range(3):
        log.received(record(f"ev-b{n}", B, now - timedelta(minutes=30 - n), resource_id="2002"))
    log.received(record(ODD_ID, A, now - timedelta(minutes=5)))
    log.received(
        record("up_0123", UNROUTED, now - timedelta(minutes=4)),
        EventStatus(EventState.UNROUTED, now, detail="unknown_token"),
    )
    failed = Attempt(
        at=now,
        outcome=AttemptOutcome.DEAD,
        actor="sync_patient",
        detail="PatientNotUsable",
        status_code=200,
        seconds=0.2,
        calls=(Call("halaxy", "GET", "/main/Patient/{id}", 200, 0.1),),
        message_id="m-dead-1",
    )
    log.attempted(A, "ev-03", failed, EventStatus(EventState.DEAD, now, "m-dead-1"))
    return log


def record(
    event_id: str, connection_id: str, received_at: Any, resource_id: str = "1001"
) -> EventRecord:
    return EventRecord(
        event_id=event_id,
        connection_id=connection_id,
        source=EventSource.HALAXY_WEBHOOK,
        event_type="patient-updated",
        resource_id=resource_id,
        received_at=received_at,
    )


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["events", *args], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )


# The CLI.


def test_cli_lists_newest_first_and_pages_by_the_cursor_it_prints(
    events: EventLog, settings: Settings
) -> None:
    first = run(settings, "list", "--connection", A, "--limit", "5")
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[0].split()[:3] == ["RECEIVED_AT", "CONNECTION_ID", "TYPE"]
    assert ODD_ID in lines[1]
    cursor = lines[-1].removeprefix("next page: --cursor ")
    assert cursor != lines[-1]
    second = orjson.loads(
        run(
            settings, "list", "--connection", A, "--limit", "5", "--cursor", cursor, "--json"
        ).stdout
    )
    assert [e["event_id"] for e in second["events"]] == [
        "ev-07",
        "ev-06",
        "ev-05",
        "ev-04",
        "ev-03",
    ]
    seen: list[str] = []
    cursor_arg: list[str] = []
    while True:
        page = orjson.loads(run(settings, "list", "--limit", "4", "--json", *cursor_arg).stdout)
        seen += [e["event_id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor_arg = ["--cursor", page["next_cursor"]]
    assert len(seen) == len(set(seen)) == 17


def test_cli_filters_by_state_resource_and_time(events: EventLog, settings: Settings) -> None:
    def ids(*args: str) -> list[str]:
        result = run(settings, "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [e["event_id"] for e in orjson.loads(result.stdout)["events"]]

    assert ids("--state", "dead") == ["ev-03"]
    assert ids("--resource", "2002") == ["ev-b2", "ev-b1", "ev-b0"]
    assert ids("--since", "6m") == ["up_0123", ODD_ID]
    assert ids("--connection", "unrouted") == ["up_0123"]
    assert ids("--event", "ev-b1") == ["ev-b1"]
    assert ids("--until", "50m", "--connection", A) == [f"ev-{n:02d}" for n in range(10, -1, -1)]


def test_cli_shows_one_event_by_its_id_alone(events: EventLog, settings: Settings) -> None:
    result = run(settings, "show", "ev-03")
    assert result.exit_code == 0, result.output
    assert "dead letter  m-dead-1" in result.stdout
    assert "halaxy GET /main/Patient/{id} 200" in result.stdout
    data = orjson.loads(run(settings, "show", "ev-03", "--json").stdout)
    [shown] = data["records"]
    assert (shown["connection_id"], shown["state"], shown["dead_letter_id"]) == (
        A,
        "dead",
        "m-dead-1",
    )
    assert shown["attempts"][0]["detail"] == "PatientNotUsable"
    elsewhere = run(settings, "show", "ev-03", "--connection", B, "--json")
    assert elsewhere.exit_code == 4
    assert orjson.loads(elsewhere.stderr)["error"] == "unknown_event"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["list", "--cursor", "nope"], "cursor: not a cursor"),
        (["list", "--since", "last tuesday"], "since: must be an ISO 8601 time"),
        (["list", "--since", "1h", "--until", "3h"], "since: is after until"),
        (["list", "--state", "lost"], "state: one of queued"),
        (["list", "--limit", "1000"], "limit: a whole number from 1 to 200"),
        (["show", "ev-1", "--connection", "not an id"], "connection: not a connection id"),
    ],
)
def test_cli_refuses_a_bad_search_on_one_line(
    events: EventLog, settings: Settings, args: list[str], said: str
) -> None:
    result = run(settings, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the event search is invalid")
    assert said in line
    as_json = run(settings, *args, "--json")
    assert orjson.loads(as_json.stderr)["error"] == "invalid"


cli_settings = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@cli_settings
@given(since=st.text(max_size=30), cursor=st.text(max_size=40))
def test_cli_any_since_and_cursor_list_or_are_refused_cleanly(
    events: EventLog, settings: Settings, since: str, cursor: str
) -> None:
    result = run(settings, "list", "--since", since, "--cursor", cursor, "--json")
    if result.exit_code == 0:
        assert "events" in orjson.loads(result.stdout)
    else:
        assert result.exit_code == 2, result.output
        error = orjson.loads(result.stderr)
        assert error["error"] in {"invalid", "usage"}


# /ops/events as JSON.


def test_json_search_pages_by_cursor_and_filters(events: EventLog, client: TestClient) -> None:
    response = client.get("/ops/events", params={"limit": "10"}, headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    page = response.json()
    assert page["events"][0]["event_id"] == "up_0123"
    seen = [e["event_id"] for e in page["events"]]
    more = client.get(
        "/ops/events", params={"limit": "10", "cursor": page["next_cursor"]}, headers=ADMIN
    ).json()
    seen += [e["event_id"] for e in more["events"]]
    assert more["next_cursor"] is None
    assert len(seen) == len(set(seen)) == 17
    dead = client.get("/ops/events", params={"state": "dead"}, headers=ADMIN).json()["events"]
    assert [(e["event_id"], e["dead_letter_id"]) for e in dead] == [("ev-03", "m-dead-1")]


def test_json_event_by_id_with_a_slash_and_ambiguity(events: EventLog, client: TestClient) -> None:
    response = client.get(f"/ops/events/{quote(ODD_ID, safe='')}", headers=ADMIN)
    assert response.status_code == 200
    assert [r["event_id"] for r in response.json()["records"]] == [ODD_ID]
    events.received(record("ev-03", B, utcnow()))  # the same id in another connection
    both = client.get("/ops/events/ev-03", headers=ADMIN).json()["records"]
    assert {r["connection_id"] for r in both} == {A, B}
    one = client.get("/ops/events/ev-03", params={"connection": A}, headers=ADMIN).json()
    assert [r["state"] for r in one["records"]] == ["dead"]
    missing = client.get("/ops/events/ev-none", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_event"


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"cursor": "ev1.AAAA"}, "cursor: not a cursor"),
        ({"since": "2026-13-01T00:00:00Z"}, "since: must be an ISO 8601 time"),
        ({"until": "2026-11-01T00:00:00"}, "until: must carry a timezone"),
        ({"since": "2h", "until": "3h"}, "since: is after until"),
        ({"limit": "-1"}, "limit:"),
        ({"page": "2"}, "'page' is not a search parameter"),
    ],
)
def test_json_bad_search_is_422_with_the_reason(
    events: EventLog, client: TestClient, params: dict[str, str], said: str
) -> None:
    response = client.get("/ops/events", params=params, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid"
    assert said in response.json()["detail"]


def test_an_event_page_takes_only_a_connection(events: EventLog, client: TestClient) -> None:
    response = client.get("/ops/events/ev-03", params={"state": "dead"}, headers=ADMIN)
    assert response.status_code == 422
    assert "only ?connection=" in response.json()["detail"]


def test_the_log_needs_the_admin_token(events: EventLog, client: TestClient) -> None:
    assert client.get("/ops/events").status_code == 401
    assert (
        client.get("/ops/events/ev-03", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    challenge = client.get("/ops/events", headers={"Accept": "text/html"})
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith("Basic")


http_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@http_settings
@given(
    params=st.dictionaries(
        st.sampled_from([*QUERY_PARAMETERS, "x"]), st.text(max_size=30), max_size=5
    ),
    html=st.booleans(),
)
def test_any_query_is_a_page_or_a_422_never_a_server_error(
    events: EventLog, client: TestClient, params: dict[str, str], html: bool
) -> None:
    headers = BROWSER if html else ADMIN
    response = client.get("/ops/events?" + urlencode(params), headers=headers)
    assert response.status_code in (200, 422), response.text
    if html:
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CSP
        if response.status_code == 422:
            assert 'role="alert"' in response.text
    else:
        body = response.json()
        assert ("events" in body) if response.status_code == 200 else (body["error"] == "invalid")


# /ops/events as pages.


class Page(HTMLParser):
    """The page's links, labels, form controls and table cells (text, unescaped)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: dict[str, str] = {}  # text -> href
        self.labels: set[str] = set()
        self.controls: set[str] = set()
        self.cells: list[str] = []
        self.scripts = 0
        self._link: str | None = None
        self._text: list[str] = []
        self._in: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "a":
            self._link, self._text = values.get("href") or "", []
        if tag == "label":
            self.labels.add(values.get("for") or "")
        if tag in ("input", "select"):
            self.controls.add(values.get("id") or "")
        if tag == "td":
            self._in.append("td")
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.links["".join(self._text).strip()] = self._link
            self._link = None
        if tag == "td" and self._in:
            self._in.pop()
            self.cells.append("".join(self._text).strip())

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def test_a_browser_gets_the_search_page_with_paging_links(
    events: EventLog, client: TestClient
) -> None:
    response = client.get("/ops/events", params={"connection": A, "limit": "5"}, headers=BROWSER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert "<b>" not in response.text  # the odd id is escaped
    page = Page(response.text)
    assert page.scripts == 0
    assert page.controls <= page.labels  # every control has its label
    assert {
        "f-connection",
        "f-state",
        "f-since",
        "f-until",
        "f-event",
        "f-resource",
    } <= page.controls
    assert ODD_ID in page.cells
    assert page.links[ODD_ID] == f"/ops/events/{quote(ODD_ID, safe='')}?connection={A}"
    next_href = page.links["Next page"]
    assert "cursor=ev1." in next_href
    second = Page(client.get(next_href, headers=BROWSER).text)
    assert "ev-07" in second.cells
    assert ODD_ID not in second.cells
    assert "First page" in second.links


def test_a_browser_gets_an_events_page_with_its_attempts_and_dead_letter(
    events: EventLog, client: TestClient
) -> None:
    response = client.get("/ops/events/ev-03", headers=BROWSER)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CSP
    assert 'id="dead-letter-id">m-dead-1<' in response.text
    page = Page(response.text)
    assert "PatientNotUsable" in page.cells
    assert any("/main/Patient/{id}" in cell for cell in page.cells)
    odd = client.get(f"/ops/events/{quote(ODD_ID, safe='')}", headers=BROWSER)
    assert odd.status_code == 200
    assert "<b>" not in odd.text
    assert "&lt;b&gt;" in odd.text


def test_a_browser_sees_a_bad_search_and_a_missing_event_on_the_page(
    events: EventLog, client: TestClient
) -> None:
    bad = client.get("/ops/events", params={"cursor": "<i>x</i>", "since": "soon"}, headers=BROWSER)
    assert bad.status_code == 422
    assert "cursor: not a cursor" in bad.text
    assert "since: must be an ISO 8601 time" in bad.text
    assert "<i>x</i>" not in bad.text
    assert 'value="&lt;i&gt;x&lt;/i&gt;"' not in bad.text  # the cursor is not a form field
    missing = client.get("/ops/events/ev-none", headers=BROWSER)
    assert missing.status_code == 404
    assert "No such event" in missing.text


@pytest.mark.slow
def test_the_event_pages_in_headless_chromium(
    events: EventLog, app: Starlette, tmp_path: Path
) -> None:
    """A real browser asks for HTML: it gets the search page, signed in by Basic auth, the
    next page by its link's URL, and an event's page, all without a script."""
    browser = Chromium(find_chromium(), tmp_path)
    with ServerThread(app) as server:
        signed_in = f"http://ops:{TOKEN}@127.0.0.1:{server.port}"
        page = Page(browser.dump_dom(f"{signed_in}/ops/events?connection={A}&limit=5"))
        assert page.scripts == 0
        assert ODD_ID in page.cells
        assert "ev-08" in page.cells
        assert "ev-07" not in page.cells
        following = Page(browser.dump_dom(signed_in + page.links["Next page"]))
        assert "ev-07" in following.cells
        shown = browser.dump_dom(f"{signed_in}/ops/events/ev-03?connection={A}")
        assert 'id="dead-letter-id">m-dead-1<' in shown
        assert "PatientNotUsable" in Page(shown).cells

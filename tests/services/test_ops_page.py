"""The `/ops` HTML page: auth (Bearer, or Basic with the admin token as password), escaping,
security headers, 503 without Redis; and the page in a real headless Chromium, signed in by
Basic auth from the URL and refreshing itself."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.serve import free_port
from services.webhook_receiver.app import create_app
from services.webhook_receiver.ops_page import render
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.jobs import ActorName, Job, QueueName
from shared.infra.store import Keys
from shared.ops.admins import Role
from shared.ops.dead_letters import DeadLetter, DeadLetterStore
from tests.browser import Chromium, Recorder, ServerThread, find_chromium, stop, wait_for
from tests.conftest import make_connection
from tests.helpers import named_admin
from tests.ops.test_dead_letters import LETTER

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]
CHALLENGE = 'Basic realm="halaxy-bridge ops", charset="UTF-8"'
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Page(HTMLParser):
    """The rows of each table, as (row class, cell texts), by table id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self._table = ""
        self._in_cell = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append((attributes.get("class") or "", []))
        elif tag == "td" and self._table:
            self._in_cell = True
            self.tables[self._table][-1][1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            row = self.tables[self._table][-1][1]
            row[-1] += data

    def row(self, table: str, first_cell: str) -> tuple[str, list[str]]:
        [found] = [r for r in self.tables[table] if r[1] and r[1][0] == first_cell]
        return found


def dead_letter(connection_id: str) -> DeadLetter:
    return replace(LETTER, id="m-ops-1", connection_id=connection_id, kwargs={})


# --- Through the test client ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("ops", TOKEN + "x"),
        basic(TOKEN, ""),
        basic("ops", ""),
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()},
        bearer(TOKEN + "x"),
        {"Authorization": TOKEN},
    ],
    ids=[
        "none",
        "wrong-password",
        "token-as-user",
        "empty-password",
        "basic-not-encoded",
        "basic-garbage",
        "basic-no-colon",
        "wrong-bearer",
        "bare-token",
    ],
)
def test_without_valid_credentials_is_401_with_a_basic_challenge(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.get("/ops", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "unauthorized"
    assert TOKEN not in response.text


def test_without_an_admin_token_configured_only_named_admins_get_in(
    settings: Settings, verify_key: KeyVerifier, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """BRIDGE_ADMIN_TOKEN unset: the bootstrap token is no one's, and the 401 says how to set
    up an admin while there is none; a named admin's token works as ever."""
    off = create_app(settings.model_copy(update={"admin_token": None}), verify_key=verify_key)
    with TestClient(off) as client:
        response = client.get("/ops", headers=basic("ops", TOKEN))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == CHALLENGE
        assert response.json() == {
            "error": "unauthorized",
            "detail": "unknown admin token (no admin is set up: set BRIDGE_ADMIN_TOKEN, or add "
            "one with halaxy-bridge admins add)",
        }
        token = named_admin(redis_server_client, keys, "olive", Role.VIEWER)
        assert client.get("/ops", headers=basic("ops", token)).status_code == 200
        assert client.get("/ops", headers=basic("ops", TOKEN)).json()["detail"] == (
            "unknown admin token"
        )


@pytest.mark.parametrize(
    "headers",
    [basic("ops", TOKEN), basic("", TOKEN), basic("anyone", TOKEN), bearer()],
    ids=["basic", "basic-no-user", "basic-other-user", "bearer"],
)
def test_valid_credentials_get_the_page_with_security_headers(
    client: TestClient, connection: Connection, headers: dict[str, str]
) -> None:
    response = client.get("/ops", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert '<meta http-equiv="refresh" content="10">' in response.text
    assert "<script" not in response.text
    page = Page(response.text)
    assert [cells[0] for _, cells in page.tables["queues"][1:]] == ["live", "bulk"]
    assert page.row("connections", connection.name)[1][1] == connection.id


def test_a_basic_password_with_a_colon_is_read_whole(
    settings: Settings, verify_key: KeyVerifier
) -> None:
    token = "with:colon-" + TOKEN
    app = create_app(
        settings.model_copy(update={"admin_token": SecretStr(token)}), verify_key=verify_key
    )
    with TestClient(app) as client:
        assert client.get("/ops", headers=basic("ops", token)).status_code == 200
        assert client.get("/ops", headers=basic("ops", TOKEN)).status_code == 401


def test_connection_names_are_escaped(
    client: TestClient, store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    name = "<script>alert(1)</script>"
    connection = make_connection(store, fake_halaxy, verify_key, name=name)
    response = client.get("/ops", headers=bearer())
    assert response.status_code == 200
    assert name not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "<script" not in response.text
    assert Page(response.text).row("connections", name)[1][1] == connection.id


def test_rows_needing_attention_are_highlighted(
    client: TestClient,
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    connection: Connection,
) -> None:
    make_connection(store, fake_halaxy, verify_key, name="Quiet Clinic")
    DeadLetterStore(redis_server_client, keys).add(dead_letter(connection.id))
    page = Page(client.get("/ops", headers=bearer()).text)
    attention, cells = page.row("connections", connection.name)
    assert attention == "attention"
    assert cells[6] == "1"
    assert page.row("connections", "Quiet Clinic")[0] == ""


def test_render_shows_a_dash_for_what_is_missing_and_highlights_old_or_dead_queues() -> None:
    html = render(
        {
            "queues": [
                {"queue": "live", "depth": 3, "oldest_age_seconds": 301.0},
                {"queue": "bulk", "dead": 2},
                {"queue": "calm", "depth": 1, "oldest_age_seconds": 12.25, "dead": 0},
            ],
            "connections": [{"name": "Partial", "enabled": False, "parked_notes": 1}],
            "redis_warnings": ["maxmemory-policy is allkeys-lru, <not> noeviction"],
        }
    )
    page = Page(html)
    assert page.row("queues", "live") == ("attention", ["live", "3", "—", "—", "301.0", "—"])
    assert page.row("queues", "bulk")[0] == "attention"
    assert page.row("queues", "calm") == ("", ["calm", "1", "—", "0", "12.2", "—"])
    attention, cells = page.row("connections", "Partial")
    assert attention == "attention"
    assert cells[1:4] == ["—", "no", "—"]
    assert "&lt;not&gt; noeviction" in html
    assert "Dead letters: —" in html


def test_render_of_an_empty_status_is_a_page() -> None:
    page = Page(render({}))
    assert page.tables["queues"][1][1] == ["none"]
    assert page.tables["connections"][1][1] == ["none"]


def test_503_when_redis_is_unreachable(settings: Settings, verify_key: KeyVerifier) -> None:
    nowhere = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(nowhere, verify_key=verify_key)) as client:
        page = client.get("/ops", headers=basic("ops", TOKEN))
        status = client.get("/ops/status", headers=bearer())
    assert page.status_code == status.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert page.json() == status.json()
    assert page.json()["error"] == "unavailable"


# --- In a real browser ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_in_headless_chromium(
    app: Starlette,
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    tmp_path: Path,
) -> None:
    browser = Chromium(find_chromium(), tmp_path)
    name = "Harbour Physio & Hand <Therapy>"
    connection = make_connection(store, fake_halaxy, verify_key, name=name)
    DeadLetterStore(redis_server_client, keys).add(dead_letter(connection.id))
    job = Job(ActorName.SYNC_PATIENT, QueueName.BULK, {"connection_id": connection.id})
    app.state.deps.queue.enqueue([job])
    recorder = Recorder(app)
    with ServerThread(recorder) as server:
        signed_in = f"http://ops:{TOKEN}@127.0.0.1:{server.port}/ops"

        # Signed in by the URL's credentials: Chromium answers the Basic challenge with them.
        dom = browser.dump_dom(signed_in)
        page = Page(dom)
        attention, cells = page.row("connections", name)
        assert (attention, cells[1], cells[6]) == ("attention", connection.id, "1")
        assert page.row("queues", "live")[1][1] == "0"
        assert page.row("queues", "bulk")[1][1] == "1"
        assert len(recorder.pages(401)) == 1  # the challenge, then the page
        assert len(recorder.pages(200)) == 1

        # No credentials: the browser is refused and shows none of it.
        recorder.answers.clear()
        dom = browser.dump_dom(f"{server.url}/ops")
        assert recorder.pages(401)
        assert recorder.pages(200) == []
        assert connection.id not in dom
        assert "Harbour Physio" not in dom

        # Left open on the page, the browser loads it again by itself every 10 seconds.
        recorder.answers.clear()
        process = browser.start(signed_in)
        try:
            refreshed = wait_for(lambda: len(recorder.pages(200)) >= 2, 30)
        finally:
            stop(process)
        loads = recorder.pages(200)
        assert refreshed, recorder.answers
        assert 9 <= loads[1] - loads[0] <= 15, loads
        print(f"\n/ops in chromium: {len(loads)} loads, {loads[1] - loads[0]:.1f} s apart")

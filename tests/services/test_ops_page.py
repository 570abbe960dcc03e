"""The `/ops` HTML page: auth (Bearer, or Basic with the admin token as password), escaping,
security headers, 503 without Redis; and the page in a real headless Chromium, signed in by
Basic auth from the URL and refreshing itself."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import replace
from datetime import UTC
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.serve import free_port
from services.webhook_receiver.app import create_app
from services.webhook_receiver.ops_page import render
from services.webhook_receiver.pages import STYLE
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.jobs import ActorName, Job, QueueName
from shared.infra.store import Keys
from shared.ops.admins import Role
from shared.ops.dead_letters import DeadLetter, DeadLetterStore
from tests.browser import (
    BROWSER_TIMEOUT,
    Chromium,
    Recorder,
    ServerThread,
    find_chromium,
    stop,
    wait_for,
)
from tests.conftest import make_connection
from tests.helpers import named_admin
from tests.ops.test_dead_letters import LETTER

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]
CHALLENGE = 'Basic realm="halaxy-bridge ops", charset="UTF-8"'
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Page(HTMLParser):
    """Each table's column titles, and its body rows as (row class, cell texts, cell links):
    the row header (`th`) is the first cell. Every tag and every link's href seen, too."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self.titles: dict[str, list[str]] = {}
        self.links: dict[str, list[list[list[str]]]] = {}
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.hrefs: list[str] = []
        self._table = ""
        self._in_head = False
        self._in_cell = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.add(tag)
        self.attributes |= set(attributes)
        if tag == "a":
            self.hrefs.append(attributes.get("href") or "")
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.tables[self._table] = []
            self.titles[self._table] = []
            self.links[self._table] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table and not self._in_head:
            self.tables[self._table].append((attributes.get("class") or "", []))
            self.links[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._in_cell = True
            if self._in_head:
                self.titles[self._table].append("")
            else:
                self.tables[self._table][-1][1].append("")
                self.links[self._table][-1].append([])
        elif tag == "a" and self._in_cell and not self._in_head:
            self.links[self._table][-1][-1].append(attributes.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        if not self._in_cell:
            return
        data = data.replace("\xa0", " ")  # a marker's symbol is kept with its word
        if self._in_head:
            self.titles[self._table][-1] += data
        else:
            row = self.tables[self._table][-1][1]
            row[-1] += data

    def row(self, table: str, first_cell: str) -> tuple[str, list[str]]:
        [found] = [r for r in self.tables[table] if r[1] and r[1][0] == first_cell]
        return found

    def cell(self, table: str, first_cell: str, title: str) -> str:
        return self.row(table, first_cell)[1][self.titles[table].index(title)]

    def cell_links(self, table: str, first_cell: str, title: str) -> list[str]:
        [n] = [i for i, r in enumerate(self.tables[table]) if r[1] and r[1][0] == first_cell]
        return self.links[table][n][self.titles[table].index(title)]


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
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert '<meta http-equiv="refresh" content="10">' in response.text
    assert "<script" not in response.text
    page = Page(response.text)
    assert [cells[0] for _, cells in page.tables["queues"]] == ["live", "storm", "bulk"]
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
    assert page.row("connections", connection.name)[0] == "attention"
    assert page.cell("connections", connection.name, "dead letters") == "1"
    assert page.cell("connections", connection.name, "state") == "⚠ needs attention: dead letters"
    assert page.row("connections", "Quiet Clinic")[0] == ""
    assert page.cell("connections", "Quiet Clinic", "state") == "✔ ok"


def test_render_shows_a_dash_for_what_is_missing_and_highlights_old_or_dead_queues() -> None:
    html = render(
        {
            "queues": [
                {"queue": "live", "depth": 3, "oldest_age_seconds": 301.0},
                {"queue": "bulk", "dead": 2, "oldest_age_seconds": 3600.0},
                {"queue": "calm", "depth": 1, "oldest_age_seconds": 12.25, "dead": 0},
            ],
            "connections": [{"name": "Partial", "enabled": False, "parked_notes": 1}],
            "redis_warnings": ["maxmemory-policy is allkeys-lru, <not> noeviction"],
        }
    )
    page = Page(html)
    assert page.titles["queues"] == [
        "queue",
        "state",
        "ready",
        "taken",
        "delayed",
        "queued",
        "dead letters",
        "oldest waiting",
        "done / min",
    ]
    assert page.row("queues", "live") == (
        "attention",
        ["live", "⚠ needs attention: oldest message old", "3", "—", "—", "—", "—", "5m 01s", "—"],
    )
    # An hour is not old for the bulk queue (3 h is); its dead letters are what count.
    assert page.row("queues", "bulk")[0] == "attention"
    assert page.cell("queues", "bulk", "state") == "⚠ needs attention: dead letters"
    assert page.row("queues", "calm") == (
        "",
        ["calm", "✔ ok", "1", "—", "—", "—", "0", "12s", "—"],
    )
    attention, cells = page.row("connections", "Partial")
    assert attention == "attention"
    assert page.cell("connections", "Partial", "state") == (
        "⚠ needs attention: parked notes · ⊘ disabled"
    )
    assert cells[1] == "—"  # no id
    assert page.cell("connections", "Partial", "enabled") == "no"
    assert page.cell("connections", "Partial", "last event received") == "—"
    assert page.cell("connections", "Partial", "events") == "—"  # no id to search by
    assert "&lt;not&gt; noeviction" in html
    assert "Dead letters: —" in html


def test_render_of_an_empty_status_is_a_page() -> None:
    page = Page(render({}))
    assert page.tables["queues"][0][1] == ["none"]
    assert page.tables["connections"][0][1] == ["none"]
    assert page.tables["liveness"][0][1] == ["none"]


def test_503_when_redis_is_unreachable(settings: Settings, verify_key: KeyVerifier) -> None:
    nowhere = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(nowhere, verify_key=verify_key)) as client:
        page = client.get("/ops", headers=basic("ops", TOKEN))
        status = client.get("/ops/status", headers=bearer())
    assert page.status_code == status.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert page.json() == status.json()
    assert page.json()["error"] == "unavailable"


# --- The page's parts, from status dicts ---------------------------------------------------------

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "nav", "ul", "li", "a", "main",
    "h1", "h2", "p", "section", "div", "table", "thead", "tbody", "tr", "th", "td", "span",
    "time", "dl", "dt", "dd",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "lang", "charset", "name", "content", "http-equiv", "class", "href", "id", "tabindex",
    "aria-label", "aria-labelledby", "aria-current", "role", "scope", "title", "datetime",
    "colspan",
}  # fmt: skip
HOSTILE = st.sampled_from(
    [
        "<injected>",
        '"><injected x="',
        "' onfocus='alert(1)",
        "</table></div><injected>",
        "javascript:alert(1)",
        "&amp;<",
        "\u202e",
    ]
)
TEXTS = st.one_of(
    st.text(max_size=12), HOSTILE, st.tuples(st.text(max_size=6), HOSTILE).map("".join)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXTS
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3),
    max_leaves=6,
)
MOMENTS = st.datetimes(timezones=st.just(UTC)).map(lambda m: m.isoformat()) | JUNK
COUNTS_OR_JUNK = st.integers(0, 10**9) | st.floats(0, 10**9) | JUNK


def partial(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A dict with any of `fields` (each value of its kind, or junk), or junk instead."""
    return st.fixed_dictionaries({}, optional=fields) | JUNK


QUEUED = partial(
    {"queued": COUNTS_OR_JUNK, "delayed": COUNTS_OR_JUNK, "oldest_age_seconds": COUNTS_OR_JUNK}
)
CONNECTION_ROW = partial(
    {
        "id": TEXTS,
        "name": TEXTS,
        "enabled": st.booleans() | JUNK,
        "paused": st.booleans() | JUNK,
        "created_at": MOMENTS,
        "last_event_at": MOMENTS,
        "last_success_at": MOMENTS,
        "failures_last_hour": COUNTS_OR_JUNK,
        "last_sweep": MOMENTS,
        "last_sweep_kind": TEXTS,
        "dead_letters": COUNTS_OR_JUNK,
        "parked_notes": COUNTS_OR_JUNK,
        "failed_notes": COUNTS_OR_JUNK,
        "patients_not_synced": st.dictionaries(TEXTS, COUNTS_OR_JUNK, max_size=2) | JUNK,
        "patients_refused": st.dictionaries(TEXTS, COUNTS_OR_JUNK, max_size=2) | JUNK,
        "queues": partial({"live": QUEUED, "bulk": QUEUED}),
    }
)
QUEUE_ROW = partial(
    {
        "queue": TEXTS,
        **dict.fromkeys(
            ("depth", "taken", "delayed", "queued", "dead", "oldest_age_seconds"), COUNTS_OR_JUNK
        ),
        "throughput_per_minute": COUNTS_OR_JUNK,
    }
)
INSTANCE = partial(
    {
        "instance": TEXTS,
        "role": TEXTS,
        "host": TEXTS,
        "pid": COUNTS_OR_JUNK,
        "started_at": MOMENTS,
        "last_seen_at": MOMENTS,
        "seen_seconds_ago": COUNTS_OR_JUNK,
        "alive": st.booleans() | JUNK,
        "fresh_for_seconds": COUNTS_OR_JUNK,
        "dramatiq_seen_seconds_ago": COUNTS_OR_JUNK,
    }
)
LIVENESS = partial(
    {
        "alive": COUNTS_OR_JUNK,
        "leader": TEXTS | st.none(),
        "last_seen_at": MOMENTS,
        "seen_seconds_ago": COUNTS_OR_JUNK,
        "instances": st.lists(INSTANCE, max_size=3) | JUNK,
    }
)
STATUS = st.fixed_dictionaries(
    {},
    optional={
        "generated_at": MOMENTS,
        "queues": st.lists(QUEUE_ROW, max_size=3) | JUNK,
        "connections": st.lists(CONNECTION_ROW, max_size=3) | JUNK,
        "dead_letters": COUNTS_OR_JUNK,
        "dead_letters_unlisted": COUNTS_OR_JUNK,
        "parked_notes": COUNTS_OR_JUNK,
        "failed_notes": COUNTS_OR_JUNK,
        "unrouted_programs": COUNTS_OR_JUNK,
        "workers": LIVENESS,
        "scheduler": LIVENESS,
        "redis_warnings": st.lists(TEXTS, max_size=2) | JUNK,
    },
)


@hsettings(max_examples=300, deadline=None)
@given(data=STATUS)
def test_any_partial_status_renders_with_everything_escaped(data: dict[str, Any]) -> None:
    html = render(data)
    page = Page(html)
    assert page.tags <= ALLOWED_TAGS
    assert page.attributes <= ALLOWED_ATTRIBUTES
    assert "<injected" not in html
    assert "<script" not in html
    assert all(href.startswith(("/ops", "#")) for href in page.hrefs), page.hrefs
    # Every table keeps its shape: a row has a cell per column, or one "none" cell.
    for table, rows in page.tables.items():
        for _, cells in rows:
            assert len(cells) in (1, len(page.titles[table])), (table, cells)


def test_counts_link_to_their_lists_with_the_connection_in_the_query() -> None:
    connection = {
        "id": "cn_a&b c",
        "name": "Clinic",
        "enabled": True,
        "dead_letters": 2,
        "parked_notes": 1,
        "failed_notes": 0,
        "queues": {"live": {"queued": 0, "delayed": 0, "oldest_age_seconds": None}},
    }
    status = {
        "connections": [connection],
        "dead_letters": 2,
        "parked_notes": 1,
        "failed_notes": 0,
        "unrouted_programs": 3,
    }
    page = Page(render(status))
    assert page.cell_links("connections", "Clinic", "dead letters") == [
        "/ops/dead-letters?connection=cn_a%26b+c"
    ]
    assert page.cell_links("connections", "Clinic", "parked notes") == ["/ops/notes/parked"]
    assert page.cell_links("connections", "Clinic", "failed notes") == ["/ops/notes/failed"]
    assert page.cell_links("connections", "Clinic", "events") == [
        "/ops/events?connection=cn_a%26b+c"
    ]
    assert {"/ops/dead-letters", "/ops/notes/parked", "/ops/notes/failed"} <= set(page.hrefs)
    assert "/ops/programs/unrouted" in page.hrefs
    # The skip link first, then the console's navigation.
    assert page.hrefs[:5] == [
        "#main",
        "/ops",
        "/ops/events",
        "/ops/dead-letters",
        "/ops/notes/parked",
    ]


def test_paused_is_a_column_only_when_the_status_has_it() -> None:
    row = {"id": "cn_p", "name": "Paused Clinic", "enabled": True}
    without = Page(render({"connections": [row]}))
    assert "paused" not in without.titles["connections"]
    page = Page(render({"connections": [{**row, "paused": True}, {"id": "cn_q", "name": "Q"}]}))
    assert page.cell("connections", "Paused Clinic", "paused") == "yes"
    assert page.row("connections", "Paused Clinic")[0] == "paused"
    assert page.cell("connections", "Paused Clinic", "state") == "‖ paused"
    assert page.cell("connections", "Q", "paused") == "—"


def test_a_connection_whose_oldest_live_message_waited_over_5_minutes_needs_attention() -> None:
    def row(age: float) -> dict[str, Any]:
        queues = {
            "live": {"queued": 4, "delayed": 1, "oldest_age_seconds": age},
            "bulk": {"queued": 900, "delayed": 0, "oldest_age_seconds": 7200.0},
        }
        return {"id": f"cn_{int(age)}", "name": f"Clinic {int(age)}", "queues": queues}

    page = Page(render({"connections": [row(299.0), row(301.0)]}))
    assert page.row("connections", "Clinic 299")[0] == ""
    assert page.cell("connections", "Clinic 299", "live queued") == "4"
    assert page.cell("connections", "Clinic 299", "live oldest") == "4m 59s"
    assert page.cell("connections", "Clinic 299", "bulk oldest") == "2h 00m"
    assert page.row("connections", "Clinic 301")[0] == "attention"
    assert page.cell("connections", "Clinic 301", "state") == (
        "⚠ needs attention: live message old"
    )


def test_times_are_compact_utc_that_never_wrap_with_the_full_time_in_a_tooltip() -> None:
    html = render(
        {
            "generated_at": "2030-01-02T03:04:05+00:00",
            "connections": [
                {"id": "cn_t", "name": "T", "last_event_at": "2030-01-02T13:04:05+10:00"}
            ],
        }
    )
    assert (
        '<time datetime="2030-01-02T03:04:05+00:00" title="2030-01-02T03:04:05+00:00">'
        "2030-01-02 03:04Z</time>"
    ) in html
    assert Page(html).cell("connections", "T", "last event received") == "2030-01-02 03:04Z"
    assert "white-space: nowrap" in STYLE


def liveness_page(workers: dict[str, Any], scheduler: dict[str, Any]) -> Page:
    return Page(render({"workers": workers, "scheduler": scheduler}))


def test_liveness_says_none_seen_none_alive_or_how_many() -> None:
    never = {"alive": 0, "last_seen_at": None, "seen_seconds_ago": None, "instances": []}
    page = liveness_page(never, {**never, "leader": None})
    assert page.row("liveness", "Workers") == (
        "down",
        ["Workers", "✖ none seen in the last day", "0", "—", "—"],
    )
    assert page.row("liveness", "Scheduler")[0] == "down"

    gone = {
        "instance": "w-1",
        "role": "worker",
        "host": "worker-7f9c",
        "pid": 11,
        "started_at": "2030-01-01T00:00:00+00:00",
        "last_seen_at": "2030-01-01T00:10:00+00:00",
        "seen_seconds_ago": 125.0,
        "alive": False,
        "fresh_for_seconds": 30.0,
        "dramatiq_seen_seconds_ago": None,
    }
    dead = {**never, "last_seen_at": gone["last_seen_at"], "seen_seconds_ago": 125.0}
    page = liveness_page({**dead, "instances": [gone]}, {**dead, "leader": None})
    assert page.row("liveness", "Workers") == (
        "down",
        ["Workers", "✖ none alive", "0", "2m 05s ago", "2030-01-01 00:10Z"],
    )
    assert page.row("instances", "w-1")[0] == "down"
    assert page.cell("instances", "w-1", "state") == "✖ heartbeat stopped"

    alive = {**gone, "instance": "w-2", "alive": True, "seen_seconds_ago": 3.0}
    busy = {**alive, "instance": "w-3", "dramatiq_seen_seconds_ago": 45.0}
    fine = {**alive, "instance": "w-4", "dramatiq_seen_seconds_ago": 1.0}
    leader = {**alive, "instance": "s-1", "role": "leader"}
    del leader["dramatiq_seen_seconds_ago"]
    up = {"alive": 3, "last_seen_at": gone["last_seen_at"], "seen_seconds_ago": 3.0}
    page = liveness_page(
        {**up, "instances": [alive, busy, fine]},
        {**up, "alive": 1, "leader": "s-1", "instances": [leader]},
    )
    assert page.row("liveness", "Workers")[:1] == ("",)
    assert page.cell("liveness", "Workers", "state") == "✔ 3 alive"
    assert page.cell("liveness", "Scheduler", "state") == "✔ 1 alive, leader s-1"
    assert page.row("instances", "w-3")[0] == "attention"
    assert page.cell("instances", "w-3", "Dramatiq heartbeat") == "45s ago"
    assert page.row("instances", "w-4")[0] == ""
    assert page.cell("instances", "s-1", "Dramatiq heartbeat") == ""
    standby_only = {**up, "alive": 1, "leader": None, "instances": []}
    page = liveness_page(up, standby_only)
    assert page.row("liveness", "Scheduler")[0] == "attention"
    assert page.cell("liveness", "Scheduler", "state") == "⚠ needs attention: no leader"


def test_the_legend_names_every_highlight_the_page_uses() -> None:
    html = render({})
    for kind in ("attention", "down", "paused", "off"):
        assert f'<span class="swatch {kind}">' in html
        assert f"tr.{kind} > *" in STYLE
    assert "oldest live message has waited over 5 min" in html
    assert '<a class="skip" href="#main">' in html
    assert ":focus-visible" in STYLE
    assert ".scroll { overflow-x: auto" in STYLE


def test_the_chrome_is_shared_and_still_importable_from_the_ops_page() -> None:
    from services.webhook_receiver import ops_page, pages

    assert ops_page.SECURITY_HEADERS is pages.SECURITY_HEADERS
    assert ops_page.STYLE is pages.STYLE
    html = pages.document("Events <all>", "<p>body</p>", current="/ops/events")
    links = Page(html)
    assert links.hrefs == [
        "#main",
        "/ops",
        "/ops/events",
        "/ops/dead-letters",
        "/ops/notes/parked",
        "/ops/notes/failed",
    ]
    assert '<a href="/ops/events" aria-current="page">' in html
    assert "<title>Events &lt;all&gt; · halaxy-bridge</title>" in html
    assert "&lt;p&gt;body&lt;/p&gt;" in html  # text is escaped; Markup is not
    assert "refresh" not in html
    response = pages.page("Status", pages.Markup("<p>x</p>"), refresh_seconds=10)
    assert '<meta http-equiv="refresh" content="10">' in bytes(response.body).decode()
    assert response.headers["Content-Security-Policy"] == CSP


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
        assert (attention, cells[1]) == ("attention", connection.id)
        assert page.cell("connections", name, "dead letters") == "1"
        assert page.cell("queues", "live", "ready") == "0"
        assert page.cell("queues", "bulk", "ready") == "1"
        assert page.cell("connections", name, "bulk queued") == "1"
        assert page.cell_links("connections", name, "dead letters") == [
            f"/ops/dead-letters?connection={connection.id}"
        ]
        assert page.cell("liveness", "Workers", "state") == "✖ none seen in the last day"
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


MEASURE = """<script>
window.addEventListener("load", function () {  // the window has the focus by then
  var body = document.body, table = document.getElementById("connections");
  var set = function (name, value) { body.setAttribute("data-" + name, String(value)); };
  set("viewport", window.innerWidth);
  set("page-width", document.documentElement.scrollWidth);
  set("table-width", table.scrollWidth);
  set("region-width", table.parentElement.clientWidth);
  var lines = 0;
  document.querySelectorAll("td time").forEach(function (t) {
    lines = Math.max(lines, t.getClientRects().length);
  });
  set("time-lines", lines);
  var skip = document.querySelector("a.skip");
  set("skip-hidden", skip.getBoundingClientRect().right <= 0);
  skip.focus();
  set("skip-shown", skip.getBoundingClientRect().left >= 0);
  var count = document.querySelector("#connections td a");
  count.focus();
  var drawn = getComputedStyle(count);
  set("focus-outline", drawn.outlineStyle + " " + drawn.outlineWidth);
});
</script>"""


def wide_status() -> dict[str, Any]:
    """Many clinics with long names and large counts: wider than a 1280 px window."""
    seen = "2030-01-02T03:04:05+00:00"
    connections = [
        {
            "id": f"cn_{n:012d}",
            "name": f"The Long Established Physiotherapy and Hand Therapy Clinic number {n}",
            "enabled": n % 3 != 0,
            "paused": n % 4 == 0,
            "last_event_at": seen,
            "last_success_at": seen,
            "failures_last_hour": 1234,
            "last_sweep": seen,
            "last_sweep_kind": "reconcile",
            "dead_letters": 12345 * n,
            "parked_notes": n,
            "failed_notes": 0,
            "queues": {
                q: {"queued": 987654, "delayed": 1234, "oldest_age_seconds": 4000.0}
                for q in ("live", "bulk")
            },
        }
        for n in range(12)
    ]
    instance = {
        "instance": "0f4e6c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
        "role": "worker",
        "host": "halaxy-bridge-worker-7f9c6d5b8-x2x4q",
        "pid": 12345,
        "started_at": seen,
        "last_seen_at": seen,
        "seen_seconds_ago": 2.0,
        "alive": True,
        "fresh_for_seconds": 30.0,
        "dramatiq_seen_seconds_ago": 1.0,
    }
    live = {"alive": 2, "last_seen_at": seen, "seen_seconds_ago": 2.0, "instances": [instance]}
    return {
        "generated_at": seen,
        "connections": connections,
        "queues": [{"queue": "live", "depth": 10**6, "oldest_age_seconds": 10.0}],
        "workers": live,
        "scheduler": {**live, "leader": "abc123def456", "instances": []},
        "dead_letters": 10**6,
    }


@pytest.mark.slow
def test_the_page_fits_1280_pixels_and_its_wide_tables_scroll_in_their_own_box(
    tmp_path: Path,
) -> None:
    """Measured by Chromium itself: a copy of the page with a script added (the real page runs
    none), served without the CSP so that the script may run."""
    browser = Chromium(find_chromium(), tmp_path)
    html = render(wide_status()).replace("</body>", MEASURE + "</body>")

    async def measured(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": html.encode()})

    with ServerThread(measured) as server:
        process = browser.start(
            "--window-size=1280,900", "--virtual-time-budget=2000", "--dump-dom", server.url
        )
        try:
            dom, _ = process.communicate(timeout=BROWSER_TIMEOUT)
        finally:
            stop(process)
    found = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', dom.split("<body", 1)[1].split(">", 1)[0]))
    print(f"\n/ops at 1280 px: {found}")
    assert int(found["viewport"]) == 1280
    assert int(found["page-width"]) <= 1280  # the page itself never scrolls sideways
    assert int(found["table-width"]) > int(found["region-width"])  # the table scrolls in its box
    assert found["time-lines"] == "1"  # no time wraps
    assert (found["skip-hidden"], found["skip-shown"]) == ("true", "true")
    style, width = found["focus-outline"].split()
    assert style == "solid"
    assert float(width.removesuffix("px")) >= 2

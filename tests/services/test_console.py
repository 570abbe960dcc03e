"""The console's pages and actions through the test client: the same URLs answer a browser
with pages and forms and everyone else with the JSON they had; every form post is checked for
its origin and its CSRF token, destructive ones are confirmed first, and every refusal is a
page with its reason, changes nothing and is audited."""

from __future__ import annotations

import base64
import os
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.webhook_receiver.csrf import (
    TOKEN_LIFETIME,
    credential_identity,
    csrf_keys,
    issue_token,
)
from services.webhook_receiver.forms import Form
from services.webhook_receiver.pages import Typed, confirmation_page, table
from services.webhook_receiver.pages import page as whole_page
from services.webhook_receiver.responses import ApiError
from shared.connections.model import Connection
from shared.infra.audit import CHAIN_FIELDS
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox, NoteState
from shared.ops.dead_letters import DeadLetter, DeadLetterStore
from tests import helpers
from tests.helpers import queued_messages
from tests.ops.test_dead_letters import LETTER

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]
ORIGIN = "http://testserver"
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def basic(password: str = TOKEN) -> str:
    return "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()


BROWSER = {"Authorization": basic(), "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SENT_BY_BROWSER = {**BROWSER, "Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
JSON_CLIENT = {"Authorization": f"Bearer {TOKEN}"}


# --- Reading the pages ------------------------------------------------------------------------


@dataclass
class HtmlForm:
    method: str
    action: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # the names of fields a person fills in

    def value(self, name: str) -> str:
        [found] = [v for k, v in self.fields if k == name]
        return found


class Page(HTMLParser):
    """The forms of a page, the text of elements by id, and the cells of tables by id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[HtmlForm] = []
        self.text_by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._ids: list[tuple[str, str]] = []  # (tag, id) open
        self._table = ""
        self._button = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self._ids.append((tag, a["id"]))
            self.text_by_id[a["id"]] = ""
        if tag == "form":
            self.forms.append(HtmlForm(a.get("method", "get"), a.get("action", "")))
        elif tag == "input" and self.forms:
            if a.get("type") == "hidden":
                self.forms[-1].fields.append((a["name"], a.get("value", "")))
            else:
                self.forms[-1].inputs.append(a["name"])
        elif tag == "button" and self.forms:
            self._button = True
            self.forms[-1].buttons.append("")
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self.tables[self._table][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if self._ids and self._ids[-1][0] == tag:
            self._ids.pop()
        if tag == "button":
            self._button = False
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        for _, element_id in self._ids:
            self.text_by_id[element_id] += data
        if self._button:
            self.forms[-1].buttons[-1] += data
        if self._table and self.tables[self._table] and self.tables[self._table][-1]:
            self.tables[self._table][-1][-1] += data

    def form(self, button: str, action: str | None = None) -> HtmlForm:
        """The first form whose button reads `button` (else starts with it), posting to
        `action` if given."""
        candidates = [f for f in self.forms if action is None or f.action == action]
        for matches in (str.__eq__, str.startswith):
            found = [f for f in candidates if any(matches(b, button) for b in f.buttons)]
            if found:
                return found[0]
        raise AssertionError((button, [f.buttons for f in self.forms]))

    def rows(self, table: str) -> list[list[str]]:
        return [row for row in self.tables[table] if row]


def submit(
    client: TestClient,
    form: HtmlForm,
    typed: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        form.action,
        content=_urlencoded([*form.fields, *(typed or {}).items()]),
        headers={
            **(SENT_BY_BROWSER if headers is None else headers),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def _urlencoded(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs)


def get_page(client: TestClient, path: str, **params: str) -> Page:
    response = client.get(path, params=params, headers=BROWSER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return Page(response.text)


def refusal(response: Any, status: int, code: str) -> str:
    """The reason on an error page, after checking it is one."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CSP
    page = Page(response.text)
    assert f"Error {code} (HTTP {status})" in response.text.replace("<code>", "").replace(
        "</code>", ""
    )
    assert "Nothing was changed." in response.text
    return page.text_by_id["reason"]


# --- What the tests start from ------------------------------------------------------------------


def letter(connection_id: str, letter_id: str, **changes: Any) -> DeadLetter:
    return replace(
        LETTER,
        id=letter_id,
        connection_id=connection_id,
        kwargs={**LETTER.kwargs, "connection_id": connection_id},
        **changes,
    )


@pytest.fixture
def letters(redis_server_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    return DeadLetterStore(redis_server_client, keys)


@pytest.fixture
def outbox(settings: Settings, redis_server_client: redis.Redis, keys: Keys) -> NoteOutbox:
    return NoteOutbox(redis_server_client, keys, settings.fernet)


def parked_note(outbox: NoteOutbox, connection_id: str, name: str = "Knee Rehab") -> str:
    when = utcnow().replace(microsecond=0) - timedelta(hours=1)
    note_id = helpers.recorded_note(outbox, connection_id, name, when)
    outbox.move(connection_id, note_id, {NoteState.QUEUED}, NoteState.POSTING)
    outbox.move(
        connection_id, note_id, {NoteState.POSTING}, NoteState.PARKED, reason="Halaxy answered 502"
    )
    return note_id


def failed_note(outbox: NoteOutbox, connection_id: str, name: str = "Ankle Rehab") -> str:
    when = utcnow().replace(microsecond=0) - timedelta(hours=1)
    note_id = helpers.recorded_note(outbox, connection_id, name, when)
    outbox.move(connection_id, note_id, {NoteState.QUEUED}, NoteState.FETCHING)
    outbox.move(
        connection_id,
        note_id,
        {NoteState.FETCHING},
        NoteState.FAILED,
        reason="Halaxy refused the note: Author not found",
    )
    return note_id


def audit(client: redis.Redis, keys: Keys, action: str | None = None) -> list[dict[str, str]]:
    """The trail's entries, their fields without their links in the hash chain."""
    entries = [
        {k.decode(): v.decode() for k, v in fields.items() if k.decode() not in CHAIN_FIELDS}
        for _, fields in client.xrange(keys.audit())
    ]
    return [e for e in entries if action is None or e["action"] == action]


def queued(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return queued_messages(client, keys, "live") + queued_messages(client, keys, "bulk")


# --- The same URLs, two audiences ---------------------------------------------------------------


def test_a_browser_gets_the_dead_letters_as_a_page_and_a_json_client_as_before(
    client: TestClient, letters: DeadLetterStore, connection: Connection
) -> None:
    letters.add(letter(connection.id, "m-1", reason="<script>alert(1)</script> refused"))
    letters.add(letter("cn_other", "m-2"))

    as_json = client.get("/ops/dead-letters", headers=JSON_CLIENT)
    assert as_json.headers["content-type"] == "application/json"
    assert [x["id"] for x in as_json.json()["dead_letters"]] == ["m-1", "m-2"]

    response = client.get("/ops/dead-letters", headers=BROWSER)
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in response.text
    assert "&lt;script&gt;" in response.text
    page = Page(response.text)
    rows = page.rows("dead-letters")
    assert [row[0] for row in rows] == ["m-2", "m-1"]  # the newest first
    assert rows[1][1] == f"Clinic One ({connection.id})"
    assert page.text_by_id["summary"] == "2 dead letters (no filter: all of them)."
    replay = page.form("Replay", "/ops/dead-letters/replay")
    assert replay.method == "post"
    assert replay.value("ids") == "m-2"
    assert re.fullmatch(r"[0-9]+\.[A-Za-z0-9_-]{43}", replay.value("csrf_token"))
    assert page.form("Replay all 2 matching").value("all_matching") == "yes"

    filtered = get_page(client, "/ops/dead-letters", connection=connection.id, since="1h")
    assert [row[0] for row in filtered.rows("dead-letters")] == ["m-1"]
    replay_all = filtered.form("Replay all 1 matching")
    assert dict(replay_all.fields) | {"csrf_token": ""} == {
        "csrf_token": "",
        "all_matching": "yes",
        "connection": connection.id,
        "since": "1h",
    }


def test_a_browser_gets_the_notes_as_pages_with_their_resolve_forms(
    client: TestClient, outbox: NoteOutbox, connection: Connection
) -> None:
    parked = parked_note(outbox, connection.id)
    failed = failed_note(outbox, connection.id)

    as_json = client.get("/ops/notes/parked", headers=JSON_CLIENT).json()
    assert [n["note_id"] for n in as_json["notes"]] == [parked]

    page = get_page(client, "/ops/notes/parked")
    [row] = page.rows("parked-notes")
    assert row[:3] == [parked, f"Clinic One ({connection.id})", "1001"]
    assert row[5] == "Halaxy answered 502"
    action = f"/ops/notes/{parked}/resolve"
    posted = page.form("Posted", action)
    assert (posted.value("resolution"), posted.value("state")) == ("posted", "parked")
    assert posted.inputs == ["docref_id"]
    assert page.form("Not posted (drop)", action).value("resolution") == "drop"
    assert page.form("Retry…", action).value("resolution") == "retry"
    assert page.text_by_id["summary"] == "1 parked note; showing 1 to 1."

    failed_page = get_page(client, "/ops/notes/failed")
    assert [r[0] for r in failed_page.rows("failed-notes")] == [failed]
    assert failed_page.form("Retry", f"/ops/notes/{failed}/resolve").buttons == ["Retry"]


def test_the_notes_page_has_pages(
    client: TestClient, outbox: NoteOutbox, connection: Connection
) -> None:
    ids = [parked_note(outbox, connection.id, f"Program {n}") for n in range(3)]
    first = client.get("/ops/notes/parked?limit=2", headers=BROWSER).text
    assert 'href="/ops/notes/parked?offset=2&amp;limit=2"' in first
    second = get_page(client, "/ops/notes/parked", limit="2", offset="2")
    assert len(second.rows("parked-notes")) == 1
    assert second.rows("parked-notes")[0][0] in ids
    assert refusal(client.get("/ops/notes/parked?limit=x", headers=BROWSER), 422, "invalid")


def test_refusals_are_pages_for_a_browser_and_json_for_others(client: TestClient) -> None:
    reason = refusal(client.get("/ops/dead-letters?since=soon", headers=BROWSER), 422, "invalid")
    assert "since must be an ISO 8601 time" in reason
    as_json = client.get("/ops/dead-letters?since=soon", headers=JSON_CLIENT)
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["error"] == "invalid"
    unsigned = client.get("/ops/dead-letters", headers={"Accept": "text/html"})
    assert unsigned.status_code == 401
    assert unsigned.headers["WWW-Authenticate"].startswith("Basic ")
    assert "text/html" in unsigned.headers["content-type"]
    missing = client.get("/ops/nothing-here", headers=BROWSER)
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"]
    # The webhooks answer JSON whatever the caller accepts.
    webhook = client.post("/webhooks/halaxy/cn_x/patient-created", headers={"Accept": "text/html"})
    assert webhook.headers["content-type"] == "application/json"


# --- Dead letters ---------------------------------------------------------------------------


def test_one_dead_letter_is_replayed_from_its_button(
    client: TestClient,
    letters: DeadLetterStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    letters.add(letter(connection.id, "m-1"))
    letters.add(letter(connection.id, "m-2"))
    page = get_page(client, "/ops/dead-letters")
    response = submit(client, page.form("Replay", "/ops/dead-letters/replay"))
    assert response.status_code == 200, response.text
    result = Page(response.text)
    assert "Replayed 1 dead letter, queued again as bulk work: m-2" in result.text_by_id["result"]
    assert [x.id for x in letters.list()] == ["m-1"]
    [message] = queued_messages(redis_server_client, keys, "bulk")
    assert message["actor_name"] == "sync_patient_bulk"
    assert message["kwargs"]["connection_id"] == connection.id
    [entry] = audit(redis_server_client, keys, "dead_letter.replayed")
    assert (entry["actor"], entry["connection_id"]) == ("bootstrap-admin", connection.id)
    assert entry["resource_ids"].startswith("m-2 ")

    # The same button again: the letter is not dead any more.
    again = submit(client, page.form("Replay", "/ops/dead-letters/replay"))
    assert "not a dead letter: m-2" in refusal(again, 404, "not_dead_letter")
    assert len(queued_messages(redis_server_client, keys, "bulk")) == 1
    [refused] = audit(redis_server_client, keys, "console.refused")
    assert refused["resource_ids"] == "POST /ops/dead-letters/replay"
    assert refused["outcome"] == "not_dead_letter"


def test_a_filtered_set_is_replayed_only_after_its_confirmation(
    client: TestClient,
    letters: DeadLetterStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    for n in range(3):
        letters.add(letter(connection.id, f"m-{n}"))
    letters.add(letter("cn_other", "m-other"))
    page = get_page(client, "/ops/dead-letters", connection=connection.id)

    asked = submit(client, page.form("Replay all 3 matching"))
    assert asked.status_code == 200
    confirm = Page(asked.text)
    happens = confirm.text_by_id["what-happens"]
    assert f"3 dead letters matching connection {connection.id} will be queued again" in happens
    assert all(f"m-{n}:" in confirm.text_by_id["replay-ids"] for n in range(3))
    assert "m-other" not in asked.text
    assert len(letters.list()) == 4  # nothing yet
    assert queued(redis_server_client, keys) == []
    button = confirm.form("Replay these 3")
    assert [v for k, v in button.fields if k == "ids"] == ["m-0", "m-1", "m-2"]
    assert button.value("confirmed") == "yes"

    letters.remove("m-1")  # someone else got there first
    done = submit(client, button)
    assert done.status_code == 200, done.text
    result = Page(done.text).text_by_id["result"]
    assert "Replayed 2 dead letters, queued again as bulk work: m-0, m-2" in result
    assert "1 no longer dead (replayed or purged meanwhile), left alone: m-1" in result
    assert [x.id for x in letters.list()] == ["m-other"]
    assert len(queued_messages(redis_server_client, keys, "bulk")) == 2
    assert len(audit(redis_server_client, keys, "dead_letter.replayed")) == 2


def test_replay_all_matching_nothing_is_a_404_page(
    client: TestClient, letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    letters.add(letter("cn_a", "m-1"))
    page = get_page(client, "/ops/dead-letters")
    form = page.form("Replay all 1 matching")
    letters.remove("m-1")
    assert "nothing to replay" in refusal(submit(client, form), 404, "no_dead_letters")


# --- Notes ----------------------------------------------------------------------------------


def test_a_parked_note_is_resolved_as_posted_with_its_id(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    note_id = parked_note(outbox, connection.id)
    form = get_page(client, "/ops/notes/parked").form("Posted")
    no_id = submit(client, form)
    assert "posted needs the DocumentReference id" in refusal(no_id, 422, "invalid")
    assert outbox.get(connection.id, note_id).state is NoteState.PARKED  # type: ignore[union-attr]

    done = submit(client, form, typed={"docref_id": "DR-4411"})
    assert done.status_code == 200, done.text
    assert "as DocumentReference DR-4411" in Page(done.text).text_by_id["result"]
    settled = outbox.get(connection.id, note_id)
    assert settled is not None
    assert (settled.state, settled.docref_id, settled.resolved_by) == (
        NoteState.POSTED,
        "DR-4411",
        "bootstrap-admin",
    )
    [entry] = audit(redis_server_client, keys, "note.resolved")
    assert entry["outcome"] == "posted"
    assert queued(redis_server_client, keys) == []


def test_dropping_a_note_is_confirmed_first(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    note_id = parked_note(outbox, connection.id)
    asked = submit(client, get_page(client, "/ops/notes/parked").form("Not posted (drop)"))
    assert asked.status_code == 200
    confirm = Page(asked.text)
    happens = confirm.text_by_id["what-happens"]
    assert note_id in happens
    assert "the bridge will never post it" in happens
    assert outbox.get(connection.id, note_id).state is NoteState.PARKED  # type: ignore[union-attr]

    done = submit(client, confirm.form("Drop it"))
    assert done.status_code == 200, done.text
    assert outbox.get(connection.id, note_id).state is NoteState.DROPPED  # type: ignore[union-attr]
    assert [e["outcome"] for e in audit(redis_server_client, keys, "note.resolved")] == ["drop"]


def test_retrying_a_parked_note_is_confirmed_first_with_a_warning(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    note_id = parked_note(outbox, connection.id)
    asked = submit(client, get_page(client, "/ops/notes/parked").form("Retry…"))
    assert asked.status_code == 200
    assert "A note posted twice cannot be deleted from Halaxy" in asked.text
    assert queued(redis_server_client, keys) == []

    done = submit(client, Page(asked.text).form("Post it again"))
    assert done.status_code == 200, done.text
    assert outbox.get(connection.id, note_id).state is NoteState.QUEUED  # type: ignore[union-attr]
    [job] = queued_messages(redis_server_client, keys, "live")
    assert job["kwargs"]["note_id"] == note_id


def test_retrying_a_failed_note_goes_at_once(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    note_id = failed_note(outbox, connection.id)
    done = submit(client, get_page(client, "/ops/notes/failed").form("Retry"))
    assert done.status_code == 200, done.text
    assert "queued to be posted to Halaxy again" in Page(done.text).text_by_id["result"]
    assert outbox.get(connection.id, note_id).state is NoteState.QUEUED  # type: ignore[union-attr]
    assert len(queued_messages(redis_server_client, keys, "live")) == 1


def test_a_note_that_moved_or_went_is_a_409_or_404_page(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    note_id = parked_note(outbox, connection.id)
    form = get_page(client, "/ops/notes/parked").form("Posted")
    # Meanwhile someone else retried it and it failed.
    outbox.move(connection.id, note_id, {NoteState.PARKED}, NoteState.FAILED, reason="x")
    moved = submit(client, form, typed={"docref_id": "DR-1"})
    assert f"note {note_id} is failed, not parked" in refusal(moved, 409, "note_state_changed")
    assert outbox.get(connection.id, note_id).state is NoteState.FAILED  # type: ignore[union-attr]

    outbox.move(connection.id, note_id, {NoteState.FAILED}, NoteState.DROPPED)
    gone = submit(client, form, typed={"docref_id": "DR-1"})
    assert f"no parked or failed note {note_id}" in refusal(gone, 404, "unknown_note")
    outcomes = [e["outcome"] for e in audit(redis_server_client, keys, "console.refused")]
    assert outcomes == ["note_state_changed", "unknown_note"]
    assert audit(redis_server_client, keys, "note.resolved") == []


# --- CSRF and origin ------------------------------------------------------------------------


@pytest.fixture
def replay_button(client: TestClient, letters: DeadLetterStore, connection: Connection) -> HtmlForm:
    letters.add(letter(connection.id, "m-1"))
    return get_page(client, "/ops/dead-letters").form("Replay", "/ops/dead-letters/replay")


def assert_nothing_changed(
    letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    assert [x.id for x in letters.list()] == ["m-1"]
    assert queued(redis_server_client, keys) == []
    assert audit(redis_server_client, keys, "dead_letter.replayed") == []


def with_token(form: HtmlForm, token: str | None) -> HtmlForm:
    fields = [(k, v) for k, v in form.fields if k != "csrf_token"]
    return replace(form, fields=fields if token is None else [("csrf_token", token), *fields])


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "csrf_missing"),
        ("", "csrf_missing"),
        ("forged", "csrf_invalid"),
        ("1700000000." + "A" * 43, "csrf_invalid"),
    ],
    ids=["missing", "empty", "garbage", "well-formed-forgery"],
)
def test_a_form_without_a_valid_token_is_refused_and_audited(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    token: str | None,
    code: str,
) -> None:
    reason = refusal(submit(client, with_token(replay_button, token)), 403, code)
    assert "open the page again" in reason
    assert_nothing_changed(letters, redis_server_client, keys)
    [entry] = audit(redis_server_client, keys, "console.refused")
    assert entry == {
        "actor": "bootstrap-admin",
        "action": "console.refused",
        "connection_id": "",
        "resource_ids": "POST /ops/dead-letters/replay",
        "outcome": code,
    }


def test_a_token_for_another_action_or_another_credential_is_refused(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    settings: Settings,
) -> None:
    parked_note(outbox, connection.id)
    resolve = get_page(client, "/ops/notes/parked").form("Retry…")
    stolen = with_token(replay_button, resolve.value("csrf_token"))
    assert "not valid for you and this action" in refusal(
        submit(client, stolen), 403, "csrf_invalid"
    )

    # A token issued, for this very action, to another credential.
    other = credential_identity("another-admin-token-0123456789abcdef")
    foreign = issue_token(csrf_keys(settings), other, "/ops/dead-letters/replay")
    refusal(submit(client, with_token(replay_button, foreign)), 403, "csrf_invalid")
    assert_nothing_changed(letters, redis_server_client, keys)


def test_a_form_older_than_the_token_lifetime_is_refused_as_expired(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    with time_machine.travel(utcnow() + TOKEN_LIFETIME + timedelta(seconds=5), tick=False):
        reason = refusal(submit(client, replay_button), 403, "csrf_expired")
    assert "the form has expired" in reason
    assert_nothing_changed(letters, redis_server_client, keys)


@pytest.mark.parametrize(
    "origin_headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["other-site", "null", "lookalike", "lying-fetch-site", "cross-site", "same-site"],
)
def test_a_form_sent_from_another_site_is_refused_even_with_a_valid_token(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    origin_headers: dict[str, str],
) -> None:
    response = submit(client, replay_button, headers={**BROWSER, **origin_headers})
    assert "sent from another site" in refusal(response, 403, "cross_site")
    assert_nothing_changed(letters, redis_server_client, keys)
    [entry] = audit(redis_server_client, keys, "console.refused")
    assert entry["outcome"] == "cross_site"


@pytest.mark.parametrize(
    "origin_headers",
    [{}, {"Origin": "https://bridge.example.test"}, {"Origin": "HTTP://TESTSERVER"}],
    ids=["no-origin", "public-url", "own-origin-uppercase"],
)
def test_a_form_from_the_bridge_itself_or_a_script_without_origin_is_taken(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    origin_headers: dict[str, str],
) -> None:
    response = submit(client, replay_button, headers={**BROWSER, **origin_headers})
    assert response.status_code == 200, response.text
    assert letters.list() == []


def test_a_form_post_needs_credentials_first(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    headers = {k: v for k, v in SENT_BY_BROWSER.items() if k != "Authorization"}
    assert submit(client, replay_button, headers=headers).status_code == 401
    wrong = {**SENT_BY_BROWSER, "Authorization": basic(TOKEN + "x")}
    assert submit(client, replay_button, headers=wrong).status_code == 401
    assert_nothing_changed(letters, redis_server_client, keys)
    assert audit(redis_server_client, keys, "console.refused") == []  # not an admin's attempt


def test_json_clients_keep_their_api_and_a_form_needs_its_token(
    client: TestClient, replay_button: HtmlForm, letters: DeadLetterStore
) -> None:
    # A form-encoded post from a script is a form: it needs the token like any other.
    unsigned = client.post(
        "/ops/dead-letters/replay",
        content="ids=m-1",
        headers={**JSON_CLIENT, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert unsigned.status_code == 403
    assert unsigned.json()["error"] == "csrf_missing"
    # Other kinds of body still go to the JSON API, which refuses what is not JSON, and takes
    # no Basic credentials: a browser's remembered password cannot drive it.
    text = client.post(
        "/ops/dead-letters/replay",
        content="ids=m-1",
        headers={**JSON_CLIENT, "Content-Type": "text/plain"},
    )
    assert text.status_code == 415
    for content_type in ("text/plain", "application/json", "multipart/form-data; boundary=x"):
        basic_auth = client.post(
            "/ops/dead-letters/replay",
            content='{"ids": ["m-1"]}',
            headers={**SENT_BY_BROWSER, "Content-Type": content_type},
        )
        assert basic_auth.status_code == 401
    assert [x.id for x in letters.list()] == ["m-1"]


def test_a_form_that_is_not_utf8_too_big_or_has_too_many_fields_is_refused(
    client: TestClient,
    replay_button: HtmlForm,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    headers = {**SENT_BY_BROWSER, "Content-Type": "application/x-www-form-urlencoded"}
    for body, status in [
        (b"ids=%ff%fe", 400),
        (b"ids=" + b"x" * 70_000, 413),
        (b"&".join([b"a=1"] * 3000), 413),
    ]:
        response = client.post("/ops/dead-letters/replay", content=body, headers=headers)
        assert response.status_code == status
    assert_nothing_changed(letters, redis_server_client, keys)


FIELD_NAMES = st.sampled_from(
    [
        "ids",
        "all_matching",
        "connection",
        "since",
        "reason",
        "confirmed",
        "resolution",
        "state",
        "docref_id",
    ]
) | st.text(max_size=10)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pairs=st.lists(st.tuples(FIELD_NAMES, st.text(max_size=30)), max_size=8),
    target=st.sampled_from(["replay", "resolve", "resolve-unknown"]),
)
def test_any_signed_form_is_answered_without_a_server_error_and_a_refusal_changes_nothing(
    client: TestClient,
    outbox: NoteOutbox,
    connection: Connection,
    letters: DeadLetterStore,
    redis_server_client: redis.Redis,
    keys: Keys,
    settings: Settings,
    pairs: list[tuple[str, str]],
    target: str,
) -> None:
    if not letters.list():
        letters.add(letter(connection.id, "m-1"))
    note_id = parked_note(outbox, connection.id, f"Program {uuid.uuid4().hex}")
    path = {
        "replay": "/ops/dead-letters/replay",
        "resolve": f"/ops/notes/{note_id}/resolve",
        "resolve-unknown": "/ops/notes/no-such-note/resolve",
    }[target]
    token = issue_token(csrf_keys(settings), credential_identity(TOKEN), path)
    before = (
        [x.id for x in letters.list()],
        len(queued(redis_server_client, keys)),
        outbox.get(connection.id, note_id),
    )
    form = HtmlForm("post", path, [("csrf_token", token), *pairs])
    response = submit(client, form)
    assert response.status_code in {200, 400, 404, 409, 413, 422}, response.text
    if response.status_code != 200 or "Nothing has changed yet" in response.text:
        after = (
            [x.id for x in letters.list()],
            len(queued(redis_server_client, keys)),
            outbox.get(connection.id, note_id),
        )
        assert after == before


# --- The confirmation helper ------------------------------------------------------------------


class Signer:
    def token(self, action: str) -> str:
        return f"token-for-{action}"


def test_a_typed_confirmation_asks_for_the_text_and_refuses_anything_else() -> None:
    typed = Typed("cn_abc123")
    page = confirmation_page(
        Signer(),
        title="Offboard Clinic <One>?",
        happens=["Everything the bridge holds for cn_abc123 is erased."],
        action="/admin/connections/cn_abc123/offboard",
        fields={"ids": ["a", "b"]},
        button="Offboard",
        back="/ops",
        typed=typed,
    )
    html = bytes(page.body).decode()
    parsed = Page(html)
    form = parsed.form("Offboard")
    assert form.action == "/admin/connections/cn_abc123/offboard"
    assert form.fields == [
        ("csrf_token", "token-for-/admin/connections/cn_abc123/offboard"),
        ("ids", "a"),
        ("ids", "b"),
        ("confirmed", "yes"),
    ]
    assert form.inputs == ["typed_confirmation"]
    assert "Type cn_abc123 to confirm" in html
    assert "Offboard Clinic &lt;One&gt;?" in html

    assert Form([]).confirmed(typed) is False
    assert Form([("confirmed", "no")]).confirmed() is False
    assert Form([("confirmed", "yes")]).confirmed() is True
    for wrong in ([], [("typed_confirmation", "cn_abc12")], [("typed_confirmation", " cn_abc123")]):
        with pytest.raises(ApiError) as caught:
            Form([("confirmed", "yes"), *wrong]).confirmed(typed)
        assert (caught.value.status, caught.value.code) == (422, "confirmation_mismatch")
    assert Form([("confirmed", "yes"), ("typed_confirmation", "cn_abc123")]).confirmed(typed)


# --- Escaping ---------------------------------------------------------------------------------


@given(cells=st.lists(st.text(max_size=40), min_size=1, max_size=4), title=st.text(max_size=30))
def test_any_text_in_a_page_stays_text(cells: list[str], title: str) -> None:
    html = bytes(whole_page(title, table("t", ["a"] * len(cells), [cells])).body).decode()
    parsed = Page(html)
    assert parsed.rows("t") == [cells]
    assert [f.action for f in parsed.forms] == []
    assert "<script" not in html.lower().replace("&lt;script", "")

"""The console in a real headless Chromium (Playwright driving the system's Chromium): replay
one dead letter, replay a filtered set through its confirmation, resolve a parked note each
way; a forged CSRF token and a form sent from another site are refused, changing nothing.

The worker is not running: a replay is seen by the letter leaving the dead-letter store and
its job waiting on the queue."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from html import escape
from typing import TYPE_CHECKING, Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from shared.connections.model import Connection
from shared.infra.store import Keys
from shared.notes.outbox import NoteOutbox, NoteState
from shared.ops.dead_letters import DeadLetterStore
from tests.browser import (
    SeenPosts,
    ServerThread,
    post_status,
    signed_in,
)
from tests.helpers import queued_messages
from tests.services.test_console import audit, letter, parked_note

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with signed_in(browser, TOKEN) as opened:
        yield opened


def test_replay_one_dead_letter(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, seen = served
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(letter(connection.id, "m-1"))
    letters.add(letter(connection.id, "m-2"))

    page.goto(f"{url}/ops/dead-letters")
    row = page.locator("#dead-letters tbody tr", has_text="m-1")
    status = post_status(page, row.get_by_role("button", name="Replay", exact=True).click)

    assert status == 200
    assert "Replayed 1 dead letter, queued again as bulk work: m-1" in page.inner_text("#result")
    assert [x.id for x in letters.list()] == ["m-2"]
    [job] = queued_messages(redis_server_client, keys, "bulk")
    assert job["kwargs"]["connection_id"] == connection.id
    # The browser said where the form came from: the bridge's own page.
    [post] = seen.posts
    assert post == {
        "path": "/ops/dead-letters/replay",
        "origin": url,
        "sec-fetch-site": "same-origin",
        "content-type": "application/x-www-form-urlencoded",
    }

    page.click("text=Back to the dead letters")
    assert page.locator("#dead-letters tbody tr").all_inner_texts()[0].startswith("m-2")


def test_replay_a_filtered_set_through_its_confirmation(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, _ = served
    letters = DeadLetterStore(redis_server_client, keys)
    for n in range(3):
        letters.add(letter(connection.id, f"m-{n}"))
    letters.add(letter("cn_elsewhere", "m-other"))

    page.goto(f"{url}/ops/dead-letters")
    page.select_option("select[name=connection]", connection.id)
    page.fill("input[name=since]", "1h")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_load_state()
    assert page.locator("#dead-letters tbody tr").count() == 3

    assert post_status(page, page.get_by_role("button", name="Replay all 3 matching…").click) == 200
    happens = page.inner_text("#what-happens")
    assert f"3 dead letters matching connection {connection.id}, since 1h" in happens
    assert "m-other" not in page.content()
    assert len(letters.list()) == 4  # confirmation first: nothing yet
    assert queued_messages(redis_server_client, keys, "bulk") == []

    assert post_status(page, page.get_by_role("button", name="Replay these 3").click) == 200
    assert "Replayed 3 dead letters" in page.inner_text("#result")
    assert [x.id for x in letters.list()] == ["m-other"]
    assert len(queued_messages(redis_server_client, keys, "bulk")) == 3
    assert len(audit(redis_server_client, keys, "dead_letter.replayed")) == 3


def test_resolve_parked_notes_posted_not_posted_and_retry(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
    outbox: NoteOutbox,
) -> None:
    url, _ = served
    posted = parked_note(outbox, connection.id, "Posted after all")
    dropped = parked_note(outbox, connection.id, "Never arrived")
    retried = parked_note(outbox, connection.id, "Try again")

    def row(note_id: str) -> Any:
        page.goto(f"{url}/ops/notes/parked")
        return page.locator("#parked-notes tbody tr", has_text=note_id)

    # Posted: the DocumentReference id the person found in Halaxy; no confirmation.
    found = row(posted)
    found.get_by_label("DocumentReference id").fill("DR-5150")
    assert post_status(page, found.get_by_role("button", name="Posted", exact=True).click) == 200
    assert "DocumentReference DR-5150" in page.inner_text("#result")

    # Not posted: confirmed first.
    found = row(dropped)
    assert post_status(page, found.get_by_role("button", name="Not posted (drop)…").click) == 200
    assert "the bridge will never post it" in page.inner_text("#what-happens")
    assert outbox.get(connection.id, dropped).state is NoteState.PARKED  # type: ignore[union-attr]
    assert post_status(page, page.get_by_role("button", name="Drop it (not posted)").click) == 200

    # Retry of a parked note: confirmed first, with the warning about a second copy.
    found = row(retried)
    assert post_status(page, found.get_by_role("button", name="Retry…").click) == 200
    assert "cannot be deleted from Halaxy" in page.inner_text(".warning")
    assert post_status(page, page.get_by_role("button", name="Post it again").click) == 200
    assert "queued to be posted to Halaxy again" in page.inner_text("#result")

    states = {n: outbox.get(connection.id, n).state for n in (posted, dropped, retried)}  # type: ignore[union-attr]
    assert states == {
        posted: NoteState.POSTED,
        dropped: NoteState.DROPPED,
        retried: NoteState.QUEUED,
    }
    assert outbox.get(connection.id, posted).docref_id == "DR-5150"  # type: ignore[union-attr]
    [job] = queued_messages(redis_server_client, keys, "live")
    assert job["kwargs"]["note_id"] == retried
    outcomes = [e["outcome"] for e in audit(redis_server_client, keys, "note.resolved")]
    assert outcomes == ["posted", "drop", "retry"]
    page.goto(f"{url}/ops/notes/parked")
    assert page.inner_text("#summary").startswith("0 parked notes")


def test_a_forged_csrf_token_is_refused_and_changes_nothing(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, _ = served
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(letter(connection.id, "m-1"))
    page.goto(f"{url}/ops/dead-letters")
    row = page.locator("#dead-letters tbody tr", has_text="m-1")
    genuine = row.locator("input[name=csrf_token]").get_attribute("value")
    issued, _, mac = (genuine or "").partition(".")
    forged = f"{issued}.{mac[::-1]}"
    row.locator("input[name=csrf_token]").evaluate("(input, value) => input.value = value", forged)

    status = post_status(page, row.get_by_role("button", name="Replay", exact=True).click)

    assert status == 403
    assert "not valid for you and this action" in page.inner_text("#reason")
    assert "Nothing was changed." in page.inner_text("body")
    assert [x.id for x in letters.list()] == ["m-1"]
    assert queued_messages(redis_server_client, keys, "bulk") == []
    [entry] = audit(redis_server_client, keys, "console.refused")
    assert entry["outcome"] == "csrf_invalid"


def test_a_form_on_another_site_is_refused_even_with_a_stolen_valid_token(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, seen = served
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(letter(connection.id, "m-1"))
    page.goto(f"{url}/ops/dead-letters")
    row = page.locator("#dead-letters tbody tr", has_text="m-1")
    token = row.locator("input[name=csrf_token]").get_attribute("value") or ""

    # Another site (localhost is not 127.0.0.1) with a form aimed at the bridge, carrying a
    # token that would be valid: only the origin gives it away.
    async def lure(request: Any) -> HTMLResponse:
        return HTMLResponse(
            f'<form method="post" action="{escape(url)}/ops/dead-letters/replay">'
            f'<input type="hidden" name="csrf_token" value="{escape(token)}">'
            '<input type="hidden" name="ids" value="m-1">'
            "<button>Win a prize</button></form>"
        )

    with ServerThread(Starlette(routes=[Route("/", lure)]), host="localhost") as other:
        page.goto(f"http://localhost:{other.port}/")
        status = post_status(page, page.get_by_role("button", name="Win a prize").click)

    assert status == 403
    assert "sent from another site" in page.inner_text("#reason")
    assert seen.posts[-1]["origin"] == f"http://localhost:{other.port}"
    assert seen.posts[-1]["sec-fetch-site"] == "cross-site"
    assert [x.id for x in letters.list()] == ["m-1"]
    assert queued_messages(redis_server_client, keys, "bulk") == []
    [entry] = audit(redis_server_client, keys, "console.refused")
    assert entry["outcome"] == "cross_site"


def test_a_post_from_playwrights_request_context_with_a_foreign_origin_is_refused(
    page: Page,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, _ = served
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(letter(connection.id, "m-1"))
    page.goto(f"{url}/ops/dead-letters")
    token = page.locator("#dead-letters input[name=csrf_token]").first.get_attribute("value")
    basic = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    answer = page.request.post(
        f"{url}/ops/dead-letters/replay",
        form={"csrf_token": token or "", "ids": "m-1"},
        headers={
            "Origin": "https://evil.example",
            "Accept": "text/html",
            "Authorization": f"Basic {basic}",
        },
    )
    assert answer.status == 403
    assert "sent from another site" in answer.text()
    assert [x.id for x in letters.list()] == ["m-1"]


@pytest.fixture
def outbox(redis_server_client: redis.Redis, keys: Keys, settings: Any) -> NoteOutbox:
    return NoteOutbox(redis_server_client, keys, settings.fernet)

"""The console in a real headless Chromium: an event found by its id and its dead letter
replayed from its page; a connection's page: an operator pauses and resumes it and
disables it through a confirmation, an admin offboards it by typing its id (a wrong id erases
nothing), and a viewer sees the page but has no button, and a post made without one is refused,
audited, and changes nothing."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
import redis

from shared.connections.model import Connection
from shared.connections.pause import PausedConnections
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.store import Keys
from shared.ops.admins import Role
from shared.ops.dead_letters import DeadLetterStore
from shared.telemetry.attempts import Call
from shared.telemetry.event_log import (
    Attempt,
    AttemptOutcome,
    EventLog,
    EventRecord,
    EventSource,
    EventState,
    EventStatus,
)
from tests.browser import SeenPosts, post_status, signed_in
from tests.helpers import named_admin
from tests.services.test_console import letter

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

TOKEN = os.environ["BRIDGE_ADMIN_TOKEN"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def open_connection(page: Page, url: str, connection: Connection) -> None:
    """From the status page, by the connection's id in its table (a link to its page)."""
    page.goto(f"{url}/ops")
    page.locator("#connections").get_by_role("link", name=f"{connection.name}: its page").click()
    page.wait_for_load_state()
    assert page.inner_text("h1") == f"Connection {connection.name}"


def enabled(store: ConnectionStore, connection: Connection) -> bool:
    stored = store.get(connection.id)
    assert stored is not None
    return stored.enabled


def state_of(page: Page) -> str:
    return page.locator("#connection tr", has_text="state").inner_text()


def test_an_operator_pauses_resumes_and_disables_a_connection(
    browser: Browser,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    connection: Connection,
) -> None:
    url, _ = served
    name = unique("oscar")
    pauses = PausedConnections(redis_server_client, keys)
    with signed_in(browser, named_admin(redis_server_client, keys, name, Role.OPERATOR)) as page:
        open_connection(page, url, connection)
        assert "running" in state_of(page)
        # An operator is not offered what needs the admin role.
        assert page.get_by_role("button", name="Offboard…").count() == 0

        assert post_status(page, page.get_by_role("button", name="Pause").click) == 200
        assert "Paused: its webhooks are still taken and kept" in page.inner_text("#result")
        assert pauses.is_paused(connection.id)
        page.click("text=Back to the connection")
        assert "paused" in state_of(page)

        assert post_status(page, page.get_by_role("button", name="Resume").click) == 200
        assert "Resumed." in page.inner_text("#result")
        assert not pauses.is_paused(connection.id)
        page.click("text=Back to the connection")

        # A test event: queued through the connection, its trail one link away (no worker
        # runs here: it waits, queued).
        click = page.get_by_role("button", name="Send a test event").click
        assert post_status(page, click) == 200
        page.click("text=The test event's trail")
        page.wait_for_load_state()
        assert "test-event" in page.content()
        assert "queued" in page.inner_text("main")
        page.goto(f"{url}/ops/connections/{connection.id}")

        # Disable asks first; the confirmation changes nothing until it is pressed.
        assert post_status(page, page.get_by_role("button", name="Disable…").click) == 200
        assert "stops taking webhooks" in page.inner_text("#what-happens")
        assert enabled(store, connection)
        assert post_status(page, page.get_by_role("button", name="Disable it").click) == 200
        assert not enabled(store, connection)

        page.click("text=Back to the connection")
        assert post_status(page, page.get_by_role("button", name="Enable").click) == 200
        assert enabled(store, connection)

    actions = [
        e.action
        for e in AuditTrail(redis_server_client, keys).entries(connection_id=connection.id)
        if e.actor == name
    ]
    assert actions == [
        "connection.paused",
        "connection.resumed",
        "connection.test_event",
        "connection.disabled",
        "connection.enabled",
    ]


def test_an_admin_offboards_a_connection_by_typing_its_id(
    browser: Browser,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    connection: Connection,
) -> None:
    url, _ = served
    DeadLetterStore(redis_server_client, keys).add(letter(connection.id, "m-gone"))
    with signed_in(browser, TOKEN) as page:
        open_connection(page, url, connection)
        assert post_status(page, page.get_by_role("button", name="Offboard…").click) == 200
        assert "cannot be undone" in page.content()

        # A wrong id: refused with the reason on the page, nothing erased.
        page.fill("input[name=typed_confirmation]", "cn_someotherclinic")
        click = page.get_by_role("button", name="Erase everything of this clinic").click
        assert post_status(page, click) == 422
        assert f"type {connection.id} exactly" in page.content()
        assert store.get(connection.id) is not None

        page.go_back()
        page.wait_for_load_state()
        page.fill("input[name=typed_confirmation]", connection.id)
        click = page.get_by_role("button", name="Erase everything of this clinic").click
        assert post_status(page, click) == 200
        assert f"Erased everything of {connection.id}" in page.inner_text("#result")

    assert store.get(connection.id) is None
    named = []
    for key in redis_server_client.scan_iter(match=f"{keys.namespace}:*"):
        text = bytes(key).decode()
        kind = redis_server_client.type(key).decode()
        if kind == "string":
            values = [redis_server_client.get(key) or b""]
        elif kind == "hash":
            values = [k + b"=" + v for k, v in redis_server_client.hgetall(key).items()]
        elif kind == "list":
            values = redis_server_client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(redis_server_client.smembers(key))
        elif kind == "zset":
            values = redis_server_client.zrange(key, 0, -1)
        else:
            continue  # the audit stream: kept, never rewritten
        if connection.id in text or any(connection.id.encode() in v for v in values):
            named.append(text)
    assert named == []
    [erasure] = AuditTrail(redis_server_client, keys).entries(
        connection_id=connection.id, action="connection.offboarded"
    )
    assert erasure.actor == "bootstrap-admin"


def test_a_viewer_sees_a_connection_but_cannot_act_on_it(
    browser: Browser,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    url, _ = served
    name = unique("vera")
    with signed_in(browser, named_admin(redis_server_client, keys, name, Role.VIEWER)) as page:
        open_connection(page, url, connection)
        assert "running" in state_of(page)
        assert page.locator("form").count() == 0
        assert f"You ({name}) have the viewer role" in page.content()

        # A post made by hand with the viewer's credentials (there is no form to take a CSRF
        # token from): refused for the role, before anything else.
        answer = page.request.post(
            f"{url}/admin/connections/{connection.id}/pause",
            form={"csrf_token": "x"},
            headers={"Origin": url},
        )
        assert answer.status == 403
        assert "needs the operator role" in answer.text()

    assert not PausedConnections(redis_server_client, keys).is_paused(connection.id)
    [refused] = [
        e
        for e in AuditTrail(redis_server_client, keys).entries()
        if e.actor == name and e.action == "access.refused"
    ]
    assert refused.outcome == "refused: needs the operator role"


def test_what_happened_to_an_event_is_one_search_and_it_is_replayed_there(
    browser: Browser,
    served: tuple[str, SeenPosts],
    redis_server_client: redis.Redis,
    keys: Keys,
    connection: Connection,
) -> None:
    """ "What happened to Halaxy event X for clinic Y?": the event id in the search, its page,
    its dead letter replayed from it, and the log saying so."""
    url, _ = served
    event_id = unique("ev")
    events = EventLog(redis_server_client, keys)
    now = utcnow()
    events.received(
        EventRecord(
            event_id=event_id,
            connection_id=connection.id,
            source=EventSource.HALAXY_WEBHOOK,
            event_type="patient-updated",
            resource_id="1001",
            received_at=now,
        )
    )
    failed = Attempt(
        at=now,
        outcome=AttemptOutcome.DEAD,
        actor="sync_patient",
        detail="PatientNotUsable",
        status_code=200,
        seconds=0.2,
        calls=(Call("halaxy", "GET", "/main/Patient/{id}", 200, 0.1),),
        message_id="m-dead-ev",
    )
    events.attempted(
        connection.id, event_id, failed, EventStatus(EventState.DEAD, now, "m-dead-ev")
    )
    dead = letter(connection.id, "m-dead-ev")
    dead = replace(dead, kwargs={**dead.kwargs, "event_id": event_id})
    letters = DeadLetterStore(redis_server_client, keys)
    letters.add(dead)

    with signed_in(
        browser, named_admin(redis_server_client, keys, unique("otto"), Role.OPERATOR)
    ) as page:
        page.goto(f"{url}/ops/events")
        page.fill("input[name=connection]", connection.id)
        page.fill("input[name=event]", event_id)
        page.get_by_role("button", name="Search").click()
        page.wait_for_load_state()
        [row] = page.locator("#events tbody tr").all_inner_texts()
        assert "dead" in row
        assert "m-dead-ev" in row

        page.get_by_role("link", name=event_id).click()
        page.wait_for_load_state()
        assert "halaxy GET" in page.content()
        assert page.inner_text("#dead-letter-id") == "m-dead-ev"
        assert post_status(page, page.get_by_role("button", name="Replay").click) == 200
        assert "Replayed 1 dead letter" in page.inner_text("#result")

    assert letters.get("m-dead-ev") is None
    [view] = events.get(event_id, connection.id)
    assert view.status.state is EventState.QUEUED

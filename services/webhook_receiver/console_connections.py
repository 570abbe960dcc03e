"""The console's page of one connection, and its buttons: pause, resume, enable, disable and
offboard (and, with the event log, a test event).

`GET /ops/connections/{id}` shows the connection (no secret) and the buttons the caller's role
allows; a viewer sees the page without them. Each button posts a form, at the admin API's own
URL (`forms.negotiated`), to the same action the API runs (`connection_actions`). Disabling
asks for a confirmation; offboarding for the connection's id typed again, and the admin role.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import admin
from services.webhook_receiver import connection_actions as actions
from services.webhook_receiver.admin import authorize, call, existing_connection
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.forms import (
    Form,
    FormSigner,
    actor_of,
    form_action,
    form_signer,
    may_act,
    negotiated,
)
from services.webhook_receiver.pages import (
    Markup,
    Typed,
    confirmation_page,
    join,
    link,
    moment,
    page,
    post_form,
    result_page,
    table,
    tag,
)
from services.webhook_receiver.responses import ApiError
from shared.connections import Connection, Holding
from shared.ops import Role

PAGE_PATH = "/ops/connections/{}"
ACTION_PATH = "/admin/connections/{}/{}"


def page_path(connection_id: str) -> str:
    return PAGE_PATH.format(connection_id)


def action_path(connection_id: str, action: str) -> str:
    return ACTION_PATH.format(connection_id, action)


async def connection_page(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    held: Holding = await call(actions.holding, deps, connection)
    circuits: list[dict[str, Any]] = await call(actions.circuits, deps, connection)
    rows = [
        ("name", connection.name),
        ("id", connection.id),
        ("state", _state(connection, held)),
        ("held messages", str(held.held)),
        ("paused since", moment(held.paused.paused_at.isoformat()) if held.paused else "—"),
        *((f"{c['upstream']} circuit", _circuit(c)) for c in circuits),
        ("platform", f"{connection.platform.value} at {connection.platform_base_url}"),
        ("Halaxy", connection.halaxy_base_url),
        ("created", moment(connection.created_at.isoformat())),
        ("updated", moment(connection.updated_at.isoformat())),
    ]
    details = table("connection", ["what", "value"], rows)
    links = tag(
        "p",
        join(
            [
                link("/ops/events", "Its events", connection=connection.id),
                Markup(" · "),
                link("/ops/dead-letters", "Its dead letters", connection=connection.id),
                Markup(" · "),
                link("/ops", "Status"),
            ]
        ),
    )
    if may_act(request):
        signer = form_signer(request, deps)
        buttons = _buttons(signer, connection, held, admin=may_act(request, Role.ADMIN))
    else:
        buttons = tag("p", f"You ({actor_of(request)}) have the viewer role: you can see, not act.")
    return page(
        f"Connection {connection.name}",
        join([details, links, tag("h2", "Actions"), buttons]),
        current=None,
    )


def _circuit(circuit: dict[str, Any]) -> str:
    """A circuit breaker in words: its state, since when, and what it counted."""
    state = circuit["state"]
    if state == "open":
        return (
            f"open since {circuit['since']} after {circuit['failures']} failures in a row: "
            f"its messages wait; one probes after {circuit['retry_at']}"
        )
    if state == "half_open":
        return f"half-open: the next message probes ({circuit['failures']} failures in a row)"
    if circuit["failures"]:
        return f"closed, {circuit['failures']} failures in a row counted"
    return "closed"


def _state(connection: Connection, held: Holding) -> str:
    if not connection.enabled:
        return "disabled: its webhooks are refused"
    if held.is_paused:
        return "paused: webhooks are kept, nothing is processed"
    return "running"


def _buttons(signer: FormSigner, connection: Connection, held: Holding, admin: bool) -> Markup:
    cid = connection.id
    forms: list[Markup] = []
    if connection.enabled:
        forms.append(post_form(signer, action_path(cid, "test-event"), "Send a test event"))
        if held.is_paused:
            forms.append(post_form(signer, action_path(cid, "resume"), "Resume"))
        else:
            forms.append(post_form(signer, action_path(cid, "pause"), "Pause"))
        forms.append(post_form(signer, action_path(cid, "disable"), "Disable…"))
    else:
        forms.append(post_form(signer, action_path(cid, "enable"), "Enable"))
        if held.held:  # left from a pause before it was disabled: a resume releases them
            forms.append(post_form(signer, action_path(cid, "resume"), "Release held messages"))
    if admin:
        forms.append(post_form(signer, action_path(cid, "offboard"), "Offboard…"))
    return tag("div", join(forms), class_="actions")


def _back(connection: Connection) -> list[tuple[str, str]]:
    return [(page_path(connection.id), "Back to the connection"), ("/ops", "Status")]


async def test_event_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    if not connection.enabled:
        raise ApiError(409, "connection_disabled", "the connection is disabled: enable it first")
    event_id = await call(actions.send_test_event, deps, connection, actor_of(request))
    held: Holding = await call(actions.holding, deps, connection)
    said = [
        f"Test event {event_id} queued: a worker reads from Halaxy and from the platform "
        "through this connection (nothing is written anywhere).",
        "Its page shows each attempt: what was called, and what each answered.",
    ]
    if held.is_paused:
        said.append("The connection is paused: the test event is held until it is resumed.")
    links = [(actions.event_url(connection, event_id), "The test event's trail")]
    return result_page(f"Test event for {connection.name}", said, links + _back(connection))


async def pause_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    changed = await call(actions.pause, deps, connection, actor_of(request))
    said = (
        "Paused: its webhooks are still taken and kept; nothing of it is processed until you "
        "resume it."
        if changed
        else "It was paused already: nothing changed."
    )
    return result_page(f"Paused {connection.name}", [said], _back(connection))


async def resume_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    resumed = await call(actions.resume, deps, connection, actor_of(request))
    said = [
        "Resumed." if resumed.was_paused else "It was not paused.",
        f"{resumed.released} held messages put back on their queues, oldest first.",
    ]
    if resumed.still_held:
        said.append(f"{resumed.still_held} still held: the scheduler releases them next.")
    return result_page(f"Resumed {connection.name}", said, _back(connection))


async def enable_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    await call(actions.enable, deps, connection, actor_of(request))
    said = (
        "Enabled, with the same id, webhook URLs and secrets: its webhooks are taken again."
        if not connection.enabled
        else "It was enabled already: nothing changed."
    )
    return result_page(f"Enabled {connection.name}", [said], _back(connection))


async def disable_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    if not form.confirmed():
        return confirmation_page(
            form_signer(request, deps),
            title=f"Disable {connection.name}?",
            happens=[
                f"{connection.name} ({connection.id}) stops taking webhooks: Halaxy's are "
                "refused until it is enabled again.",
                "Work already queued for it is dropped when a worker reaches it.",
                "Its id, webhook URLs and secrets are kept: Enable brings it back as it was.",
            ],
            action=action_path(connection.id, "disable"),
            fields={},
            button="Disable it",
            back=page_path(connection.id),
        )
    await call(actions.disable, deps, connection, actor_of(request))
    return result_page(
        f"Disabled {connection.name}",
        ["Disabled: its webhooks are refused. Enable it again from its page."],
        _back(connection),
    )


async def offboard_form(request: Request, deps: Deps, form: Form) -> Response:
    connection = await existing_connection(deps, request.path_params["connection_id"])
    typed = Typed(connection.id, "Type the connection id, {text}, to confirm")
    if not form.confirmed(typed):
        return confirmation_page(
            form_signer(request, deps),
            title=f"Offboard {connection.name}?",
            happens=[
                f"Everything the bridge holds for {connection.name} ({connection.id}) is "
                "erased: its secrets and settings, patient links, notes waiting or failed, "
                "queued and held messages, dead letters, event log, cached tokens and "
                "rate-limit keys.",
                "The audit trail is kept, and one entry records the erasure.",
                "This cannot be undone: the clinic would be onboarded again as new.",
            ],
            action=action_path(connection.id, "offboard"),
            fields={},
            button="Erase everything of this clinic",
            back=page_path(connection.id),
            warning="This cannot be undone.",
            typed=typed,
        )
    done = await call(actions.erase, deps, connection, actor_of(request))
    erased = ", ".join(f"{what}: {count}" for what, count in done.erased.items())
    return result_page(
        f"Offboarded {connection.name}",
        [f"Erased everything of {connection.id} ({erased}).", "One audit entry records it."],
        [("/ops", "Status")],
    )


# The admin API's routes, for a browser's form too.
disable_route = negotiated(admin.disable_connection, form_action(disable_form))
enable_route = negotiated(admin.enable_connection, form_action(enable_form))
pause_route = negotiated(admin.pause_connection, form_action(pause_form))
resume_route = negotiated(admin.resume_connection, form_action(resume_form))
test_event_route = negotiated(admin.send_test_event, form_action(test_event_form))
offboard_route = negotiated(admin.offboard_connection, form_action(offboard_form, Role.ADMIN))

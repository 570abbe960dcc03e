"""`GET /ops/events` and `GET /ops/events/{event_id}`: the per-event delivery log.

One URL is both the page and the API (`negotiation.wants_html`): a browser gets the search
form and its results, or one event's page; anything else gets JSON, as `halaxy-bridge events
list|show --json` prints it. A search with a bad parameter (a malformed cursor or time range,
an unknown state) is a 422 naming each, as JSON or on the page, and reads nothing.

`GET /ops/events` takes `connection`, `state`, `event`, `resource`, `since`, `until` (ISO 8601
with offset, or a duration back: 30m, 24h, 7d), `limit` (1-200, 50) and `cursor` (the
`next_cursor` of the page before). `GET /ops/events/{event_id}` answers every record of the
id (one per connection that logged it; usually one), `?connection=` keeping to one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.webhook_receiver.admin import authorize, call
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.events_page import render_event, render_problem, render_search
from services.webhook_receiver.forms import FormSigner, form_signer, may_act
from services.webhook_receiver.negotiation import wants_html
from services.webhook_receiver.pages import SECURITY_HEADERS
from services.webhook_receiver.responses import ApiError, JSONResponse
from shared.infra import InvalidInput, utcnow
from shared.ops import Role
from shared.telemetry import EventPage, EventView, parse_query


def _signer(request: Request, deps: Deps) -> FormSigner | None:
    """Signs the replay buttons' forms, for an operator or an admin; a viewer gets none."""
    return form_signer(request, deps) if may_act(request) else None


async def list_events(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    html = wants_html(request)
    raw = dict(request.query_params)
    try:
        query = parse_query(raw, utcnow())
    except InvalidInput as exc:
        if html:
            connections: list[str] = await call(deps.events.connections)
            page = render_search(raw, connections, None, None, exc.problems or [str(exc)])
            return HTMLResponse(page, status_code=422, headers=SECURITY_HEADERS)
        raise ApiError(422, "invalid", "; ".join([str(exc), *exc.problems])) from None
    found: EventPage = await call(deps.events.search, query)
    if html:
        connections = await call(deps.events.connections)
        page = render_search(raw, connections, query, found, signer=_signer(request, deps))
        return HTMLResponse(page, headers=SECURITY_HEADERS)
    return JSONResponse(found.shown())


async def show_event(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    html = wants_html(request)
    event_id = request.path_params["event_id"]
    raw = {**request.query_params, "event": event_id}
    try:
        if set(request.query_params) - {"connection"}:
            raise InvalidInput("an event's page takes only ?connection=")
        query = parse_query(raw, utcnow())
        if query.event_id is None:
            raise InvalidInput("give the event's id: /ops/events/{event_id}")
    except InvalidInput as exc:
        detail = "; ".join([str(exc), *exc.problems])
        if html:
            page = render_problem(422, "Invalid request", detail)
            return HTMLResponse(page, status_code=422, headers=SECURITY_HEADERS)
        raise ApiError(422, "invalid", detail) from None
    views: list[EventView] = await call(deps.events.get, query.event_id, query.connection_id)
    if not views:
        detail = "no such event in the log (events are kept 30 days)"
        if html:
            page = render_problem(404, "No such event", detail)
            return HTMLResponse(page, status_code=404, headers=SECURITY_HEADERS)
        raise ApiError(404, "unknown_event", detail)
    if html:
        shown = render_event(query.event_id, views, _signer(request, deps))
        return HTMLResponse(shown, headers=SECURITY_HEADERS)
    return JSONResponse({"event_id": query.event_id, "records": [v.shown() for v in views]})

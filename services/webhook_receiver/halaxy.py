"""`POST /webhooks/halaxy/{connection_id}/{event}`: Halaxy's notification webhooks."""

from __future__ import annotations

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import metrics
from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.requests import (
    presented_secret,
    read_capped_body,
    require_json,
    secret_matches,
)
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.connections import Connection, utcnow
from shared.errors import StoreUnavailable
from shared.halaxy.events import HALAXY_EVENTS, HalaxyEvent
from shared.halaxy.notifications import NotificationError, parse_notification

# Halaxy's notifications are id-only and small; 256 KiB leaves ample room (DESIGN.md).
MAX_BODY = 256 * 1024

log = structlog.get_logger("halaxy_bridge.receiver")


async def halaxy_webhook(request: Request) -> Response:
    deps = deps_of(request)
    connection_id = request.path_params["connection_id"]
    event = HALAXY_EVENTS.get(request.path_params["event"])
    if event is None:
        raise ApiError(404, "unknown_event", "no such Halaxy event; see /openapi.json")
    try:
        connection = await run_in_threadpool(deps.connections.get, connection_id)
    except StoreUnavailable:
        raise unavailable() from None
    if connection is None or not connection.enabled:
        raise ApiError(404, "unknown_connection", "no such connection")
    try:
        return await _take(deps, connection, event, request)
    except ApiError as exc:
        metrics.rejected(connection.id, event.name, exc.code)
        raise


async def _take(
    deps: Deps, connection: Connection, event: HalaxyEvent, request: Request
) -> Response:
    bound = log.bind(connection_id=connection.id, halaxy_event=event.name)
    presented = presented_secret(request.headers.get("authorization"))
    if not secret_matches(presented, connection.webhook_secrets(utcnow())):
        bound.warning("webhook.unauthorized")
        raise ApiError(401, "unauthorized", "missing or wrong Authorization for this connection")
    metrics.authenticated(connection.id)
    require_json(request)
    body = await read_capped_body(request, MAX_BODY)
    try:
        changed = parse_notification(body, event.resource_type, connection.halaxy_base_url)
    except NotificationError as exc:
        status = 400 if exc.code == "malformed_json" else 422
        bound.warning("webhook.rejected", reason=exc.code)
        raise ApiError(status, exc.code, exc.detail) from None
    try:
        result = await run_in_threadpool(deps.intake.accept, connection.id, event, changed)
    except StoreUnavailable:
        bound.error("webhook.not_queued", reason="redis_unavailable")
        raise unavailable() from None
    metrics.accepted(connection.id, event.name, len(result.accepted), len(result.duplicates))
    bound.info(
        "webhook.accepted",
        event_ids=result.accepted,
        duplicate_event_ids=result.duplicates,
    )
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates}, status_code=202
    )

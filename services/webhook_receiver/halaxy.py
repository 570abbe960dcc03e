"""`POST /webhooks/halaxy/{connection_id}/{event}`: Halaxy's notification webhooks.

The hot path runs on the event loop with one Redis round trip: the caller is authenticated
against the connection as last read (`KnownConnections`), and the intake script queues only if
that is still the stored record. If it is not, or if the request would be refused after the old
record's checks (wrong secret, disabled, any refusal of the body), the connection is read
again and the request taken anew. So every answer rests on the stored record: a 202 on the
intake script's check, a refusal on a fresh read.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import metrics
from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.known_connections import Opened
from services.webhook_receiver.requests import (
    presented_secret,
    read_capped_body,
    require_json,
    secret_matches,
)
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.halaxy import HALAXY_EVENTS, HalaxyEvent, NotificationError, parse_notification
from shared.infra import StoreUnavailable, utcnow
from shared.patients import ConnectionChanged

# Halaxy's notifications are id-only and small; 256 KiB leaves ample room (DESIGN.md).
MAX_BODY = 256 * 1024
# The record last read, then fresh reads: a second fresh read only if the connection changed
# between a read and the intake, which takes an admin rotating at that very moment.
ATTEMPTS = 3

log = structlog.get_logger("halaxy_bridge.receiver")


async def halaxy_webhook(request: Request) -> Response:
    deps = deps_of(request)
    connection_id = request.path_params["connection_id"]
    event = HALAXY_EVENTS.get(request.path_params["event"])
    if event is None:
        raise ApiError(404, "unknown_event", "no such Halaxy event; see /openapi.json")
    body = _Body(request)
    opened = deps.known.last_read(connection_id)
    fresh = opened is None
    for _ in range(ATTEMPTS):
        if opened is None:
            opened, fresh = await _read(deps, connection_id), True
        if not opened.connection.enabled:
            if fresh:
                raise _unknown_connection()
        else:
            try:
                return await _take(deps, opened, event, request, body, fresh=fresh)
            except ConnectionChanged:
                pass
            except ApiError as exc:
                if fresh:
                    metrics.rejected(connection_id, event.name, exc.code)
                    raise
                # Refused on the record last read: confirm on a fresh one, or a rotated
                # secret could learn from a 400 or 413 that it was once right.
        opened = None
    raise unavailable()


async def _read(deps: Deps, connection_id: str) -> Opened:
    try:
        opened = await deps.known.read(connection_id)
    except StoreUnavailable:
        raise unavailable() from None
    if opened is None:
        raise _unknown_connection()
    return opened


async def _take(
    deps: Deps,
    opened: Opened,
    event: HalaxyEvent,
    request: Request,
    body: _Body,
    *,
    fresh: bool,
) -> Response:
    """Take the request on `opened`. A refusal on a record that is not `fresh` is not logged:
    `halaxy_webhook` reads the connection again and takes the request anew."""
    connection = opened.connection
    bound = log.bind(connection_id=connection.id, halaxy_event=event.name)
    presented = presented_secret(request.headers.get("authorization"))
    if not secret_matches(presented, connection.webhook_secrets(utcnow())):
        if fresh:
            bound.warning("webhook.unauthorized")
        raise ApiError(401, "unauthorized", "missing or wrong Authorization for this connection")
    try:
        changed = parse_notification(
            await body.read(), event.resource_type, connection.halaxy_base_url
        )
    except NotificationError as exc:
        status = 400 if exc.code == "malformed_json" else 422
        if fresh:
            bound.warning("webhook.rejected", reason=exc.code)
        raise ApiError(status, exc.code, exc.detail) from None
    try:
        result = await deps.intake.accept(opened.record, connection.id, event, changed)
    except StoreUnavailable:
        bound.error("webhook.not_queued", reason="redis_unavailable")
        raise unavailable() from None
    metrics.authenticated(connection.id)  # the intake confirmed the record it was checked on
    metrics.accepted(connection.id, event.name, len(result.accepted), len(result.duplicates))
    bound.info(
        "webhook.accepted",
        event_ids=result.accepted,
        duplicate_event_ids=result.duplicates,
    )
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates}, status_code=202
    )


class _Body:
    """The request body, checked and read once however many times the request is taken: the
    same bytes, or the same refusal, every time."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._body: bytes | None = None
        self._refused: ApiError | None = None

    async def read(self) -> bytes:
        if self._refused is not None:
            raise self._refused
        if self._body is None:
            try:
                require_json(self._request)
                self._body = await read_capped_body(self._request, MAX_BODY)
            except ApiError as exc:
                self._refused = exc
                raise
        return self._body


def _unknown_connection() -> ApiError:
    # The same answer for a disabled connection as for none: ids are not to be probed.
    return ApiError(404, "unknown_connection", "no such connection")

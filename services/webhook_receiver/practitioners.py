"""`/admin/connections/{id}/practitioners`: a Physitrack connection's practitioners, for named
admins (listing needs the viewer role, changing the admin role). The same operations as
`halaxy-bridge practitioners`; no answer holds a secret (a token shows its last four
characters)."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.admin import (
    actor,
    authorize,
    call,
    existing_connection,
    json_object,
)
from services.webhook_receiver.responses import ApiError, JSONResponse
from shared.connections import Connection, roster
from shared.infra import utcnow
from shared.ops import Role

log = structlog.get_logger("halaxy_bridge.admin")


def listing(connection: Connection) -> dict[str, Any]:
    return {"connection_id": connection.id, "practitioners": roster.practitioner_rows(connection)}


def _practitioner(request: Request, connection: Connection) -> str:
    """The path's practitioner, which must be one of the connection's (404 otherwise)."""
    halaxy_practitioner = str(request.path_params["halaxy_practitioner"])
    if connection.practitioner(halaxy_practitioner) is None:
        raise ApiError(404, "unknown_practitioner", "the connection has no such practitioner")
    return halaxy_practitioner


async def list_practitioners(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    return JSONResponse(listing(connection))


async def add_practitioner(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    practitioner = await call(roster.parse_practitioner, data)
    updated = await call(
        roster.add_practitioner,
        deps.connections,
        deps.verify_platform_key,
        connection,
        practitioner,
        utcnow(),
        deps.audit,
        actor(request),
    )
    log.info("practitioner.added", connection_id=connection.id, actor=actor(request))
    return JSONResponse(listing(updated), status_code=201)


async def rotate_practitioner(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    halaxy_practitioner = _practitioner(request, connection)
    rotation = await call(roster.parse_practitioner_rotation, data)
    updated = await call(
        roster.rotate_practitioner,
        deps.connections,
        deps.verify_platform_key,
        connection,
        halaxy_practitioner,
        rotation,
        utcnow(),
        deps.audit,
        actor(request),
    )
    log.info("practitioner.rotated", connection_id=connection.id, actor=actor(request))
    return JSONResponse(listing(updated))


async def remove_practitioner(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    halaxy_practitioner = _practitioner(request, connection)
    updated = await call(
        roster.remove_practitioner,
        deps.connections,
        connection,
        halaxy_practitioner,
        utcnow(),
        deps.audit,
        actor(request),
    )
    log.info("practitioner.removed", connection_id=connection.id, actor=actor(request))
    return JSONResponse(listing(updated))

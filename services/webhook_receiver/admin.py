"""`/admin/connections`: create, list, show, disable and rotate, for named admins (reading
needs the viewer role, changing the admin role: `auth.authorize`)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

# `authorize` and `actor` live in `auth`; handlers import them from here, as they always have.
from services.webhook_receiver.auth import actor as actor
from services.webhook_receiver.auth import authorize as authorize
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.requests import read_capped_body, require_json
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.connections import Connection, ConnectionChangedMeanwhile, onboarding
from shared.infra import AlreadyConnected, InvalidInput, StoreUnavailable, Transient, utcnow
from shared.ops import Role

MAX_BODY = 64 * 1024

log = structlog.get_logger("halaxy_bridge.admin")


async def json_object(request: Request) -> dict[str, Any]:
    require_json(request)
    body = await read_capped_body(request, MAX_BODY)
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return data


async def call(function: Any, *args: Any) -> Any:
    try:
        return await run_in_threadpool(function, *args)
    except StoreUnavailable:
        raise unavailable() from None
    except Transient as exc:
        raise unavailable(str(exc)) from None
    except ConnectionChangedMeanwhile as exc:
        raise ApiError(409, "connection_changed", str(exc)) from None
    except AlreadyConnected as exc:
        raise ApiError(409, "already_connected", str(exc)) from None
    except InvalidInput as exc:
        raise ApiError(422, "invalid", "; ".join([str(exc), *exc.problems])) from None


async def existing_connection(deps: Deps, connection_id: str) -> Connection:
    connection: Connection | None = await call(deps.connections.get, connection_id)
    if connection is None:
        raise ApiError(404, "unknown_connection", "no such connection")
    return connection


async def list_connections(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER)
    found = await call(deps.connections.list)
    return JSONResponse({"connections": [onboarding.summary(c) for c in found]})


async def create_connection(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    data = await json_object(request)
    who = actor(request)
    connection = await call(_add, deps, data, who)
    log.info("connection.added", connection_id=connection.id, actor=who)
    return JSONResponse(
        onboarding.setup_details(connection, deps.settings.public_url), status_code=201
    )


def _add(deps: Deps, data: dict[str, Any], who: str) -> Connection:
    request = onboarding.parse_request(data)
    return onboarding.add_connection(
        deps.connections, deps.verify_key, request, utcnow(), deps.audit, who
    )


async def show_connection(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER)  # no secret in it
    connection = await existing_connection(deps, request.path_params["connection_id"])
    return JSONResponse(onboarding.summary(connection))


async def disable_connection(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    disabled = await call(
        onboarding.disable_connection,
        deps.connections,
        connection,
        utcnow(),
        deps.audit,
        actor(request),
    )
    log.info("connection.disabled", connection_id=connection.id, actor=actor(request))
    return JSONResponse(onboarding.summary(disabled))


async def rotate_connection(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    rotation = await call(onboarding.parse_rotation, data)
    rotated = await call(
        onboarding.apply_rotation,
        deps.connections,
        deps.verify_key,
        connection,
        rotation,
        utcnow(),
        deps.audit,
        actor(request),
    )
    log.info("connection.rotated", connection_id=connection.id, actor=actor(request))
    return JSONResponse(onboarding.setup_details(rotated, deps.settings.public_url))

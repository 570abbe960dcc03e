"""`/admin/connections`: create, list, show, disable and rotate, behind BRIDGE_ADMIN_TOKEN."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.requests import (
    presented_secret,
    read_capped_body,
    require_json,
    secret_matches,
)
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared import onboarding
from shared.connections import Connection, utcnow
from shared.errors import InvalidInput, StoreUnavailable, Transient

MAX_BODY = 64 * 1024

log = structlog.get_logger("halaxy_bridge.admin")


def authorize(request: Request) -> Deps:
    deps = deps_of(request)
    token = deps.settings.admin_token
    if token is None:
        raise ApiError(401, "unauthorized", "the admin API is off: BRIDGE_ADMIN_TOKEN is not set")
    presented = request.headers.get("authorization", "")
    if not presented.lower().startswith("bearer ") or not secret_matches(
        presented_secret(presented), [token.get_secret_value()]
    ):
        raise ApiError(401, "unauthorized", "missing or wrong admin Bearer token")
    return deps


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
    except InvalidInput as exc:
        raise ApiError(422, "invalid", "; ".join([str(exc), *exc.problems])) from None


async def _existing(deps: Deps, connection_id: str) -> Connection:
    connection: Connection | None = await call(deps.connections.get, connection_id)
    if connection is None:
        raise ApiError(404, "unknown_connection", "no such connection")
    return connection


async def list_connections(request: Request) -> Response:
    deps = authorize(request)
    found = await call(deps.connections.list)
    return JSONResponse({"connections": [onboarding.summary(c) for c in found]})


async def create_connection(request: Request) -> Response:
    deps = authorize(request)
    data = await json_object(request)
    connection = await call(_add, deps, data)
    log.info("connection.added", connection_id=connection.id, actor="admin-api")
    return JSONResponse(
        onboarding.setup_details(connection, deps.settings.public_url), status_code=201
    )


def _add(deps: Deps, data: dict[str, Any]) -> Connection:
    request = onboarding.parse_request(data)
    return onboarding.add_connection(deps.connections, deps.verify_key, request, utcnow())


async def show_connection(request: Request) -> Response:
    deps = authorize(request)
    connection = await _existing(deps, request.path_params["connection_id"])
    return JSONResponse(onboarding.summary(connection))


async def disable_connection(request: Request) -> Response:
    deps = authorize(request)
    connection = await _existing(deps, request.path_params["connection_id"])
    disabled = onboarding.disable(connection, utcnow())
    await call(deps.connections.save, disabled)
    log.info("connection.disabled", connection_id=connection.id, actor="admin-api")
    return JSONResponse(onboarding.summary(disabled))


async def rotate_connection(request: Request) -> Response:
    deps = authorize(request)
    data = await json_object(request)
    connection = await _existing(deps, request.path_params["connection_id"])
    rotation = await call(onboarding.parse_rotation, data)
    rotated = await call(
        onboarding.apply_rotation,
        deps.connections,
        deps.verify_key,
        connection,
        rotation,
        utcnow(),
    )
    log.info("connection.rotated", connection_id=connection.id, actor="admin-api")
    return JSONResponse(onboarding.setup_details(rotated, deps.settings.public_url))

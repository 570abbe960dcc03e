"""`/admin/connections`: create, list, show, disable and rotate, behind BRIDGE_ADMIN_TOKEN; and
the lifecycle after create: enable, edit (PATCH), pause, resume, offboard."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.requests import (
    basic_password,
    presented_secret,
    read_capped_body,
    require_json,
    secret_matches,
)
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.connections import (
    Connection,
    ConnectionChangedMeanwhile,
    PausedConnections,
    lifecycle,
    onboarding,
)
from shared.infra import AlreadyConnected, InvalidInput, StoreUnavailable, Transient, utcnow
from shared.ops import confirmed, offboard, standard_erasures

MAX_BODY = 64 * 1024
ADMIN_API = "admin-api"  # who acts, in the audit trail: everyone shares the admin token

log = structlog.get_logger("halaxy_bridge.admin")


BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="halaxy-bridge ops", charset="UTF-8"'}


def authorize(request: Request, *, browser: bool = False) -> Deps:
    """The admin token as a Bearer header; for a page a browser opens (`browser`), also as the
    password of HTTP Basic auth, since a browser cannot send a Bearer header as it navigates."""
    deps = deps_of(request)
    token = deps.settings.admin_token
    challenge = BASIC_CHALLENGE if browser else None
    if token is None:
        raise ApiError(
            401, "unauthorized", "the admin API is off: BRIDGE_ADMIN_TOKEN is not set", challenge
        )
    header = request.headers.get("authorization", "")
    scheme = header.strip().partition(" ")[0].lower()
    presented = presented_secret(header) if scheme == "bearer" else None
    if browser and scheme == "basic":
        presented = basic_password(header)
    if not secret_matches(presented, [token.get_secret_value()]):
        detail = "missing or wrong admin Bearer token"
        if browser:
            detail += ", or Basic auth with it as the password"
        raise ApiError(401, "unauthorized", detail, challenge)
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
    deps = authorize(request)
    found = await call(deps.connections.list)
    return JSONResponse({"connections": [onboarding.summary(c) for c in found]})


async def create_connection(request: Request) -> Response:
    deps = authorize(request)
    data = await json_object(request)
    connection = await call(_add, deps, data)
    log.info("connection.added", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(
        onboarding.setup_details(connection, deps.settings.public_url), status_code=201
    )


def _add(deps: Deps, data: dict[str, Any]) -> Connection:
    request = onboarding.parse_request(data)
    return onboarding.add_connection(
        deps.connections, deps.verify_key, request, utcnow(), deps.audit, ADMIN_API
    )


async def show_connection(request: Request) -> Response:
    deps = authorize(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    return JSONResponse(onboarding.summary(connection))


async def disable_connection(request: Request) -> Response:
    deps = authorize(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    disabled = await call(
        onboarding.disable_connection,
        deps.connections,
        connection,
        utcnow(),
        deps.audit,
        ADMIN_API,
    )
    log.info("connection.disabled", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(onboarding.summary(disabled))


async def rotate_connection(request: Request) -> Response:
    deps = authorize(request)
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
        ADMIN_API,
    )
    log.info("connection.rotated", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(onboarding.setup_details(rotated, deps.settings.public_url))


# --- the lifecycle after add: enable, edit, pause, resume, offboard ---------------------------


def _holding(deps: Deps, connection: Connection, **extra: Any) -> dict[str, Any]:
    """The connection as `show` answers it, with its pause and held messages."""
    held = PausedConnections(deps.redis, deps.connections.keys).holding([connection.id])
    return {
        **onboarding.summary(connection),
        "paused": held[connection.id].is_paused,
        "held_messages": held[connection.id].held,
        **extra,
    }


async def _optional_object(request: Request) -> dict[str, Any]:
    """A JSON object body, or `{}` when the request has no body at all."""
    if "content-type" not in request.headers:
        if await read_capped_body(request, MAX_BODY):
            require_json(request)  # a body that does not say it is JSON: 415
        return {}
    return await json_object(request)


async def enable_connection(request: Request) -> Response:
    # role: operator
    deps = authorize(request)
    data = await _optional_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    wanted = await call(lifecycle.parse_enable, data)
    enabled = await call(
        partial(
            lifecycle.enable_connection,
            allow_shared_platform_key=wanted.allow_shared_platform_key,
        ),
        deps.connections,
        connection,
        utcnow(),
        deps.audit,
        ADMIN_API,
    )
    log.info("connection.enabled", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(
        await call(partial(_holding, changed=not connection.enabled), deps, enabled)
    )


async def edit_connection(request: Request) -> Response:
    # role: operator
    deps = authorize(request)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    edit = await call(lifecycle.parse_edit, data)
    updated, changed = await call(
        lifecycle.edit_connection,
        deps.connections,
        connection,
        edit,
        utcnow(),
        deps.audit,
        ADMIN_API,
    )
    log.info("connection.edited", connection_id=connection.id, changed=changed, actor=ADMIN_API)
    return JSONResponse(await call(partial(_holding, changed=changed), deps, updated))


async def pause_connection(request: Request) -> Response:
    # role: operator
    deps = authorize(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    pauses = PausedConnections(deps.redis, deps.connections.keys)
    changed = await call(
        lifecycle.pause_connection, pauses, connection, utcnow(), deps.audit, ADMIN_API
    )
    log.info("connection.paused", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(await call(partial(_holding, changed=changed), deps, connection))


async def resume_connection(request: Request) -> Response:
    # role: operator
    deps = authorize(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    pauses = PausedConnections(deps.redis, deps.connections.keys)
    resumed = await call(lifecycle.resume_connection, pauses, connection, deps.audit, ADMIN_API)
    log.info(
        "connection.resumed",
        connection_id=connection.id,
        released=resumed.released,
        actor=ADMIN_API,
    )
    shown = partial(
        _holding,
        changed=resumed.was_paused,
        released=resumed.released,
        still_held=resumed.still_held,
    )
    return JSONResponse(await call(shown, deps, connection))


async def offboard_connection(request: Request) -> Response:
    # role: admin
    deps = authorize(request)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    await call(confirmed, data, connection.id)
    erasures = standard_erasures(deps.connections, deps.settings.fernet)
    done = await call(
        offboard, deps.connections, connection, erasures, utcnow(), deps.audit, ADMIN_API
    )
    log.info("connection.offboarded", connection_id=connection.id, actor=ADMIN_API)
    return JSONResponse(done.shown())

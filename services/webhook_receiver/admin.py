"""`/admin/connections`: create, list, show, disable and rotate, and the lifecycle after create
(enable, edit by PATCH, pause, resume, offboard), for named admins (reading needs the viewer
role; pausing, resuming, enabling and disabling the operator role; the rest the admin role:
`auth.authorize`)."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import connection_actions as actions

# `authorize` and `actor` live in `auth`; handlers import them from here, as they always have.
from services.webhook_receiver.auth import actor as actor
from services.webhook_receiver.auth import authorize as authorize
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.requests import read_capped_body, require_json
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.connections import (
    Connection,
    ConnectionChangedMeanwhile,
    lifecycle,
    onboarding,
)
from shared.infra import (
    AlreadyConnected,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    Transient,
    utcnow,
)
from shared.ops import Role, confirmed

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
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
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
    deps = authorize(request, Role.OPERATOR)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    disabled = await call(actions.disable, deps, connection, actor(request))
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


# --- the lifecycle after add: enable, edit, pause, resume, offboard ---------------------------


def _holding(deps: Deps, connection: Connection, **extra: Any) -> dict[str, Any]:
    """The connection as `show` answers it, with its pause and held messages."""
    held = actions.holding(deps, connection)
    return {
        **onboarding.summary(connection),
        "paused": held.is_paused,
        "held_messages": held.held,
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
    deps = authorize(request, Role.OPERATOR)
    data = await _optional_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    wanted = await call(lifecycle.parse_enable, data)
    enabled = await call(
        partial(actions.enable, allow_shared_platform_key=wanted.allow_shared_platform_key),
        deps,
        connection,
        actor(request),
    )
    return JSONResponse(
        await call(partial(_holding, changed=not connection.enabled), deps, enabled)
    )


async def edit_connection(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
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
        actor(request),
    )
    log.info(
        "connection.edited", connection_id=connection.id, changed=changed, actor=actor(request)
    )
    return JSONResponse(await call(partial(_holding, changed=changed), deps, updated))


async def pause_connection(request: Request) -> Response:
    deps = authorize(request, Role.OPERATOR)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    changed = await call(actions.pause, deps, connection, actor(request))
    return JSONResponse(await call(partial(_holding, changed=changed), deps, connection))


async def resume_connection(request: Request) -> Response:
    deps = authorize(request, Role.OPERATOR)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    resumed = await call(actions.resume, deps, connection, actor(request))
    shown = partial(
        _holding,
        changed=resumed.was_paused,
        released=resumed.released,
        still_held=resumed.still_held,
    )
    return JSONResponse(await call(shown, deps, connection))


async def send_test_event(request: Request) -> Response:
    deps = authorize(request, Role.OPERATOR)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    if not connection.enabled:
        raise ApiError(409, "connection_disabled", "the connection is disabled: enable it first")
    event_id = await call(actions.send_test_event, deps, connection, actor(request))
    shown = {"event_id": event_id, "event_url": actions.event_url(connection, event_id)}
    return JSONResponse(shown, status_code=202)


async def offboard_connection(request: Request) -> Response:
    deps = authorize(request, Role.ADMIN)
    data = await json_object(request)
    connection = await existing_connection(deps, request.path_params["connection_id"])
    await call(confirmed, data, connection.id)
    done = await call(actions.erase, deps, connection, actor(request))
    return JSONResponse(done.shown())

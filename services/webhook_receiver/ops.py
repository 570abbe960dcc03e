"""`/ops/*`: status and dead letters for the ops team, behind BRIDGE_ADMIN_TOKEN."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.admin import authorize, call, json_object
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.responses import JSONResponse
from shared import dead_letter_ops as ops
from shared.connections import utcnow
from shared.dead_letters import DeadLetter, DeadLetterStore
from shared.notes_outbox import NoteOutbox
from shared.status import status as gather
from shared.store import Keys
from shared.validation import validated


class DeadLetterAction(BaseModel):
    """Which dead letters to replay or purge: ids, or all that match the filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: list[str] = Field(default_factory=list, max_length=1000)
    all_matching: bool = False
    connection: str | None = None
    since: str | None = Field(default=None, description="ISO 8601 time, or 30m, 24h, 7d")
    reason: str | None = None
    by: str = Field(default="admin-api", min_length=1, max_length=100)


def _keys(deps: Deps) -> Keys:
    return Keys(deps.settings.redis_namespace)


def _select(deps: Deps, action: DeadLetterAction) -> list[DeadLetter]:
    return ops.select(
        DeadLetterStore(deps.redis, _keys(deps)),
        action.ids,
        action.connection,
        ops.parse_since(action.since, utcnow()),
        action.reason,
        action.all_matching,
    )


async def current_status(deps: Deps) -> dict[str, Any]:
    """`shared.status.status` in the threadpool: what `/ops/status` and the `/ops` page show."""
    keys = _keys(deps)
    outbox = NoteOutbox(deps.redis, keys, deps.settings.fernet)
    found: dict[str, Any] = await call(gather, deps.redis, keys, deps.connections, outbox)
    return found


async def ops_status(request: Request) -> Response:
    deps = authorize(request)
    return JSONResponse(await current_status(deps))


async def list_dead_letters(request: Request) -> Response:
    deps = authorize(request)
    params = request.query_params
    action = DeadLetterAction(
        all_matching=True,
        connection=params.get("connection"),
        since=params.get("since"),
        reason=params.get("reason"),
    )
    letters = await call(_select, deps, action)
    return JSONResponse({"dead_letters": [ops.public(letter) for letter in letters]})


async def replay_dead_letters(request: Request) -> Response:
    deps = authorize(request)
    action = await _action(request)

    def replay() -> list[str]:
        return ops.replay(
            DeadLetterStore(deps.redis, _keys(deps)),
            deps.queue,
            deps.audit,
            _select(deps, action),
            action.by,
        )

    return JSONResponse({"replayed": await call(replay)})


async def purge_dead_letters(request: Request) -> Response:
    deps = authorize(request)
    action = await _action(request)

    def purge() -> list[str]:
        return ops.purge(
            DeadLetterStore(deps.redis, _keys(deps)),
            deps.audit,
            _select(deps, action),
            action.by,
        )

    return JSONResponse({"purged": await call(purge)})


async def _action(request: Request) -> DeadLetterAction:
    data: dict[str, Any] = await json_object(request)
    action: DeadLetterAction = await call(
        validated, DeadLetterAction, data, "the dead-letter request is invalid"
    )
    return action

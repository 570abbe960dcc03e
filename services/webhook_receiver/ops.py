"""`/ops/*`: status, dead letters and the notes waiting for a person, for the ops team: reading
needs the viewer role, replaying, purging and resolving the operator role (`auth.authorize`).

Who acts, in the audit trail, is the authenticated caller (`auth.actor`). The bodies' `by`,
from when everyone shared one token, may still be sent, but only as the caller's own name:
any other is refused (422), since the trail must not record a name nobody proved."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.admin import actor, authorize, call, json_object
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.responses import ApiError, JSONResponse
from shared.infra import Actor, Keys, utcnow, validated
from shared.notes import (
    OFFSET_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    NoteNotWaiting,
    NoteOutbox,
    NotesPage,
    NoteState,
    NoteStateConflict,
    Resolution,
    UnroutedPrograms,
    Waiting,
    find_waiting,
    resolve_note,
)
from shared.ops import DeadLetter, DeadLetterStore, Role
from shared.ops import replay as ops
from shared.ops import status as gather

DIGITS = re.compile(r"[0-9]{1,10}")
BY = (
    "optional, and only the caller's own admin name: the audit trail records who "
    "authenticated (kept from when everyone shared one token)"
)


class DeadLetterAction(BaseModel):
    """Which dead letters to replay or purge: ids, or all that match the filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: list[str] = Field(default_factory=list, max_length=1000)
    all_matching: bool = False
    connection: str | None = None
    since: str | None = Field(default=None, description="ISO 8601 time, or 30m, 24h, 7d")
    reason: str | None = None
    by: Actor | None = Field(default=None, description=BY)


class NoteResolutionRequest(BaseModel):
    """How a person settles a parked or failed note (`notes resolve` on the command line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: Resolution = Field(
        description="posted: it is in Halaxy after all; retry: post it again; drop: give up"
    )
    docref_id: str | None = Field(
        default=None, description="with posted: the DocumentReference id Halaxy shows"
    )
    state: Waiting = Field(
        default=Waiting.PARKED,
        description="the state the person saw the note in; it is settled only if still in it",
    )
    by: Actor | None = Field(default=None, description=BY)


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


def _outbox(deps: Deps) -> NoteOutbox:
    return NoteOutbox(deps.redis, _keys(deps), deps.settings.fernet)


async def current_status(deps: Deps) -> dict[str, Any]:
    """`shared.ops.status.status` in the threadpool: what `/ops/status` and the `/ops` page show."""
    found: dict[str, Any] = await call(
        gather, deps.redis, _keys(deps), deps.connections, _outbox(deps)
    )
    return found


async def ops_status(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER)
    return JSONResponse(await current_status(deps))


async def list_dead_letters(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER)
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
    deps = authorize(request, Role.OPERATOR)
    action = await _action(request)
    who = _who(request, action.by)

    def replay() -> list[str]:
        return ops.replay(
            DeadLetterStore(deps.redis, _keys(deps)),
            deps.queue,
            deps.audit,
            _select(deps, action),
            who,
            deps.events,
        )

    return JSONResponse({"replayed": await call(replay)})


async def purge_dead_letters(request: Request) -> Response:
    deps = authorize(request, Role.OPERATOR)
    action = await _action(request)
    who = _who(request, action.by)

    def purge() -> list[str]:
        return ops.purge(
            DeadLetterStore(deps.redis, _keys(deps)),
            deps.audit,
            _select(deps, action),
            who,
        )

    return JSONResponse({"purged": await call(purge)})


async def _action(request: Request) -> DeadLetterAction:
    data: dict[str, Any] = await json_object(request)
    action: DeadLetterAction = await call(
        validated, DeadLetterAction, data, "the dead-letter request is invalid"
    )
    return action


def _who(request: Request, by: str | None) -> str:
    """The caller's name, for the trail; a body's `by` naming anyone else is refused."""
    who = actor(request)
    if by is not None and by != who:
        raise ApiError(
            422,
            "invalid",
            f"by: the audit trail records who authenticated ({who}); leave by out",
        )
    return who


class NotesQuery(BaseModel):
    """Which page of a notes listing (`notes parked|failed --limit --offset`): decimal digits
    only, as a query string gives them (pydantic alone would take "1.0" and refuse "٣")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    offset: int = Field(default=0, ge=0, le=OFFSET_MAX)

    @field_validator("limit", "offset", mode="before")
    @classmethod
    def _digits(cls, value: object) -> object:
        if isinstance(value, str) and not DIGITS.fullmatch(value):
            raise ValueError("a whole number in decimal digits")
        return value


def notes_listing(state: NoteState) -> Callable[[Request], Awaitable[Response]]:
    """`GET /ops/notes/parked` and `/ops/notes/failed`, as `notes parked|failed --json`."""

    async def list_notes(request: Request) -> Response:
        deps = authorize(request, Role.VIEWER)
        asked: NotesQuery = await call(
            validated, NotesQuery, dict(request.query_params), "the notes query is invalid"
        )
        page: NotesPage = await call(
            partial(_outbox(deps).page, state, offset=asked.offset, limit=asked.limit)
        )
        return JSONResponse(page.shown())

    return list_notes


async def resolve_waiting_note(request: Request) -> Response:
    """`POST /ops/notes/{note_id}/resolve`, as `notes resolve`."""
    deps = authorize(request, Role.OPERATOR)
    note_id = request.path_params["note_id"]
    data: dict[str, Any] = await json_object(request)
    asked: NoteResolutionRequest = await call(
        validated, NoteResolutionRequest, data, "the note resolution is invalid"
    )
    who = _who(request, asked.by)

    def resolve() -> dict[str, Any]:
        outbox = _outbox(deps)
        try:
            record = find_waiting(outbox, note_id, asked.state)
            settled = resolve_note(
                outbox,
                deps.queue,
                record,
                asked.resolution,
                who,
                deps.audit,
                asked.docref_id,
                events=deps.events,
            )
        except NoteNotWaiting as exc:
            raise ApiError(404, "unknown_note", str(exc)) from None
        except NoteStateConflict as exc:
            raise ApiError(409, "note_state_changed", str(exc)) from None
        return settled.shown()

    return JSONResponse(await call(resolve))


async def list_unrouted_programs(request: Request) -> Response:
    """`GET /ops/programs/unrouted`, as `programs unrouted --json`: what the /ops page's count
    of unrouted programs links to (a browser signed in to /ops opens it too)."""
    deps = authorize(request, Role.VIEWER, browser=True)

    def unrouted() -> dict[str, Any]:
        kept = UnroutedPrograms(deps.redis, _keys(deps), deps.settings.fernet).oldest_first()
        rows = [program.shown() for program in kept]
        return {"unrouted": rows, "count": len(rows)}

    return JSONResponse(await call(unrouted))

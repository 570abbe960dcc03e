"""`POST /webhooks/physitrack/programs`: the one Physitrack program endpoint of the deployment.

Physitrack support registers one https URL and one `api_key` "the same for all your
customers"; each post names its practitioner by `token` (therapy-platforms.md 2.1). The key is
compared in constant time against BRIDGE_PHYSITRACK_WEBHOOK_KEYS (two during a rotation); the
token routes the post to the connection and practitioner it belongs to.

Physitrack counts any answer but 200 within 5 seconds as a failure, ignores the body, and
retries once, 10 minutes later (2.2). So the answer is 200 with an empty body, and only once
the post is durable: its note recorded and queued, or, when no enabled connection knows its
token, the post kept as unrouted for ops (`shared.notes.unrouted`). Redis not taking it: 503.
Either way the post is in the event log: under its connection and note id, or, kept, under
`unrouted` and its unrouted id, in state `unrouted` (the disabled connection that owns its
token, if any, is not named there: an offboarding erases a connection's log by its id).
A wrong key: 401. A body that is not a program post: 422 naming the fields.
"""

from __future__ import annotations

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import metrics
from services.webhook_receiver.deps import Deps, deps_of, replicated
from services.webhook_receiver.programs import keyed_post
from services.webhook_receiver.responses import ApiError, unavailable
from shared.connections import Connection
from shared.infra import InvalidInput, StoreUnavailable, utcnow
from shared.notes import (
    PdfRefused,
    ProgramCallback,
    UnroutedReason,
    check_listed,
    is_link_expired,
    owner_of,
    parse_callback,
)
from shared.telemetry import UNROUTED, EventRecord, EventSource, EventState, EventStatus

EVENT = "physitrack-program"
DEPLOYMENT = "deployment"  # the metrics' connection label for what no connection took

log = structlog.get_logger("halaxy_bridge.receiver")


async def physitrack_programs(request: Request) -> Response:
    deps = deps_of(request)
    try:
        return await _take(deps, request)
    except ApiError as exc:
        metrics.rejected(DEPLOYMENT, EVENT, exc.code)
        raise


async def _take(deps: Deps, request: Request) -> Response:
    accepted = deps.settings.physitrack_keys
    if not accepted:
        raise ApiError(404, "not_found", "the Physitrack endpoint is off: no webhook key is set")
    _, data = await keyed_post(request, accepted, log.bind(callback="physitrack-program"))
    try:
        callback = parse_callback(data)
    except InvalidInput as exc:
        raise ApiError(422, "invalid", "; ".join([str(exc), *exc.problems])) from None
    try:
        return await run_in_threadpool(_route, deps, callback)
    except StoreUnavailable:
        log.error("physitrack.not_queued", reason="redis_unavailable")
        raise unavailable() from None


def _route(deps: Deps, callback: ProgramCallback) -> Response:
    owner = owner_of(deps.connections.list(), callback.token)
    if owner is None or not owner.enabled:
        reason = (
            UnroutedReason.UNKNOWN_TOKEN if owner is None else UnroutedReason.CONNECTION_DISABLED
        )
        kept = deps.unrouted.keep(callback, reason)
        deps.events.received(
            EventRecord(
                event_id=kept,
                connection_id=UNROUTED,  # not the disabled owner's: nothing names it here
                source=EventSource.PHYSITRACK_WEBHOOK,
                event_type="program-updated" if callback.updated else "program-assigned",
                resource_id=callback.patient_id,
                received_at=utcnow(),
            ),
            EventStatus(EventState.UNROUTED, utcnow(), detail=reason.value),
        )
        replicated(deps)
        metrics.accepted(DEPLOYMENT, EVENT, 1, 0)
        which = {} if owner is None else {"connection_id": owner.id}
        log.warning("physitrack.unrouted", unrouted_id=kept, reason=reason.value, **which)
        return Response(status_code=200)
    _check_link(owner, callback)
    note_id = deps.claims.for_post(owner, callback)
    result = deps.programs.accept(owner.id, note_id, callback, EventSource.PHYSITRACK_WEBHOOK)
    replicated(deps)
    metrics.accepted(owner.id, EVENT, len(result.accepted), len(result.duplicates))
    log.info(
        "physitrack.accepted",
        connection_id=owner.id,
        note_id=note_id,
        duplicate=not result.accepted,
    )
    return Response(status_code=200)


def _check_link(connection: Connection, callback: ProgramCallback) -> None:
    """Refuse now what the worker would refuse later: a PDF host the connection does not
    allow, or a link past its 24 hours (the events poll fetches a fresh one)."""
    try:
        check_listed(
            callback.file_url, connection.allowed_pdf_hosts, connection.pdf_hosts is not None
        )
    except PdfRefused as exc:
        raise ApiError(422, "invalid", f"file_url: {exc}") from None
    if is_link_expired(callback, utcnow()):
        raise ApiError(422, "invalid", "file_url: the PDF link expired (24 hours after date_iso)")

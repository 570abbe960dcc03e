"""`/healthz` (the process is alive), `/readyz` (Redis reachable and sane), and `/metrics`
(the totals of every process, kept in Redis): for any named admin (the viewer role) or the
bootstrap token, as a Bearer token, unless BRIDGE_METRICS_PUBLIC=true."""

from __future__ import annotations

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.auth import authorize
from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.responses import JSONResponse, unavailable
from shared.infra import Keys, StoreUnavailable, check_redis, epoch_seconds, explained
from shared.notes import NoteOutbox
from shared.ops import Role, status
from shared.telemetry import exposition, gauges, totals

log = structlog.get_logger("halaxy_bridge.receiver")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    deps = deps_of(request)
    try:
        warnings = await run_in_threadpool(check_redis, deps.redis, deps.settings.replica_ack_ms)
    except StoreUnavailable as exc:
        # Why (a sentinel unreachable, a wrong master name or password): which Redis only in
        # the log, as anyone who reaches the port may read this answer.
        problem = await run_in_threadpool(explained, deps.settings, exc)
        log.error("readyz.redis_unusable", detail=problem.detail)
        raise unavailable(f"Redis cannot be used: {problem.reason}") from None
    return JSONResponse({"status": "ready", "warnings": warnings})


async def metrics_endpoint(request: Request) -> Response:
    deps = deps_of(request)
    if not deps.settings.metrics_public:
        authorize(request, Role.VIEWER)
    try:
        body = await run_in_threadpool(deps.scrapes.get, lambda: _scrape(deps))
    except StoreUnavailable:
        raise unavailable(
            "Redis is unreachable, and the metrics of every process are in it"
        ) from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _scrape(deps: Deps) -> bytes:
    deps.metrics.push()  # this process's own counts, so a scrape sees them at once
    keys = Keys(deps.settings.redis_namespace)
    outbox = NoteOutbox(deps.redis, keys, deps.settings.fernet)
    snapshot = status(deps.redis, keys, deps.connections, outbox, recent=False)
    quiet_after = deps.settings.quiet_after_seconds
    return exposition([*totals(deps.redis, keys), *gauges(snapshot, quiet_after, epoch_seconds())])

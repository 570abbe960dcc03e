"""`/healthz` (the process is alive), `/readyz` (Redis reachable and sane), `/metrics`."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import metrics
from services.webhook_receiver.deps import deps_of
from services.webhook_receiver.responses import JSONResponse, unavailable
from shared.errors import StoreUnavailable
from shared.redis_health import check_redis


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        warnings = await run_in_threadpool(check_redis, deps_of(request).redis)
    except StoreUnavailable:
        raise unavailable("Redis is unreachable") from None
    return JSONResponse({"status": "ready", "warnings": warnings})


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

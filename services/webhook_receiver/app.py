"""The receiver application: `uvicorn services.webhook_receiver.app:app`."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis
import redis.asyncio
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.webhook_receiver import (
    admin,
    console,
    console_connections,
    health,
    ops,
    ops_events,
    pages,
    practitioners,
)
from services.webhook_receiver.access_log import ObserveRequests, turn_off_uvicorn_access_log
from services.webhook_receiver.auth import Authenticate, audit_refusal
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.halaxy import halaxy_webhook
from services.webhook_receiver.known_connections import KnownConnections
from services.webhook_receiver.negotiation import wants_html
from services.webhook_receiver.openapi import openapi
from services.webhook_receiver.ops_page import ops_page
from services.webhook_receiver.physitrack import physitrack_programs
from services.webhook_receiver.programs import program_callback
from services.webhook_receiver.responses import ApiError, error_response
from shared.connections import (
    ConnectionStore,
    KeyVerifier,
    PlatformKeyVerifier,
    physitrack_key_verifier,
)
from shared.halaxy import key_verifier
from shared.infra import (
    ConfigError,
    JobQueue,
    Keys,
    Settings,
    async_redis_client,
    audit_trail,
    configure_logging,
    load_settings,
    redis_client,
    redis_problem,
)
from shared.notes import (
    NoteOutbox,
    NoteState,
    ProgramClaims,
    ProgramIntake,
    UnroutedPrograms,
)
from shared.ops import AdminStore
from shared.patients import EventIntake
from shared.telemetry import EventLog, EventLogLayout, MetricsPusher, Reused

log = structlog.get_logger("halaxy_bridge.receiver")

# A scrape is reused this long (never longer than a push interval): see `Reused`.
SCRAPE_REUSE_SECONDS = 5.0

HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


# A browser that asks for a page here gets a refusal as a page, with the reason in its body.
CONSOLE_PATHS = ("/ops", "/admin")


def _refusal(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None
) -> Response:
    if request.url.path.startswith(CONSOLE_PATHS) and wants_html(request):
        return pages.error_page(status, code, detail, headers)
    return error_response(status, code, detail, headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    await audit_refusal(request, exc)
    return _refusal(request, exc.status, exc.code, exc.detail, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "error")
    return _refusal(request, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("request.failed", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error; it has been logged")


def halaxy_key_verifier(settings: Settings, http: httpx.Client) -> KeyVerifier:
    return key_verifier(http, settings.user_agent)


def create_app(
    settings: Settings,
    *,
    queue: JobQueue | None = None,
    client: redis.Redis | None = None,
    async_client: redis.asyncio.Redis | None = None,
    intake: EventIntake | None = None,
    verify_key: KeyVerifier | None = None,
    verify_platform_key: PlatformKeyVerifier | None = None,
) -> Starlette:
    """The receiver, wired to Redis and the job queue (by default the Dramatiq broker).

    Halaxy's webhooks are taken on the event loop through `async_client`; everything else
    goes through `client` in the threadpool. Both must reach the same Redis.
    """
    client = client or redis_client(settings)
    async_client = async_client or async_redis_client(settings)
    keys = Keys(settings.redis_namespace)
    connections = ConnectionStore(client, keys, settings.fernet)
    # Key checks while onboarding (Halaxy's token, the platform's key): as the workers' own.
    http = httpx.Client(timeout=httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0))
    # Imported here, not at the top: the workers package builds its broker when imported.
    from services.workers.messaging import DramatiqEventIntake, DramatiqJobQueue, build_broker

    if queue is None:
        queue = DramatiqJobQueue(build_broker(settings, client))
    audit = audit_trail(client, settings)
    events = EventLog(client, keys, settings.event_log_max_per_connection)
    deps = Deps(
        settings=settings,
        redis=client,
        connections=connections,
        known=KnownConnections(async_client, connections),
        intake=intake
        or DramatiqEventIntake(
            async_client,
            keys,
            EventLogLayout(keys, settings.event_log_max_per_connection),
            storm_events_per_minute=settings.storm_events_per_minute,
            replica_ack_ms=settings.replica_ack_ms,
        ),
        programs=ProgramIntake(NoteOutbox(client, keys, settings.fernet), queue, events),
        unrouted=UnroutedPrograms(client, keys, settings.fernet),
        claims=ProgramClaims(client, keys),
        queue=queue,
        verify_key=verify_key or halaxy_key_verifier(settings, http),
        verify_platform_key=verify_platform_key
        or physitrack_key_verifier(http, settings.user_agent),
        metrics=MetricsPusher(client, keys, settings.metrics_push_seconds),
        audit=audit,
        scrapes=Reused(min(SCRAPE_REUSE_SECONDS, settings.metrics_push_seconds)),
        admins=AdminStore(client, keys, audit, settings.admin_token),
        events=events,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        deps.metrics.start()
        # What exists once the app is built lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause every request in flight. Once per
        # process, after a collection, so no garbage is frozen with it.
        if not gc.get_freeze_count():
            gc.collect()
            gc.freeze()
        yield
        deps.metrics.stop()
        http.close()
        client.close()
        await async_client.aclose()

    routes = [
        Route("/webhooks/halaxy/{connection_id}/{event}", halaxy_webhook, methods=["POST"]),
        Route("/webhooks/programs/{connection_id}", program_callback, methods=["POST"]),
        Route("/webhooks/physitrack/programs", physitrack_programs, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/admin/connections", admin.list_connections, methods=["GET"]),
        Route("/admin/connections", admin.create_connection, methods=["POST"]),
        Route("/admin/connections/{connection_id}", admin.show_connection, methods=["GET"]),
        Route(
            "/admin/connections/{connection_id}/disable",
            console_connections.disable_route,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/rotate", admin.rotate_connection, methods=["POST"]
        ),
        Route(
            "/admin/connections/{connection_id}/practitioners",
            practitioners.list_practitioners,
            methods=["GET"],
        ),
        Route(
            "/admin/connections/{connection_id}/practitioners",
            practitioners.add_practitioner,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}/rotate",
            practitioners.rotate_practitioner,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/practitioners/{halaxy_practitioner}",
            practitioners.remove_practitioner,
            methods=["DELETE"],
        ),
        Route("/admin/connections/{connection_id}", admin.edit_connection, methods=["PATCH"]),
        Route(
            "/admin/connections/{connection_id}/enable",
            console_connections.enable_route,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/pause",
            console_connections.pause_route,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/resume",
            console_connections.resume_route,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/test-event",
            console_connections.test_event_route,
            methods=["POST"],
        ),
        Route(
            "/admin/connections/{connection_id}/offboard",
            console_connections.offboard_route,
            methods=["POST"],
        ),
        Route("/ops", ops_page, methods=["GET"]),
        Route("/ops/status", ops.ops_status, methods=["GET"]),
        Route("/ops/dead-letters", console.dead_letters, methods=["GET"]),
        Route("/ops/dead-letters/replay", console.replay_dead_letters, methods=["POST"]),
        Route("/ops/dead-letters/purge", ops.purge_dead_letters, methods=["POST"]),
        Route("/ops/notes/parked", console.notes(NoteState.PARKED), methods=["GET"]),
        Route("/ops/notes/failed", console.notes(NoteState.FAILED), methods=["GET"]),
        Route("/ops/notes/{note_id}/resolve", console.resolve_note_route, methods=["POST"]),
        Route("/ops/programs/unrouted", ops.list_unrouted_programs, methods=["GET"]),
        Route(
            "/ops/connections/{connection_id}",
            console_connections.connection_page,
            methods=["GET"],
        ),
        Route("/ops/events", ops_events.list_events, methods=["GET"]),
        # `path`: an event id may hold a `/` (Halaxy's `Subscription/x#3`), sent as %2F.
        Route("/ops/events/{event_id:path}", ops_events.show_event, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
        middleware=[Middleware(ObserveRequests), Middleware(Authenticate)],
    )
    app.state.deps = deps
    return app


def _app_from_environment() -> Starlette:
    try:
        settings = load_settings()
        settings.fernet  # noqa: B018  (the receiver cannot run without the key)
    except ConfigError as exc:
        print(f"halaxy-bridge receiver: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings)
    turn_off_uvicorn_access_log()
    problem = redis_problem(settings)
    if problem is not None and problem.lasting:  # a wrong setting: waiting will not mend it
        print(f"halaxy-bridge receiver: Redis cannot be used: {problem.detail}", file=sys.stderr)
        raise SystemExit(2)
    if problem is not None:  # it may come back: /readyz answers 503 meanwhile
        log.error("receiver.redis_unavailable", detail=problem.detail)
    return create_app(settings)


def __getattr__(name: str) -> Starlette:
    # `app` is built on first access, so importing this module (tests, tools) has no effects.
    if name == "app":
        application = _app_from_environment()
        globals()["app"] = application
        return application
    raise AttributeError(name)

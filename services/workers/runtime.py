"""What actors share within one worker process: Redis, stores, and one HTTP client per
connection (pooled, reused by every job of that connection).

The runtime belongs to the broker's `ProvideRuntime` middleware: built when the worker boots,
handed to each job it runs (`current_runtime`), closed when the worker has stopped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

import dramatiq
import httpx
import redis
import structlog
from dramatiq.middleware import MiddlewareError

from services.workers.time_limits import LONGEST_JOB_SECONDS
from shared.connections import CONNECTION_ACCOUNT, Connection, ConnectionStore
from shared.halaxy import HalaxyClient, HalaxyRateLimiter, TokenCache, new_http_client
from shared.infra import (
    BridgeError,
    ConnectionNotFound,
    Keys,
    LeaseRenewer,
    Settings,
    audit_trail,
    redis_client,
    redis_problem,
)
from shared.notes import NoteOutbox, PdfFetcher, Resolver, system_resolver
from shared.patients import PatientLinks, PlatformAccounts
from shared.platforms import TherapyPlatform, platform_for
from shared.telemetry import MeteredClient, origin

# A client retired when its connection's URLs changed may still serve a job that took it just
# before; that job ends within its time limit, or within one request's timeout after it (the
# limit interrupts a thread only when it is back from a blocking socket call).
RETIRED_CLIENT_GRACE_SECONDS = LONGEST_JOB_SECONDS + 5 * 60

log = structlog.get_logger("halaxy_bridge.workers")


@dataclass(frozen=True)
class ConnectionServices:
    connection: Connection
    halaxy: HalaxyClient
    platform: TherapyPlatform  # the connection's own account
    accounts: PlatformAccounts  # and every practitioner's
    links: PatientLinks
    pdfs: PdfFetcher


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.settings = settings
        self.redis = client or redis_client(settings)
        self.keys = Keys(settings.redis_namespace)
        self.connections = ConnectionStore(self.redis, self.keys, settings.fernet)
        self.tokens = TokenCache(self.redis, self.keys, settings.fernet)
        self.outbox = NoteOutbox(
            self.redis, self.keys, settings.fernet, replica_ack_ms=settings.replica_ack_ms
        )
        self.limiter = HalaxyRateLimiter(self.redis, self.keys)
        self.audit = audit_trail(self.redis, settings)
        self.renewer = LeaseRenewer()
        self._clock = clock
        self._http: dict[str, tuple[dict[tuple[str, int], str], httpx.Client]] = {}
        self._retired: deque[tuple[float, httpx.Client]] = deque()  # (when, client), in order
        self._services: dict[str, ConnectionServices] = {}
        self._lock = threading.Lock()

    def services(self, connection_id: str) -> ConnectionServices:
        """The connection (read fresh, so a disable or a rotation applies at once) and its
        clients; raise `ConnectionNotFound` when it is unknown or disabled."""
        connection = self.connections.get(connection_id)
        if connection is None or not connection.enabled:
            raise ConnectionNotFound(f"connection {connection_id} is unknown or disabled")
        # The store hands out the same object while the stored record is unchanged.
        built = self._services.get(connection_id)
        if built is not None and built.connection is connection:
            return built
        http = self._http_for(connection)
        ua = self.settings.user_agent
        platforms = {
            seat.practitioner: platform_for(seat.account, http, ua) for seat in connection.seats()
        }
        built = self._services[connection_id] = ConnectionServices(
            connection=connection,
            halaxy=HalaxyClient(connection.halaxy_account, http, self.tokens, ua, self.limiter),
            platform=platforms[CONNECTION_ACCOUNT],
            accounts=PlatformAccounts(
                platforms, connection.default_seat().practitioner, connection.practitioner_seats()
            ),
            links=PatientLinks(
                self.redis,
                self.keys,
                connection_id,
                self.renewer,
                replica_ack_ms=self.settings.replica_ack_ms,
            ),
            pdfs=PdfFetcher(http, self.resolver),
        )
        return built

    def _http_for(self, connection: Connection) -> httpx.Client:
        targets = {
            origin(connection.halaxy_base_url): "halaxy",
            origin(connection.platform_base_url): "platform",
        }
        with self._lock:
            unused = self._unused_retired_clients()
            cached = self._http.get(connection.id)
            if cached is None or cached[0] != targets:  # new client when a base URL changed
                if cached is not None:
                    self._retired.append((self._clock(), cached[1]))  # a job may be using it
                http = new_http_client(partial(MeteredClient, connection.id, targets))
                cached = self._http[connection.id] = (targets, http)
        for retired in unused:
            retired.close()
        return cached[1]

    def _unused_retired_clients(self) -> list[httpx.Client]:
        """Take the retired clients every job that could use them has outlived."""
        retired_before = self._clock() - RETIRED_CLIENT_GRACE_SECONDS
        unused = []
        while self._retired and self._retired[0][0] < retired_before:
            unused.append(self._retired.popleft()[1])
        return unused

    def close(self) -> None:
        self.renewer.close()
        with self._lock:
            for http in [*(c for _, c in self._retired), *(c for _, c in self._http.values())]:
                http.close()
            self._http.clear()
            self._retired.clear()
            self._services.clear()
        self.redis.close()


# The runtime of the worker running the current job; set per job, like Dramatiq's own
# CurrentMessage, so jobs of a second broker in the same process (tests) use their own.
_current: ContextVar[WorkerRuntime | None] = ContextVar("worker_runtime", default=None)


def current_runtime() -> WorkerRuntime:
    """The runtime of the worker running this job."""
    runtime = _current.get()
    if runtime is None:
        raise RuntimeError("no worker runtime: not in a job of a worker with ProvideRuntime")
    return runtime


class WorkerBootError(BridgeError, MiddlewareError):
    """The worker cannot start: Dramatiq lets a `MiddlewareError` stop its boot (any other
    error in a hook it only logs), so the process exits instead of failing every job."""


class ProvideRuntime(dramatiq.Middleware):
    """Owns the worker's `WorkerRuntime`: built by `build` when the worker boots, set as each
    job's `current_runtime()`, closed (renewer thread, HTTP pools, Redis) once the worker has
    stopped and no job can use it. One worker per broker, as the `dramatiq` command runs."""

    def __init__(self, build: Callable[[], WorkerRuntime]) -> None:
        self.build = build
        self.runtime: WorkerRuntime | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.runtime is not None:
            # Stopping either worker would close the runtime the other's jobs still use.
            raise WorkerBootError("a worker of this broker is running: one worker per broker")
        try:
            self.runtime = self.build()
        except Exception as exc:
            reason = type(exc).__name__
            raise WorkerBootError(f"the worker runtime was not built: {reason}") from exc
        problem = redis_problem(self.runtime.settings, self.runtime.redis)
        if problem is not None and problem.lasting:  # a wrong setting: waiting will not mend it
            runtime, self.runtime = self.runtime, None
            runtime.close()
            raise WorkerBootError(f"Redis cannot be used: {problem.detail}")
        if problem is not None:  # it may come back (restarting, failing over): carry on
            log.error("worker.redis_unavailable", detail=problem.detail)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        if any(thread.is_alive() for thread in getattr(worker, "workers", ())):
            # Dramatiq stopped waiting for a worker thread (a job, or an ack retried while Redis
            # is away). Closing would stop renewing that job's leases, and another worker could
            # take its note or patient: the process exit, with the job, reclaims the runtime.
            log.warning("worker.runtime_left_open", reason="worker threads still running")
            return
        runtime.close()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        _current.set(self.runtime)  # on the thread about to run the job


def provide_runtime(broker: dramatiq.Broker, build: Callable[[], WorkerRuntime]) -> ProvideRuntime:
    """Have `broker`'s worker build its runtime with `build`, replacing any earlier way."""
    for middleware in broker.middleware:
        if isinstance(middleware, ProvideRuntime):
            middleware.build = build
            return middleware
    provider = ProvideRuntime(build)
    broker.add_middleware(provider)
    return provider

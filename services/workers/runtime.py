"""What actors share within one worker process: Redis, stores, and one HTTP client per
connection (pooled, reused by every job of that connection)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import httpx
import redis

from shared.audit import audit_trail
from shared.config import Settings
from shared.connection_store import ConnectionStore
from shared.connections import Connection
from shared.errors import ConnectionNotFound
from shared.halaxy.client import HalaxyClient, new_http_client
from shared.halaxy.rate_limit import HalaxyRateLimiter
from shared.halaxy.tokens import TokenCache
from shared.notes_outbox import NoteOutbox
from shared.patient_links import PatientLinks
from shared.pdf_fetch import PdfFetcher, Resolver, system_resolver
from shared.platforms import TherapyPlatform, platform_for
from shared.store import Keys, redis_client
from shared.telemetry.http import MeteredClient, origin


@dataclass(frozen=True)
class ConnectionServices:
    connection: Connection
    halaxy: HalaxyClient
    platform: TherapyPlatform
    links: PatientLinks
    pdfs: PdfFetcher


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.resolver = resolver
        self.settings = settings
        self.redis = client or redis_client(settings)
        self.keys = Keys(settings.redis_namespace)
        self.connections = ConnectionStore(self.redis, self.keys, settings.fernet)
        self.tokens = TokenCache(self.redis, self.keys, settings.fernet)
        self.outbox = NoteOutbox(self.redis, self.keys, settings.fernet)
        self.limiter = HalaxyRateLimiter(self.redis, self.keys)
        self.audit = audit_trail(self.redis, settings)
        self._http: dict[str, tuple[dict[tuple[str, int], str], httpx.Client]] = {}
        self._retired: list[httpx.Client] = []
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
        built = self._services[connection_id] = ConnectionServices(
            connection=connection,
            halaxy=HalaxyClient(
                connection, http, self.tokens, self.settings.user_agent, self.limiter
            ),
            platform=platform_for(connection, http, self.settings.user_agent),
            links=PatientLinks(self.redis, self.keys, connection_id),
            pdfs=PdfFetcher(http, self.resolver),
        )
        return built

    def _http_for(self, connection: Connection) -> httpx.Client:
        targets = {
            origin(connection.halaxy_base_url): "halaxy",
            origin(connection.platform_base_url): "platform",
        }
        with self._lock:
            cached = self._http.get(connection.id)
            if cached is None or cached[0] != targets:  # new client when a base URL changed
                if cached is not None:
                    self._retired.append(cached[1])  # a job may still be using it
                http = new_http_client(partial(MeteredClient, connection.id, targets))
                cached = self._http[connection.id] = (targets, http)
            return cached[1]

    def close(self) -> None:
        with self._lock:
            for http in [*self._retired, *(client for _, client in self._http.values())]:
                http.close()
            self._http.clear()
            self._retired.clear()
            self._services.clear()
        self.redis.close()

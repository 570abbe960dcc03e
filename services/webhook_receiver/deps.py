"""What the handlers need, built once per app and kept on `app.state.deps`."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from starlette.requests import Request

from services.webhook_receiver.known_connections import KnownConnections
from shared.connections import ConnectionStore, KeyVerifier, PlatformKeyVerifier
from shared.infra import AuditTrail, JobQueue, Keys, Settings, confirm_replicated
from shared.notes import ProgramClaims, ProgramIntake, UnroutedPrograms
from shared.ops import AdminStore
from shared.patients import EventIntake
from shared.telemetry import EventLog, MetricsPusher, Reused


@dataclass(frozen=True)
class Deps:
    settings: Settings
    redis: redis.Redis
    connections: ConnectionStore
    known: KnownConnections  # the Halaxy webhook's view, on the event loop
    intake: EventIntake
    programs: ProgramIntake
    unrouted: UnroutedPrograms  # Physitrack posts no connection could take
    claims: ProgramClaims  # one note id per Physitrack program, however it arrives
    queue: JobQueue
    verify_key: KeyVerifier
    verify_platform_key: PlatformKeyVerifier  # a practitioner's Physitrack key
    metrics: MetricsPusher
    audit: AuditTrail
    scrapes: Reused  # /metrics bodies
    admins: AdminStore  # who may use /admin, /ops and /metrics (`auth`)
    events: EventLog  # the per-event delivery log (/ops/events)


def deps_of(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def replicated(deps: Deps) -> None:
    """Return once a replica holds every write the request made (BRIDGE_REPLICA_ACK_MS), else
    raise `NotReplicated`, a `StoreUnavailable`: a 503, and the sender's retry, a duplicate
    then, is answered once its first sighting is held."""
    keys = Keys(deps.settings.redis_namespace)
    confirm_replicated(deps.redis, keys, deps.settings.replica_ack_ms)

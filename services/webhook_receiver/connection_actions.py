"""What an admin does to a connection, once for both ways in: the JSON admin API
(`admin.py`) and the console's forms (`console_connections.py`). Each runs in the threadpool
(`admin.call`), audits under `by` and logs its one line."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote, urlencode

import structlog

from services.webhook_receiver.deps import Deps
from shared.connections import (
    Connection,
    Holding,
    PausedConnections,
    Resumed,
    lifecycle,
    onboarding,
)
from shared.infra import ActorName, Job, QueueName, utcnow
from shared.ops import Offboarded, offboard, standard_erasures
from shared.telemetry import EventRecord, EventSource, circuit_rows

log = structlog.get_logger("halaxy_bridge.admin")

# Held messages a resume over HTTP releases itself (batches of `pause.RELEASE_BATCH`), so a
# long pause's backlog never outlasts the request; the scheduler releases the rest, in order,
# on its next ticks (the answer's `still_held`).
RESUME_BATCHES_A_REQUEST = 20


def _pauses(deps: Deps) -> PausedConnections:
    return PausedConnections(deps.redis, deps.connections.keys)


def holding(deps: Deps, connection: Connection) -> Holding:
    """Whether the connection is paused, and what its workers hold meanwhile."""
    return _pauses(deps).holding([connection.id])[connection.id]


def circuits(deps: Deps, connection: Connection) -> list[dict[str, Any]]:
    """Its circuit breaker per upstream, as status shows them."""
    keys = deps.connections.keys
    return circuit_rows(deps.redis, keys, [connection.id], utcnow())[connection.id]


def pause(deps: Deps, connection: Connection, by: str) -> bool:
    """True if this paused it (False: it was paused already)."""
    changed = lifecycle.pause_connection(_pauses(deps), connection, utcnow(), deps.audit, by)
    log.info("connection.paused", connection_id=connection.id, changed=changed, actor=by)
    return changed


def resume(deps: Deps, connection: Connection, by: str) -> Resumed:
    resumed = lifecycle.resume_connection(
        _pauses(deps), connection, deps.audit, by, max_batches=RESUME_BATCHES_A_REQUEST
    )
    log.info("connection.resumed", connection_id=connection.id, released=resumed.released, actor=by)
    return resumed


def enable(
    deps: Deps, connection: Connection, by: str, *, allow_shared_platform_key: bool = False
) -> Connection:
    enabled = lifecycle.enable_connection(
        deps.connections,
        connection,
        utcnow(),
        deps.audit,
        by,
        allow_shared_platform_key=allow_shared_platform_key,
    )
    log.info("connection.enabled", connection_id=connection.id, actor=by)
    return enabled


def disable(deps: Deps, connection: Connection, by: str) -> Connection:
    disabled = onboarding.disable_connection(deps.connections, connection, utcnow(), deps.audit, by)
    log.info("connection.disabled", connection_id=connection.id, actor=by)
    return disabled


TEST_EVENT = "test-event"


def send_test_event(deps: Deps, connection: Connection, by: str) -> str:
    """A synthetic event through the connection: logged like a delivery, then queued as live
    work for `probe_connection` (a read from Halaxy and one from the platform, nothing
    written); its id, whose page in the event log shows the trail. Audited."""
    event_id = f"test-{uuid.uuid4().hex[:16]}"
    record = EventRecord(
        event_id=event_id,
        connection_id=connection.id,
        source=EventSource.CONSOLE,
        event_type=TEST_EVENT,
        resource_id="",
        received_at=utcnow(),
    )
    deps.events.received(record)
    job = Job(
        actor=ActorName.PROBE_CONNECTION,
        queue=QueueName.LIVE,
        kwargs={"connection_id": connection.id, "event_id": event_id, "event": TEST_EVENT},
    )
    deps.queue.enqueue([job])
    deps.audit.record(
        actor=by, action="connection.test_event", connection_id=connection.id, resource_ids=event_id
    )
    log.info("connection.test_event", connection_id=connection.id, event_id=event_id, actor=by)
    return event_id


def event_url(connection: Connection, event_id: str) -> str:
    """The event's page in the log (`/ops/events/{id}`)."""
    return f"/ops/events/{quote(event_id, safe='')}?{urlencode({'connection': connection.id})}"


def erase(deps: Deps, connection: Connection, by: str) -> Offboarded:
    """Offboard: erase everything the bridge holds for the clinic; one audit entry says so."""
    erasures = standard_erasures(deps.connections, deps.settings.fernet)
    done = offboard(deps.connections, connection, erasures, utcnow(), deps.audit, by)
    log.info("connection.offboarded", connection_id=connection.id, actor=by)
    return done

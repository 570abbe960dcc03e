"""The scheduler loop: elect a leader through Redis, then tick every few seconds
(BRIDGE_SCHEDULER_TICK_SECONDS)."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
import structlog
import structlog.typing

from services.workers.messaging import DramatiqJobQueue, WorkerMaintenance, build_broker
from services.workers.runtime import WorkerRuntime
from shared.connections import Connection, PausedConnections, Practitioner
from shared.infra import (
    BridgeError,
    IntakeResult,
    JobQueue,
    Permanent,
    RateLimited,
    Settings,
    epoch_seconds,
    iso_now,
    utcnow,
)
from shared.notes import (
    NoteRecord,
    NoteState,
    PollCursor,
    PollCursors,
    PollHooks,
    ProgramCallback,
    ProgramClaims,
    ProgramIntake,
    Taken,
    UnroutedPrograms,
    failed_for_its_link,
    forget_polled,
    job_for_note,
    poll_practitioner,
    route_unrouted,
    unrouted_id,
)
from shared.ops import (
    Duty,
    Heartbeat,
    Heartbeats,
    Kind,
    QueuedMessages,
    erase_leftovers,
    offboarded_lately,
    upgrade_stored_data,
)
from shared.patients import PatientLinks, SweepLog, due, sweep
from shared.platforms import Physitrack, ProgramEvent
from shared.telemetry import (
    PROGRAM_EVENTS,
    UNROUTED,
    EventLog,
    EventSource,
    EventState,
    EventStatus,
    forget_series_of_gone_connections,
)

LEADER_TTL_SECONDS = 30  # renewed every tick: BRIDGE_SCHEDULER_TICK_SECONDS is at most 15
# A scheduler writes its heartbeat whenever it checks its leadership (each tick, and before
# each connection's turn), at most this often; one not seen for LEADER_TTL_SECONDS is gone, as
# its lease would be.
BEAT_SECONDS = 2.0
# Held messages a tick releases at most per connection (batches of RELEASE_BATCH): a long
# list is released over several ticks, each short enough to keep the leadership.
RELEASE_BATCHES_A_TICK = 20
FORGET_SERIES_EVERY_SECONDS = 600

log = structlog.get_logger("halaxy_bridge.scheduler")


class Scheduler:
    def __init__(
        self, settings: Settings, runtime: WorkerRuntime, queue: JobQueue | None = None
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.queue = queue or DramatiqJobQueue(build_broker(settings, runtime.redis))
        self.maintenance = WorkerMaintenance(settings, runtime.redis)
        self.sweeps = SweepLog(runtime.redis, runtime.keys)
        self.sweep_every = timedelta(seconds=settings.reconcile_every_seconds)
        self.poll_every = timedelta(seconds=settings.program_poll_every_seconds)
        self.events = EventLog(runtime.redis, runtime.keys, settings.event_log_max_per_connection)
        self.programs = ProgramIntake(runtime.outbox, self.queue, self.events)
        self.claims = ProgramClaims(runtime.redis, runtime.keys)
        self.unrouted = UnroutedPrograms(runtime.redis, runtime.keys, settings.fernet)
        self.cursors = PollCursors(runtime.redis, runtime.keys)
        self.pauses = PausedConnections(runtime.redis, runtime.keys)
        self._series_checked_at = -math.inf
        self.id = uuid.uuid4().hex[:12]
        self.heartbeats = Heartbeats(runtime.redis, runtime.keys, Kind.SCHEDULER)
        self.queued = QueuedMessages(runtime.redis, runtime.keys)
        self._started_at = iso_now()
        self._last_beat: tuple[Duty, float] | None = None  # (role, monotonic time)
        self._upgraded = False
        self._leader = runtime.redis.lock(
            runtime.keys.scheduler_leader(), timeout=LEADER_TTL_SECONDS, thread_local=False
        )

    def is_leader(self) -> bool:
        """Keep, or try to take, the leadership; only the leader does anything. Says so in
        this scheduler's heartbeat."""
        leads = self._lead()
        self.beat(Duty.LEADER if leads else Duty.STANDBY)
        return leads

    def _lead(self) -> bool:
        try:
            if self._leader.owned():
                self._leader.reacquire()
                return True
            return bool(self._leader.acquire(blocking=False))
        except redis.exceptions.LockError:
            return False
        except redis.exceptions.RedisError:
            log.warning("scheduler.redis_unavailable", scheduler_id=self.id)
            return False

    def beat(self, role: Duty) -> None:
        """Write the heartbeat: when its role changed, or BEAT_SECONDS after the last one."""
        now = time.monotonic()
        if self._last_beat is not None:
            last_role, at = self._last_beat
            if last_role is role and now - at < BEAT_SECONDS:
                return
        fresh_for = max(float(LEADER_TTL_SECONDS), 2 * self.settings.scheduler_tick_seconds)
        heartbeat = Heartbeat(
            instance=self.id,
            role=role,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            seen_at=epoch_seconds(),
            fresh_for=fresh_for,
        )
        try:
            self.heartbeats.beat(heartbeat)
        except BridgeError as exc:
            log.warning("scheduler.heartbeat_failed", error=type(exc).__name__)
            return
        self._last_beat = (role, now)

    def tick(self) -> None:
        if not self.is_leader():
            return
        if not self._upgraded:
            self.upgrade_stored_data()
        self._attempt("scheduler.maintenance_failed", self.maintenance.requeue_from_dead_workers)
        self.requeue_stalled_notes()
        self._attempt("notes.forget_expired_failed", self.runtime.outbox.forget_expired)
        self._attempt("programs.route_failed", self.route_unrouted)
        self._attempt("queued.prune_failed", self.prune_queued)
        self._attempt("held.release_failed", self.release_held)
        self._attempt("metrics.forget_failed", self.forget_series_of_gone_connections)
        self._attempt("scheduler.connections_unreadable", self.sweep_and_poll)

    def sweep_and_poll(self) -> None:
        """Each running connection's reconcile sweep and program poll, when due."""
        paused = self.paused_ids()
        for connection in self.runtime.connections.list():
            if paused is None or connection.id in paused:
                continue  # paused (or not known to be running): its sweeps and polls wait
            # Each connection's turn is short (reconcile.PAGES_PER_CALL); leadership is
            # renewed before each, so a tick over many clinics never outlasts it.
            if connection.enabled and self.is_leader():
                self.sweep_if_due(connection.id)
            if connection.enabled and connection.physitrack_practitioners and self.is_leader():
                self.poll_programs(connection)

    @staticmethod
    def _attempt(failed: str, step: Callable[[], object]) -> None:
        """A step of the tick; if Redis fails it, the next tick tries again."""
        try:
            step()
        except BridgeError as exc:
            log.warning(failed, error=type(exc).__name__)

    def prune_queued(self) -> None:
        """Drop the counted messages that are no longer queued (`QueuedMessages.prune`)."""
        ids = [connection.id for connection in self.runtime.connections.list()]
        gone = self.queued.prune(ids, epoch_seconds())
        if gone:
            log.info("queued.pruned", count=gone, scheduler_id=self.id)

    def upgrade_stored_data(self) -> None:
        """What an earlier version stored, brought up to date once (`shared.ops.upgrade`);
        tried again next tick if Redis failed it."""
        try:
            upgraded = upgrade_stored_data(
                self.runtime.redis, self.runtime.keys, self.runtime.connections
            )
        except BridgeError as exc:
            log.warning("stored_data.upgrade_failed", error=type(exc).__name__)
            return
        self._upgraded = True
        if upgraded is not None:
            log.info(
                "stored_data.upgraded",
                notes=upgraded.notes,
                connections_sealed=upgraded.connections_sealed,
                keys_deleted=upgraded.keys_deleted,
                scheduler_id=self.id,
            )

    def paused_ids(self) -> set[str] | None:
        """The paused connections; None when Redis cannot say (then none is swept or polled)."""
        try:
            return self.pauses.paused_ids()
        except BridgeError as exc:
            log.warning("scheduler.pauses_unreadable", error=type(exc).__name__)
            return None

    def release_held(self) -> None:
        """Release what is still held of each connection that is no longer paused: a resume
        that stopped part-way (a crash, Redis away) is finished here, so nothing stays held."""
        stored = [c.id for c in self.runtime.connections.list()]
        for connection_id, holding in self.pauses.holding(stored).items():
            if holding.held and not holding.is_paused and self.is_leader():
                released = self.pauses.release(connection_id, max_batches=RELEASE_BATCHES_A_TICK)
                if released:
                    log.info(
                        "held.released",
                        connection_id=connection_id,
                        count=released,
                        scheduler_id=self.id,
                    )

    def forget_series_of_gone_connections(self) -> None:
        """Now and then, erase the metric series of connections that are no longer stored: an
        offboarding erases its clinic's series, and this catches a count a worker pushed just
        after it (a job of that clinic that was running at that moment); and, once such a job
        has surely ended, whatever else it wrote (`offboarding.erase_leftovers`)."""
        now = time.monotonic()
        if now - self._series_checked_at < FORGET_SERIES_EVERY_SECONDS:
            return
        self._series_checked_at = now
        forgotten = forget_series_of_gone_connections(
            self.runtime.redis,
            self.runtime.keys,
            lambda: {c.id for c in self.runtime.connections.list()},
        )
        if forgotten:
            log.info("metrics.series_forgotten", count=forgotten, scheduler_id=self.id)
        stored = {c.id for c in self.runtime.connections.list()}
        for connection_id in offboarded_lately(self.runtime.audit, utcnow()):
            if connection_id in stored:
                continue
            found = erase_leftovers(self.runtime.redis, self.runtime.keys, connection_id)
            if found:
                log.warning(
                    "offboarding.leftovers_erased",
                    connection_id=connection_id,
                    scheduler_id=self.id,
                    **found,
                )

    def requeue_stalled_notes(self) -> None:
        """Queue again the notes not settled that nothing has moved for a while: their job
        may be lost (`NoteOutbox.stalled`). A duplicate message is harmless: one worker per
        note, compare-and-set moves, and a note found in `posting` is parked. A paused
        connection's notes wait for its resume (their messages are held, not lost)."""
        try:
            paused = self.pauses.paused_ids()
            stale = [(c, n) for c, n in self.runtime.outbox.stalled() if c not in paused]
            if stale:
                self.queue.enqueue([job_for_note(c, n) for c, n in stale])
                log.info("notes.requeued", count=len(stale), scheduler_id=self.id)
        except BridgeError as exc:
            log.warning("notes.requeue_failed", error=type(exc).__name__)

    def route_unrouted(self) -> None:
        """Write the kept Physitrack posts whose token a connection now knows; drop the ones
        nobody claimed in time (`shared.notes.unrouted`)."""
        now = utcnow()
        paused = self.pauses.paused_ids()  # a paused connection's kept posts wait for it
        routed = route_unrouted(
            self.unrouted,
            [c for c in self.runtime.connections.list() if c.id not in paused],
            self._route,
            now,
        )
        if routed:
            log.info("programs.routed", count=routed, scheduler_id=self.id)
        self.unrouted.forget_old(now)

    def _route(self, connection: Connection, callback: ProgramCallback) -> IntakeResult:
        """Take a kept post into `connection`; its unrouted log record says which note it
        became (not which connection: that record is no connection's to erase)."""
        kept = unrouted_id(callback)
        note_id = self.claims.for_post(connection, callback)
        taken = self.programs.accept(
            connection.id, note_id, callback, EventSource.UNROUTED, routed_from=kept
        )
        self.events.attempted(
            UNROUTED, kept, None, EventStatus(EventState.ROUTED, utcnow(), note_id=note_id)
        )
        return taken

    def poll_programs(self, connection: Connection) -> None:
        """Read each practitioner's new Physitrack events, once per poll interval, and record
        a note for every program the webhook did not bring (`shared.notes.program_poll`)."""
        now = utcnow()
        for practitioner in connection.physitrack_practitioners:
            if not self.is_leader():
                return  # another scheduler leads now: it polls from the saved cursors
            who = practitioner.halaxy_practitioner
            bound = log.bind(connection_id=connection.id, practitioner=who, scheduler_id=self.id)
            cursor: PollCursor | None = None
            try:
                cursor = self.cursors.get(connection.id, who)
                if cursor is not None and now - cursor.polled_at < self.poll_every:
                    continue
                self._poll(connection, practitioner, cursor, now, bound)
            except BridgeError as exc:
                event = "programs.poll_deferred" if isinstance(exc, RateLimited) else None
                bound.warning(
                    event or "programs.poll_failed", error=type(exc).__name__, reason=str(exc)
                )
                # Not again before the next interval, and never below the floor it had.
                waited = (
                    cursor.waited(now)
                    if cursor is not None
                    else PollCursor(0, now, 1, self._first_floor(practitioner))
                )
                with contextlib.suppress(BridgeError):
                    self.cursors.save(connection.id, who, waited)

    def _poll(
        self,
        connection: Connection,
        practitioner: Practitioner,
        cursor: PollCursor | None,
        now: datetime,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        services = self.runtime.services(connection.id)
        seat = connection.seat_key(practitioner)
        source = services.accounts.platforms.get(seat)
        if not isinstance(source, Physitrack):
            return
        first_floor = self._first_floor(practitioner) if cursor is None else None
        result, moved = poll_practitioner(
            source,
            connection,
            practitioner,
            cursor,
            now,
            self._poll_hooks(connection, practitioner, services.links, seat),
            first_floor,
        )
        self.cursors.save(connection.id, practitioner.halaxy_practitioner, moved)
        forget_polled(self.unrouted, practitioner.token.get_secret_value(), now)
        for outcome, count in result.counts().items():
            if count:
                PROGRAM_EVENTS.labels(connection.id, outcome).inc(count)
        if result.queued or result.revived or result.refused:
            bound.info(
                "programs.polled",
                **result.counts(),
                pages=result.pages,
                last_event_id=moved.last_event_id,
            )

    def _first_floor(self, practitioner: Practitioner) -> datetime:
        """Where a practitioner's first poll starts: when they were added, or the oldest post
        kept for their token before that (its link may have expired: the poll gets a new one)."""
        kept = self.unrouted.of_tokens([practitioner.token.get_secret_value()])
        return min([practitioner.added_at, *(p.callback.date_iso for p in kept)])

    def _poll_hooks(
        self,
        connection: Connection,
        practitioner: Practitioner,
        links: PatientLinks,
        seat: str | None,
    ) -> PollHooks:
        outbox = self.runtime.outbox

        def note_id(patient_id: str, event: ProgramEvent) -> str:
            return self.claims.note_id(
                connection.id,
                practitioner.halaxy_practitioner,
                patient_id,
                event.program_name,
                event.created,
                event.updated,
            )

        def mendable(record: NoteRecord | None) -> bool:
            return (
                record is not None
                and record.state is NoteState.FAILED
                and failed_for_its_link(record.reason)
            )

        def known(note: str) -> bool:
            record = outbox.get(connection.id, note)
            return record is not None and not mendable(record)

        def accept(note: str, callback: ProgramCallback) -> Taken:
            if mendable(outbox.get(connection.id, note)) and outbox.renew(
                connection.id, note, callback
            ):
                revived = EventStatus(EventState.QUEUED, utcnow(), detail="revived")
                self.events.attempted(connection.id, note, None, revived)
                self.queue.enqueue([job_for_note(connection.id, note)])
                return Taken.REVIVED
            taken = self.programs.accept(connection.id, note, callback, EventSource.PROGRAM_POLL)
            return Taken.QUEUED if taken.accepted else Taken.DUPLICATE

        def owns(patient_id: str, client_id: str) -> bool:
            link = links.get(patient_id, seat=seat)
            return link is not None and link.platform_id == client_id

        return PollHooks(note_id=note_id, known=known, accept=accept, owns=owns)

    def sweep_if_due(self, connection_id: str) -> None:
        bound = log.bind(connection_id=connection_id, scheduler_id=self.id)
        try:
            last, resumed = self.sweeps.last(connection_id), self.sweeps.progress(connection_id)
            now = utcnow()
            if resumed is None and not due(last, now, self.sweep_every):
                return
            services = self.runtime.services(connection_id)
            done = sweep(
                services.halaxy, self.queue, connection_id, last, now, self.sweeps, resumed
            )
            if done is None:
                return  # stopped after its pages for this tick; the next tick goes on
            self.sweeps.record(done)
            bound.info("reconcile.swept", kind=done.kind.value, queued=done.patients_queued)
        except RateLimited as exc:
            bound.info("reconcile.deferred", retry_after=exc.retry_after)  # next tick resumes
        except Permanent as exc:
            bound.error("reconcile.failed", error=type(exc).__name__, reason=str(exc))
            # A refusal will not pass by waiting; a next-page link Halaxy no longer honours is
            # one. Start the walk over next time rather than resume into it for good.
            with contextlib.suppress(BridgeError):
                self.sweeps.forget_progress(connection_id)
        except BridgeError as exc:
            bound.error("reconcile.failed", error=type(exc).__name__, reason=str(exc))

    def run(self, stop: threading.Event) -> None:
        log.info("scheduler.started", scheduler_id=self.id)
        while not stop.is_set():
            try:
                self.tick()
            except (BridgeError, redis.exceptions.RedisError) as exc:
                # A tick's steps each say what Redis failed them; whatever else it fails (a
                # failover under way) waits for the next tick: it must not end the scheduler.
                log.warning("scheduler.tick_failed", error=type(exc).__name__, scheduler_id=self.id)
            stop.wait(self.settings.scheduler_tick_seconds)
        self.resign()

    def resign(self) -> None:
        """Give up the leadership, if held, so another scheduler takes over at once; and the
        heartbeat: a scheduler stopped cleanly is gone, not dead."""
        try:
            if self._leader.owned():
                self._leader.release()
        except redis.exceptions.RedisError:  # Redis is away: the lease lapses by itself
            log.warning("scheduler.redis_unavailable", scheduler_id=self.id)
        with contextlib.suppress(BridgeError):
            self.heartbeats.stop(self.id)

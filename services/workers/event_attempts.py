"""Dramatiq middleware: each attempt at a logged event's job goes into the event log.

An attempt records when it started, the actor, its outcome (`job_metrics.outcome_of`: after
Dramatiq's Retries middleware has decided), what the job reported (`note_result`) or the
error's class, the requests it made (`shared.telemetry.attempts`, noted by the connection's
HTTP client), the last HTTP status, and how long it took; then the event's state moves.

Only the jobs of logged events are recorded: a Halaxy delivery's (its `event` is a Halaxy
event name) and a note's (`write_program_note`, whose `event_id` is its note id). A reconcile's
jobs are no delivery and have no record. An event with no record (older than the log, or taken
in before it) gets none: the log's script writes only beside an existing record.

The job's outcome comes through the attempt recorder, not the actor's return value: Dramatiq
logs a warning for every value an actor returns without a results backend.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from datetime import datetime
from typing import Any

import dramatiq
import structlog

from services.workers.breaker import CircuitOpen
from services.workers.fair_share import FairShareDeferred
from services.workers.holding import HELD
from services.workers.job_metrics import outcome_of
from shared.halaxy import HALAXY_EVENTS
from shared.infra import ActorName, QueueName, actor_for, utcnow
from shared.telemetry import (
    Attempt,
    AttemptOutcome,
    AttemptRecorder,
    EventLog,
    EventState,
    EventStatus,
    begin_attempt,
    end_attempt,
)

log = structlog.get_logger("halaxy_bridge.workers")

# What a job reported, and the state its event is in after it. A result not named here leaves
# the state as it was (a note's job that found its note settled already: `nothing_to_do`).
DONE = frozenset({"created", "updated", "posted", "recorded", "probed"})
UNCHANGED = frozenset({"unchanged", "already_synced"})
NOTE_ACTORS = frozenset(actor_for(ActorName.WRITE_PROGRAM_NOTE, queue) for queue in QueueName)
# A test event sent from /ops (`actors.probe_connection`).
PROBE_ACTORS = frozenset(actor_for(ActorName.PROBE_CONNECTION, queue) for queue in QueueName)


def event_of(message: Any) -> tuple[str, str] | None:
    """(connection id, event id) of a logged event's job, else None."""
    kwargs = message.kwargs
    connection_id, event_id = kwargs.get("connection_id"), kwargs.get("event_id")
    if not isinstance(connection_id, str) or not isinstance(event_id, str):
        return None
    if message.actor_name in NOTE_ACTORS | PROBE_ACTORS or kwargs.get("event") in HALAXY_EVENTS:
        return connection_id, event_id
    return None


def state_after(actor: str, outcome: str, result: str) -> EventState | None:
    """The event's state after an attempt; None leaves it as it was."""
    if outcome in ("retried", "deferred"):
        return EventState.RETRYING
    if outcome == "dead":
        return EventState.DEAD
    if outcome == "dropped":
        return EventState.DROPPED
    if result in DONE:
        return EventState.DONE
    if result in ("parked", "failed"):
        return EventState(result)
    if actor in NOTE_ACTORS:
        return None  # nothing_to_do: settled before, by another attempt or a person
    if result in UNCHANGED or result == "nothing_to_do":
        return EventState.SKIPPED_UNCHANGED
    if result.startswith(("skipped_", "left_")):
        return EventState.SKIPPED
    return EventState.DONE


class RecordEventAttempts(dramatiq.Middleware):
    """Its hooks run on the thread that runs the job, so what an attempt gathers is kept per
    thread (a message id is not unique among jobs in flight: a redelivery may run alongside)."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        recorder, token = begin_attempt()
        self._local.attempt = (utcnow(), time.perf_counter(), recorder, token)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._end()
        event = event_of(message)
        if started is None or event is None or isinstance(exception, FairShareDeferred):
            return  # a fair share deferral: the job did not run, and waits for a thread
        at, clock, recorder = started
        outcome = outcome_of(message, exception)
        self._record(message, event, at, time.perf_counter() - clock, recorder, outcome, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        started = self._end()
        event = event_of(message)
        if started is None or event is None or not message.options.get(HELD):
            return
        # Held, not run: its connection is paused (`holding.HoldPausedConnections`).
        at = started[0]
        connection_id, event_id = event
        attempt = Attempt(
            at=at,
            outcome=AttemptOutcome.HELD,
            actor=message.actor_name,
            detail="connection paused",
            message_id=message.message_id,
        )
        status = EventStatus(EventState.HELD, utcnow(), detail="connection paused")
        self._events.attempted(connection_id, event_id, attempt, status)

    def _end(self) -> tuple[datetime, float, AttemptRecorder] | None:
        started = getattr(self._local, "attempt", None)
        self._local.attempt = None
        if started is None:
            return None
        at, clock, recorder, token = started
        with suppress(ValueError):  # set in another context (never on Dramatiq's threads)
            end_attempt(token)
        return at, clock, recorder

    def _record(
        self,
        message: Any,
        event: tuple[str, str],
        at: datetime,
        seconds: float,
        recorder: AttemptRecorder,
        outcome: str,
        exception: BaseException | None,
    ) -> None:
        connection_id, event_id = event
        detail = recorder.result if exception is None else type(exception).__name__
        if isinstance(exception, CircuitOpen):
            detail = f"{exception.upstream} circuit open"
        attempt = Attempt(
            at=at,
            outcome=AttemptOutcome(outcome),
            actor=message.actor_name,
            detail=detail,
            status_code=recorder.last_status,
            seconds=round(seconds, 4),
            calls=tuple(recorder.calls),
            calls_not_kept=recorder.calls_not_kept,
            message_id=message.message_id,
        )
        state = state_after(message.actor_name, outcome, recorder.result)
        if isinstance(exception, CircuitOpen):
            state = EventState.DEFERRED
        status = None
        if state is not None:
            status = EventStatus(
                state=state,
                at=utcnow(),
                # Dramatiq dead-letters the message under its id; RecordDeadLetters keeps it
                # under the same id, which `dead-letters replay` takes.
                dead_letter_id=message.message_id if state is EventState.DEAD else "",
                detail=detail,
            )
        self._events.attempted(connection_id, event_id, attempt, status)

"""Ops actions on dead letters: select, replay (as bulk work), purge; each one audited."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.errors import InvalidInput, NotFound
from shared.infra.jobs import Job, JobQueue, QueueName, base_actor
from shared.ops.dead_letters import DeadLetter, DeadLetterStore
from shared.telemetry import Attempt, AttemptOutcome, EventLog, EventState, EventStatus

DURATION = re.compile(r"(\d{1,6})([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`--since`: an ISO 8601 time, or a duration back from now such as 30m, 24h or 7d."""
    if text is None or not text.strip():
        return None
    match = DURATION.fullmatch(text.strip())
    if match:
        try:
            return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise InvalidInput("since reaches back too far; give an ISO 8601 time") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput("since must be an ISO 8601 time or a duration like 24h or 7d") from None
    if moment.tzinfo is None:
        raise InvalidInput("since must carry a timezone, e.g. 2026-11-21T09:00:00Z")
    return moment


def select(
    store: DeadLetterStore,
    ids: list[str],
    connection_id: str | None,
    since: datetime | None,
    reason: str | None,
    all_matching: bool,
) -> list[DeadLetter]:
    """The letters named by id, or with `all_matching` every one the filters match."""
    if ids and all_matching:
        raise InvalidInput("give dead-letter ids or --all-matching, not both")
    if ids:
        found = [store.get(letter_id) for letter_id in ids]
        missing = [i for i, letter in zip(ids, found, strict=True) if letter is None]
        if missing:
            raise NotFound(f"no dead letter {', '.join(missing)}")
        return [letter for letter in found if letter is not None]
    if not all_matching:
        raise InvalidInput("give dead-letter ids, or --all-matching with filters")
    return store.list(connection_id, since, reason)


def replay(
    store: DeadLetterStore,
    queue: JobQueue,
    audit: AuditTrail,
    letters: list[DeadLetter],
    by: str,
    events: EventLog | None = None,
) -> list[str]:
    """Queue each letter's job again as bulk work (actors are idempotent), then forget it.
    With `events`, a logged event of the letter is `queued` again, its replay an attempt."""
    replayed = []
    for letter in letters:
        actor = base_actor(letter.actor)
        # Logged before the enqueue: a worker may run the job before this thread goes on.
        _log_replay(events, letter, queued=True)
        try:
            queue.enqueue([Job(actor=actor, queue=QueueName.BULK, kwargs=letter.kwargs)])
        except Exception:
            _log_replay(events, letter, queued=False)
            raise
        store.remove(letter.id)
        _audit(audit, by, "dead_letter.replayed", letter)
        replayed.append(letter.id)
    return replayed


def _log_replay(events: EventLog | None, letter: DeadLetter, *, queued: bool) -> None:
    """The letter's event, if logged: queued again by the replay, or still dead if the replay
    could not be queued."""
    connection_id, event_id = letter.kwargs.get("connection_id"), letter.kwargs.get("event_id")
    if events is None or not isinstance(connection_id, str) or not isinstance(event_id, str):
        return
    now = utcnow()
    if queued:
        events.attempted(
            connection_id,
            event_id,
            Attempt(now, AttemptOutcome.REPLAYED, "dead-letters replay", detail=letter.id),
            EventStatus(EventState.QUEUED, now, detail="replayed"),
        )
    else:
        still = EventStatus(EventState.DEAD, now, letter.id, detail="the replay was not queued")
        events.attempted(connection_id, event_id, None, still)


def purge(
    store: DeadLetterStore, audit: AuditTrail, letters: list[DeadLetter], by: str
) -> list[str]:
    purged = []
    for letter in letters:
        if store.remove(letter.id):
            _audit(audit, by, "dead_letter.purged", letter)
            purged.append(letter.id)
    return purged


def _audit(audit: AuditTrail, by: str, action: str, letter: DeadLetter) -> None:
    audit.record(
        actor=by,
        action=action,
        connection_id=letter.connection_id,
        resource_ids=f"{letter.id} {letter.actor}:{letter.resource_id}",
    )


def public(letter: DeadLetter) -> dict[str, Any]:
    """A letter as shown to ops: everything but the raw job arguments (shown as ids)."""
    data = asdict(letter)
    data.pop("kwargs")
    return data

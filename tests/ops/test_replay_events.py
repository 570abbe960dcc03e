"""A replay in the event log: the event is `queued` again before its job is (a worker may take
the job at once), and stays `dead`, naming its letter, when the job could not be queued."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
import redis

from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.errors import StoreUnavailable
from shared.infra.jobs import Job
from shared.infra.store import Keys
from shared.ops.dead_letters import DeadLetterStore
from shared.ops.replay import replay
from shared.telemetry.event_log import (
    EventLog,
    EventRecord,
    EventSource,
    EventState,
    EventStatus,
)
from tests.ops.test_dead_letters import LETTER


class WatchingQueue:
    """Notes the event's state at the moment each job is queued; or refuses to queue."""

    def __init__(self, events: EventLog, refuse: bool = False) -> None:
        self.events = events
        self.refuse = refuse
        self.states_when_queued: list[str] = []

    def enqueue(self, jobs: Sequence[Job]) -> None:
        if self.refuse:
            raise StoreUnavailable("Redis is unreachable: ConnectionError")
        [view] = self.events.get("ev-1", "cn_a")
        self.states_when_queued.append(view.status.state.value)


@pytest.fixture
def events(redis_server_client: redis.Redis, keys: Keys) -> EventLog:
    log = EventLog(redis_server_client, keys)
    record = EventRecord(
        "ev-1", "cn_a", EventSource.HALAXY_WEBHOOK, "patient-created", "1001", utcnow()
    )
    log.received(record)
    log.attempted("cn_a", "ev-1", None, EventStatus(EventState.DEAD, utcnow(), LETTER.id))
    return log


@pytest.fixture
def letters(redis_server_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    store = DeadLetterStore(redis_server_client, keys)
    store.add(LETTER)
    return store


def test_the_event_is_queued_again_before_its_job_is(
    events: EventLog, letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    queue = WatchingQueue(events)
    audit = AuditTrail(redis_server_client, keys)
    assert replay(letters, queue, audit, [LETTER], "ops", events) == [LETTER.id]
    assert queue.states_when_queued == ["queued"]
    [view] = events.get("ev-1")
    assert (view.attempts[-1].outcome.value, view.attempts[-1].detail) == ("replayed", LETTER.id)
    assert view.status.dead_letter_id == ""


def test_a_replay_that_could_not_be_queued_leaves_the_event_dead(
    events: EventLog, letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    audit = AuditTrail(redis_server_client, keys)
    with pytest.raises(StoreUnavailable):
        replay(letters, WatchingQueue(events, refuse=True), audit, [LETTER], "ops", events)
    [view] = events.get("ev-1")
    assert (view.status.state, view.status.dead_letter_id) == (EventState.DEAD, LETTER.id)
    assert letters.get(LETTER.id) is not None  # still there to replay


def test_a_letter_of_no_logged_event_is_replayed_as_before(
    events: EventLog, letters: DeadLetterStore, redis_server_client: redis.Redis, keys: Keys
) -> None:
    other = replace(LETTER, id="m-9", kwargs={**LETTER.kwargs, "event_id": "reconcile:x:1001"})
    letters.add(other)
    queue = WatchingQueue(events)
    audit = AuditTrail(redis_server_client, keys)
    assert replay(letters, queue, audit, [other], "ops", events) == ["m-9"]
    assert events.get("reconcile:x:1001") == []

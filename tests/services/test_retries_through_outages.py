"""A job's retry is not lost while Redis is away (`services/workers/retries.py`): its enqueue is
tried again until Redis takes it; after the patience, the message fails to the dead letters."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from services.workers.retries import RetriesThroughOutages, replace_retries
from shared.infra import StoreUnavailable


class AwayForAWhile(StubBroker):
    """A broker whose first `refusals` enqueues fail as Redis's would."""

    def __init__(self, refusals: int, refusal: Exception | None = None) -> None:
        super().__init__()
        self.refusals = refusals
        self.refusal = refusal or redis.exceptions.ConnectionError(
            "Error 111 connecting. Connection refused."
        )
        self.enqueued: list[tuple[dramatiq.Message[Any], int | None]] = []

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        if self.refusals > 0:
            self.refusals -= 1
            raise self.refusal
        self.enqueued.append((message, delay))
        return message


def failed_job(broker: StubBroker) -> MessageProxy:
    @dramatiq.actor(broker=broker, actor_name="sync_patient")
    def sync_patient() -> None: ...

    return MessageProxy(sync_patient.message().copy(options={"redis_message_id": "m1"}))


def test_the_broker_retries_through_outages_with_the_settings_it_had() -> None:
    broker = StubBroker()
    [(position, before)] = [
        (n, m) for n, m in enumerate(broker.middleware) if isinstance(m, Retries)
    ]

    replace_retries(broker)

    [(where, after)] = [(n, m) for n, m in enumerate(broker.middleware) if isinstance(m, Retries)]
    assert isinstance(after, RetriesThroughOutages)
    assert where == position  # the middleware after it still sees its verdict
    assert (after.max_retries, after.min_backoff, after.max_backoff) == (
        before.max_retries,
        before.min_backoff,
        before.max_backoff,
    )


# Redis away, or refusing writes for a while: a replica not yet promoted, out of memory under
# noeviction, unable to write its AOF, loading its data set.
PASSING = [
    redis.exceptions.ConnectionError("Error 111 connecting. Connection refused."),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.exceptions.ResponseError("MISCONF Errors writing to the AOF file"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
]


@pytest.mark.parametrize("refusal", PASSING, ids=lambda e: type(e).__name__ + str(e)[:8])
def test_a_retry_refused_while_redis_is_away_is_enqueued_once_it_is_back(
    refusal: Exception,
) -> None:
    broker = AwayForAWhile(refusals=3, refusal=refusal)
    message = failed_job(broker)
    retries = RetriesThroughOutages(patience_seconds=30, pause_seconds=0.01)

    retries.after_process_message(broker, message, exception=StoreUnavailable("away"))

    [(enqueued, delay)] = broker.enqueued
    assert enqueued.message_id == message.message_id
    assert enqueued.options["retries"] == 1  # counted once, however many tries it took
    assert delay is not None
    assert not message.failed


def test_a_retry_redis_never_takes_fails_the_message_to_the_dead_letters() -> None:
    broker = AwayForAWhile(refusals=10**6)
    message = failed_job(broker)
    retries = RetriesThroughOutages(patience_seconds=0.05, pause_seconds=0.01)

    retries.after_process_message(broker, message, exception=StoreUnavailable("away"))

    assert broker.enqueued == []
    assert message.failed


def test_a_retry_refused_for_a_reason_that_lasts_is_not_waited_for() -> None:
    """A refusal that is no outage (a script error, say) is Dramatiq's to report at once."""
    broker = AwayForAWhile(refusals=1, refusal=redis.exceptions.ResponseError("ERR unknown"))
    message = failed_job(broker)
    retries = RetriesThroughOutages(patience_seconds=30, pause_seconds=0.01)

    with pytest.raises(redis.exceptions.ResponseError):
        retries.after_process_message(broker, message, exception=StoreUnavailable("away"))
    assert broker.enqueued == []


@pytest.mark.parametrize("refusals", [0, 1])
def test_a_job_that_succeeded_is_not_retried(refusals: int) -> None:
    broker = AwayForAWhile(refusals=refusals)
    message = failed_job(broker)

    RetriesThroughOutages().after_process_message(broker, message, result=None, exception=None)

    assert broker.enqueued == []
    assert not message.failed

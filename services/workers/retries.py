"""Dramatiq's `Retries`, whose retry is not lost when Redis is away for a moment.

A job that fails because Redis is failing over (or restarting) is retried by enqueueing it
again, delayed, before its message is acknowledged. Dramatiq's `Retries` makes that enqueue
once: if Redis refuses it, the broker logs the error, the worker acknowledges the message
anyway (retrying the acknowledgement until Redis is back), and the job is gone. Here the
enqueue is tried again until Redis takes it, as Dramatiq retries its acknowledgement. Should
Redis stay away longer than `patience_seconds`, the message fails to the dead letters
instead (acknowledged as failed once Redis is back): kept for ops to replay, never dropped.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.middleware import Retries

log = structlog.get_logger("halaxy_bridge.workers")

PATIENCE_SECONDS = 120.0  # longer than any failover: the sentinels' down-after plus election
PAUSE_SECONDS = 0.5


class RetriesThroughOutages(Retries):
    def __init__(
        self,
        *,
        patience_seconds: float = PATIENCE_SECONDS,
        pause_seconds: float = PAUSE_SECONDS,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.patience_seconds = patience_seconds
        self.pause_seconds = pause_seconds

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,  # a MessageProxy
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        patient = _PatientEnqueue(broker, message, self.patience_seconds, self.pause_seconds)
        super().after_process_message(  # type: ignore[no-untyped-call]
            patient, message, result=result, exception=exception
        )


def replace_retries(broker: dramatiq.Broker) -> None:
    """Put `RetriesThroughOutages` where the broker's `Retries` is, with its settings."""
    for position, middleware in enumerate(broker.middleware):
        if type(middleware) is Retries:
            broker.middleware[position] = RetriesThroughOutages(
                max_retries=middleware.max_retries,
                min_backoff=middleware.min_backoff,
                max_backoff=middleware.max_backoff,
                retry_when=middleware.retry_when,
            )


# Refusals that pass as an outage does: a replica not yet promoted (READONLY, in REDIS_URL
# mode), a Redis out of memory under `noeviction` or unable to write its AOF (MISCONF).
PASSING_REFUSALS = ("READONLY", "OOM", "MISCONF", "LOADING")


def passing(exc: redis.exceptions.RedisError) -> bool:
    """Redis away, or refusing writes for a while: worth waiting for before giving up."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    if isinstance(exc, redis.exceptions.ReadOnlyError | redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(PASSING_REFUSALS)


class _PatientEnqueue:
    """The broker, as `Retries` uses it, with an `enqueue` that waits for Redis."""

    def __init__(
        self, broker: dramatiq.Broker, message: Any, patience: float, pause: float
    ) -> None:
        self._broker = broker
        self._message = message
        self._patience = patience
        self._pause = pause

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        deadline = time.monotonic() + self._patience
        while True:
            try:
                return self._broker.enqueue(message, delay=delay)
            except redis.exceptions.RedisError as exc:
                if not passing(exc):
                    raise
                if time.monotonic() > deadline:
                    log.error(
                        "job.retry_not_queued",
                        message_id=message.message_id,
                        error=type(exc).__name__,
                        to="dead letters",
                    )
                    self._message.fail()
                    return None
                time.sleep(self._pause)

"""Dramatiq middleware: count each job's outcome and time, and push the counts to Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
from dramatiq.common import q_name

from services.workers.fair_share import FairShareDeferred
from services.workers.holding import HELD
from shared.infra import epoch_seconds
from shared.telemetry import JOB_DURATION, JOBS, LAST_SUCCESS, MetricsPusher

# `policy.job_outcome` sets this on a message whose connection was disabled meanwhile.
DROPPED = "bridge_dropped"


def outcome_of(message: Any, exception: BaseException | None) -> str:
    """Called after Dramatiq's Retries middleware, so `message.failed` says if it gave up."""
    if exception is None:
        return "dropped" if message.options.get(DROPPED) else "succeeded"
    if message.failed:
        return "dead"
    if isinstance(exception, dramatiq.Retry):
        return "deferred"
    return "retried"


class JobMetrics(dramatiq.Middleware):
    """A job's hooks run on the thread that runs it, so its start time is kept per thread
    (a message id is not unique among jobs in flight: a redelivery may run alongside)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._local.started = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = getattr(self._local, "started", None)
        self._local.started = None
        # Put off by fair share: it did not run, and will (not a failure, not throughput).
        waiting = isinstance(exception, FairShareDeferred)
        outcome = "waiting" if waiting else outcome_of(message, exception)
        connection_id = _count(message, outcome)
        if started is not None and not waiting:
            JOB_DURATION.labels(message.actor_name, connection_id).observe(
                time.perf_counter() - started
            )
        if outcome == "succeeded":
            LAST_SUCCESS.labels(connection_id).set(epoch_seconds())

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._local.started = None
        # A paused connection's message set aside (`holding`) is neither a failure nor done.
        _count(message, "held" if message.options.get(HELD) else "skipped")


def _count(message: Any, outcome: str) -> str:
    connection_id = str(message.kwargs.get("connection_id", ""))
    JOBS.labels(message.actor_name, q_name(message.queue_name), connection_id, outcome).inc()
    return connection_id


class PushMetrics(dramatiq.Middleware):
    """Starts the pusher in each worker process and sends what is left when it stops."""

    def __init__(self, pusher: MetricsPusher) -> None:
        self._pusher = pusher

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._pusher.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._pusher.stop()

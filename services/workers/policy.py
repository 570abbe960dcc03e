"""How an actor's outcome becomes a queue decision: one place, used by every actor.

`Permanent` goes to the dead letters at once. `Transient` is retried with exponential backoff
and jitter (Dramatiq's: each wait is 50-100% of 15 s x 2^n, capped at 6 hours) for at least 72
hours before the message is dead-lettered. `RateLimited` is retried after the delay the remote
side asked for, from the delay queue (no worker thread sleeps), and does not count against the
retry budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import dramatiq
import structlog

from services.workers.job_metrics import DROPPED
from shared.infra import ConnectionNotFound, Permanent, RateLimited, Transient
from shared.telemetry import RATE_LIMIT_DEFERRALS

MIN_BACKOFF_MS = 15_000
MAX_BACKOFF_MS = 6 * 3600 * 1000
RETRY_SPAN = timedelta(hours=72)


def retries_to_span(span: timedelta, min_backoff_ms: int, max_backoff_ms: int) -> int:
    """How many retries it takes for even the shortest jittered waits to add up to `span`."""
    waited_ms, retries = 0.0, 0
    while waited_ms < span.total_seconds() * 1000:
        waited_ms += min(min_backoff_ms * 2**retries, max_backoff_ms) / 2  # jitter: >= half
        retries += 1
    return retries


MAX_RETRIES = retries_to_span(RETRY_SPAN, MIN_BACKOFF_MS, MAX_BACKOFF_MS)

log = structlog.get_logger("halaxy_bridge.workers")


def should_retry(retries: int, exception: BaseException) -> bool:
    """Dramatiq's `retry_when`: never a `Permanent` error, always a rate-limit deferral, else
    up to MAX_RETRIES."""
    if isinstance(exception, Permanent):
        return False
    if isinstance(exception, dramatiq.Retry):
        return True
    return retries < MAX_RETRIES


# The options every actor is declared with.
RETRY_OPTIONS: dict[str, Any] = {
    "retry_when": should_retry,
    # Dramatiq logs an expected failure by its type alone, not with a traceback whose text
    # could carry what a remote system said.
    "throws": (Permanent,),
    "min_backoff": MIN_BACKOFF_MS,
    "max_backoff": MAX_BACKOFF_MS,
}


class RetriedWithoutTraceback(logging.Filter):
    """Dramatiq logs a failure its actor does not declare in `throws` at ERROR with a traceback,
    and it cannot be declared: `throws` also stops the retries. A `Transient` failure is
    expected and retried, and `job_outcome` has logged it (`job.retrying`), so its line keeps
    the message and the error's type and drops the traceback, whose text could carry what a
    remote system said and which reads as a crash to whoever watches the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, Transient) and isinstance(record.args, tuple):
            record.msg = "Failed to process message %s with expected exception %s."
            record.args = (*record.args[:1], type(error).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Dramatiq's worker threads log their failures on this logger.
logging.getLogger("dramatiq.worker.WorkerThread").addFilter(RetriedWithoutTraceback())


@contextmanager
def job_outcome(actor: str, **ids: Any) -> Iterator[structlog.typing.FilteringBoundLogger]:
    """Bind the job's ids to every log line and translate errors into queue decisions."""
    message = dramatiq.middleware.CurrentMessage.get_current_message()
    bound = log.bind(
        actor=actor,
        message_id=message.message_id if message else None,
        attempt=(message.options.get("retries", 0) + 1) if message else None,
        **ids,
    )
    try:
        yield bound
    except ConnectionNotFound as exc:
        bound.warning("job.dropped", reason=str(exc))  # disabled since queued: nothing to do
        if message is not None:
            message.options[DROPPED] = True
    except RateLimited as exc:
        bound.warning("job.deferred", reason=str(exc), retry_after=exc.retry_after)
        RATE_LIMIT_DEFERRALS.labels(ids.get("connection_id", ""), exc.target).inc()
        if message is not None:
            # Dramatiq's Retries middleware adds one to the count for this Retry; take it off
            # first, so waiting for a rate limit never uses up the budget for real failures.
            message.options["retries"] = message.options.get("retries", 0) - 1
        raise dramatiq.Retry(str(exc), delay=int(exc.retry_after * 1000)) from exc
    except Permanent as exc:
        bound.error("job.failed", error=type(exc).__name__, reason=str(exc), retry=False)
        raise
    except Transient as exc:
        bound.warning("job.retrying", error=type(exc).__name__, reason=str(exc))
        raise

"""How an actor's outcome becomes a queue decision: one place, used by every actor.

`Permanent` goes to the dead letters at once; `Transient` is retried with Dramatiq's
exponential backoff; `RateLimited` is retried after the delay the remote side asked for,
without a worker thread sleeping (the message waits in the delay queue).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import structlog

from shared.errors import ConnectionNotFound, Permanent, RateLimited, Transient

MAX_RETRIES = 20

log = structlog.get_logger("halaxy_bridge.workers")


def should_retry(retries: int, exception: BaseException) -> bool:
    """Dramatiq's `retry_when`: never a `Permanent` error, else up to MAX_RETRIES."""
    if isinstance(exception, Permanent):
        return False
    return retries < MAX_RETRIES


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
    except RateLimited as exc:
        bound.warning("job.deferred", reason=str(exc), retry_after=exc.retry_after)
        raise dramatiq.Retry(str(exc), delay=int(exc.retry_after * 1000)) from exc
    except Permanent as exc:
        bound.error("job.failed", error=type(exc).__name__, reason=str(exc), retry=False)
        raise
    except Transient as exc:
        bound.warning("job.retrying", error=type(exc).__name__, reason=str(exc))
        raise

"""The product's one clock: every reading of the wall-clock time goes through here.

Expiries, retention, schedules and the times written into records all compare with `utcnow()`
or `epoch_seconds()`. Tests move this clock with `time-machine` (which moves what both read),
never by patching this module, and `make test` runs the date-bound tests again with the whole
process tree a year ahead (`faketime`). Durations and deadlines inside one process use
`time.monotonic()` instead: it is not a date, and a clock moved by a test must not stretch them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


def epoch_seconds() -> float:
    """Now, as seconds since the epoch: the scores of Redis's time-ordered indexes."""
    return time.time()


def iso_now() -> str:
    """Now as the records write it: ISO 8601, whole seconds, with its offset."""
    return utcnow().isoformat(timespec="seconds")

"""Imported at start-up by every Python process of a test run under Debian's `faketime` with
FAKETIME_DONT_FAKE_MONOTONIC=1 (tests/conftest.py puts this folder on PYTHONPATH then).

libfaketime 0.9.10 breaks `time.sleep` there: Python 3.11 sleeps with
clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which it shifts by the fake offset although
the monotonic clock is not faked, and every sleep fails with EINVAL (libfaketime issue 426).
With the monotonic clock faked as well, thread waits with a timeout hang instead (issue 390),
so that mode is no way out. Sleeping on select() with a relative timeout is unaffected."""

from __future__ import annotations

import os
import select
import time


def _broken() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return "faketime" in preload and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1"


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


if _broken():
    time.sleep = _sleep

"""Moves the wall clock of every Python process of a test run by `HB_TEST_CLOCK_SHIFT_DAYS`.

`make test` runs the suite a second time with this folder on PYTHONPATH and the shift set to a
year, so pytest and every process it starts (receiver, worker, scheduler, CLI) read a date a
year ahead, and a test that only passes on the day it was written fails there.

time-machine moves what `time.time()` and `datetime.now()` read, not the monotonic clock, the
sleeps or the lock timeouts, which a date must never stretch. (Debian's faketime moves the
whole process, monotonic clock included: under it CPython's timed lock waits, which take an
absolute monotonic deadline the library does not translate, wait for a year, and
`time.sleep` fails with EINVAL when the monotonic clock is left alone.) Redis, Chromium and
promtool keep the real time: nothing of the bridge compares their clocks with its own.
"""

import os

_shift = os.environ.get("HB_TEST_CLOCK_SHIFT_DAYS")
if _shift:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_shift) * 86_400, tick=True).start()
    # time-machine's clock starts ticking at its first reading, not at start(): read it now,
    # or each process would lag the shift by however long its imports took before anything
    # read the time (0.1 s and more), and one process's "now" would be another's future.
    time.time()

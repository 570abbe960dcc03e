"""The clock the run reads: today's, or a year ahead in `make test`'s second run.

Redis keeps the real time in both runs, so it tells how far the product's clock was moved: a
second run that moved nothing would pass without proving anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis
import time_machine

from shared.infra.clock import epoch_seconds, utcnow

SHIFT_SECONDS = float(os.environ.get("HB_TEST_CLOCK_SHIFT_DAYS", "0")) * 86400
SLACK = 60.0


def real_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def test_this_process_reads_the_clock_the_run_set(redis_server_client: redis.Redis) -> None:
    assert abs(epoch_seconds() - real_time(redis_server_client) - SHIFT_SECONDS) < SLACK
    assert abs(utcnow().timestamp() - epoch_seconds()) < SLACK


def test_the_processes_a_test_starts_read_the_same_clock(redis_server_client: redis.Redis) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from shared.infra.clock import epoch_seconds; print(epoch_seconds())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert abs(float(child.stdout) - real_time(redis_server_client) - SHIFT_SECONDS) < SLACK


def test_the_shell_commands_a_test_runs_read_the_same_date() -> None:
    """The README's curl lines date a program callback with `date`: it must agree too."""
    shell = subprocess.run(["date", "+%s"], capture_output=True, text=True, check=True)
    assert abs(float(shell.stdout) - epoch_seconds()) < SLACK


# How far the clock of a process of the run may be from the shift: two clock readings apart.
SAME_SHIFT = 0.005
# A process's shift, to the microsecond: its clock less the real one time-machine keeps.
PRINT_SHIFT = """
import time, time_machine
hatch = time_machine.escape_hatch
print(time.time() - hatch.time.time() if hatch.is_travelling() else 0.0)
"""


def test_every_process_is_moved_by_the_same_amount_however_long_it_took_to_start() -> None:
    """One process's "now" must not be another's future: a worker's last success stamped
    after pytest's now failed the metrics test once, when each process's moved clock started
    at its first reading, after imports that took a different time in each."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import dramatiq, httpx, pydantic, starlette, structlog" + PRINT_SHIFT,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert abs(float(child.stdout) - SHIFT_SECONDS) < SAME_SHIFT
    hatch = time_machine.escape_hatch
    this_process = time.time() - hatch.time.time() if hatch.is_travelling() else 0.0
    assert abs(this_process - SHIFT_SECONDS) < SAME_SHIFT

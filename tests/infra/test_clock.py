"""The clock the run reads: today's, or a year ahead in `make test`'s second run.

Redis keeps the real time in both runs, so it tells how far the product's clock was moved: a
second run that moved nothing would pass without proving anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import redis

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

"""A patient's trip, timed: webhook sent to the receiver -> client created in the platform.

Both ends are stamped in this process (the sender, and the sandbox Physitrack serving here),
on the same monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.common import BenchError, wait_for
from bench.loadgen import send_paced
from bench.sandbox import Webhook, timed
from tests.workers import Sandbox


def send_and_time(
    base_url: str,
    sandbox: Sandbox,
    hooks: Sequence[Webhook],
    rate: float,
    settle_seconds: float = 60.0,
) -> list[float]:
    """Send `hooks` at `rate` a second; each patient's seconds from send to platform."""
    sent = send_paced(base_url, hooks, rate)
    return trip_latencies(sandbox, hooks, sent, settle_seconds)


def trip_latencies(
    sandbox: Sandbox,
    hooks: Sequence[Webhook],
    sent: dict[str, float],
    settle_seconds: float = 60.0,
) -> list[float]:
    """Each patient's seconds from `sent` to its creation in the platform (waits for all)."""
    written = timed(sandbox).written_at

    def arrived() -> bool:
        return all(hook.patient_id in written for hook in hooks)

    try:
        wait_for(arrived, settle_seconds, "every patient to reach the platform", poll=0.02)
    except BenchError:
        missing = sum(1 for hook in hooks if hook.patient_id not in written)
        raise BenchError(
            f"{missing} of {len(hooks)} patients not in the platform after {settle_seconds} s"
        ) from None
    return [written[hook.patient_id] - sent[hook.patient_id] for hook in hooks]


def warm_up(base_url: str, sandbox: Sandbox, hooks: Sequence[Webhook]) -> None:
    """One event per clinic first, so tokens and connection pools exist (the steady state)."""
    send_and_time(base_url, sandbox, hooks, rate=50.0, settle_seconds=30.0)


def bounded_latencies(
    sandbox: Sandbox,
    hooks: Sequence[Webhook],
    since: dict[str, float],
    settle_seconds: float,
) -> tuple[list[float], int]:
    """Each patient's seconds from `since` to its creation in the platform, waiting at most
    `settle_seconds` for the last; a patient still missing then counts as the time it has
    waited (a lower bound). Also returns how many were missing."""
    written = timed(sandbox).written_at
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and not all(h.patient_id in written for h in hooks):
        time.sleep(0.02)
    now = time.monotonic()
    latencies = [written.get(h.patient_id, now) - since[h.patient_id] for h in hooks]
    missing = sum(1 for h in hooks if h.patient_id not in written)
    return latencies, missing

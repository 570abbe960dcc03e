"""P2's floor: `dramatiq bench.noop_worker`, the product's broker and middleware (it imports
`services.workers`) plus an actor that does nothing, declared like the patient sync it is the
floor for (live queue and priority, time limit, retry options)."""

from __future__ import annotations

from typing import Any

import dramatiq

from services.workers import broker
from services.workers.policy import RETRY_OPTIONS
from services.workers.time_limits import TIME_LIMITS_MS
from shared.jobs import LIVE_PRIORITY, ActorName, QueueName

ACTOR_NAME = "bench_noop"


def bench_noop(**kwargs: Any) -> None:
    """Nothing: what is left is Dramatiq's own cost per message."""


dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=QueueName.LIVE.value,
    priority=LIVE_PRIORITY,
    time_limit=TIME_LIMITS_MS[ActorName.SYNC_PATIENT],
    broker=broker,
    **RETRY_OPTIONS,
)(bench_noop)

__all__ = ["ACTOR_NAME", "broker"]

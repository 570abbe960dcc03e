"""The actor P2's floor and ceiling workers declare: named and declared like the patient sync
(live queue and priority, time limit, retry options), on the product's broker and middleware
(importing `services.workers`). Each worker module gives it a body of its own."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq

from services.workers import broker
from services.workers.policy import RETRY_OPTIONS
from services.workers.time_limits import TIME_LIMITS_MS
from shared.infra.jobs import LIVE_PRIORITY, ActorName, QueueName

ACTOR_NAME = "bench_noop"
# P2's ceiling (bench.ceiling, bench.ceiling_worker): where its plan is, where it sends requests.
PLAN_FILE = "BENCH_CEILING_PLAN"
UPSTREAM_URL = "BENCH_UPSTREAM_URL"
DROPPED_HEADERS = frozenset({"host", "content-length", "connection"})  # httpx sets its own


def declare(body: Callable[..., None]) -> None:
    dramatiq.actor(
        actor_name=ACTOR_NAME,
        queue_name=QueueName.LIVE.value,
        priority=LIVE_PRIORITY,
        time_limit=TIME_LIMITS_MS[ActorName.SYNC_PATIENT],
        broker=broker,
        **RETRY_OPTIONS,
    )(body)


__all__ = ["ACTOR_NAME", "DROPPED_HEADERS", "PLAN_FILE", "UPSTREAM_URL", "broker", "declare"]

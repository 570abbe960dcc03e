"""The breaker's Dramatiq middleware: its deferral is one Dramatiq lets out of a before-hook
and treats as a retry, and a breaker Redis cannot read never stops a job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import MiddlewareError

from services.workers.breaker import CircuitOpen, DeferOpenCircuits
from shared.infra.store import Keys
from shared.telemetry import BreakerPolicy, CircuitBreakers
from tests.redis_server import free_port


def test_a_deferral_leaves_the_before_hook_and_is_a_retry_with_its_delay() -> None:
    deferral = CircuitOpen("cn_x", "platform", 31_000)
    assert isinstance(deferral, MiddlewareError)  # Dramatiq only logs any other error there
    assert isinstance(deferral, dramatiq.Retry)
    assert (deferral.delay, deferral.upstream) == (31_000, "platform")


def test_a_breaker_that_cannot_be_read_lets_the_job_run() -> None:
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    policy = BreakerPolicy(5, timedelta(seconds=30))
    middleware = DeferOpenCircuits(CircuitBreakers(gone, Keys("hb-gone"), policy))
    message: Any = dramatiq.Message(
        queue_name="live",
        actor_name="sync_patient",
        args=(),
        kwargs={"connection_id": "cn_x"},
        options={},
    )

    broker = dramatiq.get_broker()
    middleware.before_process_message(broker, message)  # no deferral raised: the job runs
    middleware.after_process_message(broker, message)

    assert message.options == {}

"""Dramatiq middleware: a connection whose upstream's circuit is open has its messages deferred.

Before a message of a connection runs, its circuits are read (`CircuitBreakers.admit`). While
one is open the message goes back to the delay queue until the cooldown ends (a `CircuitOpen`
retry: no worker thread waits, and the retry budget is untouched, as for `RateLimited`); when
the cooldown has ended, the one message that takes the probe lease runs and the others wait a
cooldown more. What the job's requests met (`begin_outcomes`, noted by the connection's HTTP
client) is recorded once it has ended: that is what opens, closes or re-opens the circuit.

A deferral is counted as `deferred` (`job_metrics`), never as a failure, and is logged in the
event log as its own state (`deferred`), never dead-lettered.
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import suppress
from contextvars import Token
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.middleware import MiddlewareError

from services.workers.time_limits import LONGEST_JOB_SECONDS
from shared.infra import BridgeError, Keys, Settings, utcnow
from shared.telemetry import (
    Admission,
    BreakerPolicy,
    Circuit,
    CircuitBreakers,
    UpstreamOutcomes,
    begin_outcomes,
    circuit_is_clean,
    end_outcomes,
)

log = structlog.get_logger("halaxy_bridge.workers")

# Deferred messages come back spread over this share of the cooldown, not all at once.
JITTER_SHARE = 0.1
# A connection found with every circuit closed is taken as such this long by this process,
# without reading Redis again for each of its messages: a circuit another process opens
# meanwhile is noticed within it. A failure this process sees ends it at once.
ALL_CLOSED_SECONDS = 1.0


def circuit_breakers(settings: Settings, client: redis.Redis) -> CircuitBreakers:
    """The breakers as the settings say; a probe's lease outlives the longest job, so only a
    worker that died mid-probe leaves it to run out."""
    policy = BreakerPolicy(
        failures=settings.breaker_failures,
        cooldown=timedelta(seconds=settings.breaker_cooldown_seconds),
    )
    lease = timedelta(seconds=LONGEST_JOB_SECONDS + 60)
    return CircuitBreakers(client, Keys(settings.redis_namespace), policy, lease)


class CircuitOpen(dramatiq.Retry, MiddlewareError):
    """The message waits: its connection's `upstream` circuit is open (or being probed).
    A `MiddlewareError` too: Dramatiq lets only those out of a `before_` hook (it logs any
    other and runs the job), and then treats it as the job's exception: a `Retry`."""

    def __init__(self, connection_id: str, upstream: str, delay_ms: int) -> None:
        super().__init__(f"connection {connection_id}: {upstream} circuit open", delay=delay_ms)
        self.upstream = upstream


@dataclass(frozen=True)
class _Admitted:
    connection_id: str
    admission: Admission
    seen: dict[str, Circuit]
    lease_token: str
    outcomes: UpstreamOutcomes
    context_token: Token[UpstreamOutcomes | None]


class DeferOpenCircuits(dramatiq.Middleware):
    """Its hooks run on the thread that runs the job, so what a job gathers is kept per
    thread (a message id is not unique among jobs in flight: a redelivery may run alongside)."""

    def __init__(
        self, breakers: CircuitBreakers, all_closed_seconds: float = ALL_CLOSED_SECONDS
    ) -> None:
        self.breakers = breakers
        self._local = threading.local()
        self._all_closed_seconds = all_closed_seconds
        self._all_closed_until: dict[str, float] = {}  # connection id -> monotonic time

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._local.admitted = None
        connection_id = message.kwargs.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            return
        now = utcnow()
        lease_token = secrets.token_hex(8)
        try:
            seen = self._circuits(connection_id)
            admission = self.breakers.admit(connection_id, lease_token, now, seen) if seen else None
        except BridgeError as exc:
            # Redis did not answer: the job runs (it needs Redis too, and fails on its own if
            # it is gone); a breaker never stops work because it cannot be read.
            log.warning("circuit.unchecked", connection_id=connection_id, error=type(exc).__name__)
            return
        if admission is not None and admission.wait_until is not None:
            # Dramatiq's Retries middleware adds one to the count for this Retry; take it off
            # first, so waiting for a circuit never uses up the budget for real failures.
            message.options["retries"] = message.options.get("retries", 0) - 1
            delay_ms = self._delay_ms(admission.wait_until, now)
            raise CircuitOpen(connection_id, admission.upstream, delay_ms)
        outcomes, context_token = begin_outcomes()
        self._local.admitted = _Admitted(
            connection_id, admission or Admission(), seen, lease_token, outcomes, context_token
        )

    def _circuits(self, connection_id: str) -> dict[str, Circuit]:
        if self._all_closed_until.get(connection_id, 0.0) > time.monotonic():
            return {}
        seen = self.breakers.read(connection_id)
        if all(circuit_is_clean(circuit) for circuit in seen.values()):
            self._all_closed_until[connection_id] = time.monotonic() + self._all_closed_seconds
            return {}
        return seen

    def _delay_ms(self, until: datetime, now: datetime) -> int:
        cooldown_ms = int(self.breakers.policy.cooldown.total_seconds() * 1000)
        jitter = secrets.randbelow(max(1, int(cooldown_ms * JITTER_SHARE)))
        return max(1000, int((until - now).total_seconds() * 1000)) + jitter

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        admitted = self._end()
        if admitted is None:
            return
        if any(admitted.outcomes.failed.values()):
            self._all_closed_until.pop(admitted.connection_id, None)
        try:
            self.breakers.record(
                admitted.connection_id,
                dict(admitted.outcomes.failed),
                admitted.admission,
                admitted.lease_token,
                utcnow(),
                admitted.seen,
            )
        except BridgeError as exc:
            # The job's own outcome stands; the circuit misses one count (and a probe's lease
            # runs out by itself).
            log.warning(
                "circuit.not_recorded",
                connection_id=admitted.connection_id,
                message_id=message.message_id,
                error=type(exc).__name__,
            )

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        admitted = self._end()
        if admitted is not None and admitted.admission.probes:
            # Not run (held by a pause): it probed nothing, so its lease goes back.
            with suppress(BridgeError):
                self.breakers.record(
                    admitted.connection_id, {}, admitted.admission, admitted.lease_token, utcnow()
                )

    def _end(self) -> _Admitted | None:
        admitted: _Admitted | None = getattr(self._local, "admitted", None)
        self._local.admitted = None
        if admitted is not None:
            with suppress(ValueError):  # set in another context (never on Dramatiq's threads)
                end_outcomes(admitted.context_token)
        return admitted

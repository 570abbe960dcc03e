"""Dramatiq middleware: no connection holds more than its fair share of the worker threads
while another connection's live work waits short of its share (`shared.ops.fair_share`,
docs/isolation.md).

Before a connection's message runs, one Lua step takes a lease on a thread for it. Turned away
(the connection holds its cap while another connection has live work due that no thread runs,
and holds fewer threads than the cap), the message is deferred: retried from the delay queue
after a short jittered wait that grows while it keeps being turned away, without holding a
thread and without counting against the retry budget (as `policy.job_outcome` does for a rate
limit). The lease is given back after the message, whatever its outcome; one left by a killed
worker lapses after the job's time limit.

A deferral is counted (`halaxy_bridge_fair_share_deferrals`, and a `waiting` job), never as a
failure, and the event log records no attempt for it: the job did not run.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any
from uuid import uuid4

import dramatiq
import structlog
from dramatiq.middleware import MiddlewareError

from shared.infra import BridgeError, epoch_seconds
from shared.ops import Heartbeats, ThreadLeases, pool_threads, thread_cap
from shared.telemetry import FAIR_SHARE_DEFERRALS

log = structlog.get_logger("halaxy_bridge.workers")

# A lease lapses this long after the job's time limit (Dramatiq interrupts the job at its
# limit; only a killed worker's lease lives that long).
LEASE_GRACE_SECONDS = 30.0
DRAMATIQ_DEFAULT_TIME_LIMIT_MS = 600_000
# The pool (every live worker's threads) is read from the heartbeats at most this often.
POOL_READ_SECONDS = 5.0
# The n-th deferral in a row waits 50-100% of FIRST x 2^(n-1), at most LONGEST.
FIRST_DEFERRAL_MS = 500
LONGEST_DEFERRAL_MS = 10_000
# How many times in a row the message was turned away (kept in its options).
DEFERRALS = "bridge_fair_share_deferrals"


class FairShareDeferred(dramatiq.Retry, MiddlewareError):
    """The connection holds its share of the worker threads: the message waits, deferred.
    A `MiddlewareError`, as Dramatiq lets no other error out of a `before_` hook: the worker
    then hands it to the `after_process_message` hooks, where Retries defers it."""


def deferral_delay_ms(deferrals: int, rng: random.Random | None = None) -> int:
    """The wait before the `deferrals`-th try in a row (from 1): jittered, growing, bounded."""
    ceiling = min(FIRST_DEFERRAL_MS * 2 ** min(max(deferrals, 1) - 1, 16), LONGEST_DEFERRAL_MS)
    return int(ceiling * (rng or random).uniform(0.5, 1.0))


def lease_seconds(broker: dramatiq.Broker, message: Any) -> float:
    """How long a lease may live: the job's time limit and a grace."""
    limit = message.options.get("time_limit")
    if not isinstance(limit, int | float):
        try:
            limit = broker.get_actor(message.actor_name).options.get("time_limit")
        except dramatiq.ActorNotFound:
            limit = None
    if not isinstance(limit, int | float):
        limit = DRAMATIQ_DEFAULT_TIME_LIMIT_MS
    return float(limit) / 1000 + LEASE_GRACE_SECONDS


class FairShare(dramatiq.Middleware):
    """Its hooks run on the thread that runs the job: the lease it holds is kept per thread."""

    def __init__(
        self,
        leases: ThreadLeases,
        heartbeats: Heartbeats,
        share: float,
    ) -> None:
        self.leases = leases
        self.heartbeats = heartbeats
        self.share = share
        self._own_threads = 1
        self._pool = 0
        self._pool_read_at = -POOL_READ_SECONDS
        self._lock = threading.Lock()
        self._local = threading.local()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._own_threads = max(1, int(getattr(worker, "worker_threads", 1)))
        self._pool_read_at = -POOL_READ_SECONDS

    def pool(self) -> int:
        """Every live worker's threads, this worker's at least (read every few seconds)."""
        with self._lock:
            if time.monotonic() - self._pool_read_at >= POOL_READ_SECONDS:
                self._pool_read_at = time.monotonic()
                try:
                    now = epoch_seconds()
                    self._pool = pool_threads(self.heartbeats.read(now), now)
                except BridgeError as exc:  # keep the last figure; this worker's at least
                    log.warning("fair_share.pool_unread", error=type(exc).__name__)
            return max(self._pool, self._own_threads)

    def cap(self) -> int:
        return thread_cap(self.share, self.pool())

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._local.lease = None
        connection_id = message.kwargs.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            return
        token = uuid4().hex
        now = epoch_seconds()
        seconds = lease_seconds(broker, message)
        try:
            taken = self.leases.take(
                connection_id,
                token,
                now=now,
                lapses_at=now + seconds,
                cap=self.cap(),
                key_seconds=int(seconds),
            )
        except BridgeError as exc:
            # Redis cannot answer: the job runs unleased (it most likely fails on Redis too,
            # and is retried as any job would be).
            log.warning(
                "fair_share.lease_untaken", connection_id=connection_id, error=type(exc).__name__
            )
            return
        if taken:
            self._local.lease = (connection_id, token)
            message.options.pop(DEFERRALS, None)
            return
        deferrals = int(message.options.get(DEFERRALS, 0)) + 1
        message.options[DEFERRALS] = deferrals
        # Dramatiq's Retries middleware adds one to the count for this Retry: take it off first,
        # so waiting for a thread never uses up the budget for real failures.
        message.options["retries"] = message.options.get("retries", 0) - 1
        FAIR_SHARE_DEFERRALS.labels(connection_id).inc()
        raise FairShareDeferred(
            f"connection {connection_id} holds its share of the worker threads",
            delay=deferral_delay_ms(deferrals),
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._give_back()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._give_back()

    def _give_back(self) -> None:
        lease = getattr(self._local, "lease", None)
        self._local.lease = None
        if lease is None:
            return
        connection_id, token = lease
        try:
            self.leases.give_back(connection_id, token)
        except BridgeError as exc:  # it lapses on its own
            log.warning(
                "fair_share.lease_kept", connection_id=connection_id, error=type(exc).__name__
            )

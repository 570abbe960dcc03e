"""The retry policy: 72 hours of jittered backoff, rate limits that do not use the budget."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dramatiq
import pytest
import structlog.testing

from services.sandbox.halaxy import patient_resource
from services.workers.policy import (
    MAX_BACKOFF_MS,
    MAX_RETRIES,
    MIN_BACKOFF_MS,
    RETRY_SPAN,
    should_retry,
)
from shared.connections.onboarding import KeyVerifier
from shared.infra.errors import Permanent, Transient
from tests.helpers import wait_until
from tests.workers import Pipeline, Sandbox, sandbox_connection


def shortest_waits(retries: int) -> float:
    """Dramatiq's jitter makes each wait 50-100% of min(15 s x 2^n, 6 h)."""
    return sum(min(MIN_BACKOFF_MS * 2**n, MAX_BACKOFF_MS) / 2 for n in range(retries)) / 1000


def test_transient_errors_are_retried_for_at_least_72_hours_and_not_much_longer() -> None:
    assert shortest_waits(MAX_RETRIES) >= RETRY_SPAN.total_seconds()
    assert shortest_waits(MAX_RETRIES - 1) < RETRY_SPAN.total_seconds()
    longest = sum(min(MIN_BACKOFF_MS * 2**n, MAX_BACKOFF_MS) for n in range(MAX_RETRIES)) / 1000
    assert longest < 2 * RETRY_SPAN.total_seconds() + timedelta(hours=6).total_seconds()


def test_what_is_retried() -> None:
    assert not should_retry(0, Permanent("no"))
    assert should_retry(0, Transient("later"))
    assert should_retry(MAX_RETRIES - 1, Transient("later"))
    assert not should_retry(MAX_RETRIES, Transient("later"))
    assert should_retry(10_000, dramatiq.Retry("rate limited", delay=1000))


def test_rate_limit_deferrals_do_not_use_up_the_retry_budget(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
) -> None:
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.faults.script = [429, 429, 429]
    sandbox.halaxy.faults.retry_after = 1
    with structlog.testing.capture_logs() as logs:
        pipeline.send(conn, "patient-created", "Patient", ["1001"])
        pipeline.drain(timeout_ms=60_000)
    assert len(sandbox.physitrack.writes()) == 1
    synced: list[dict[str, Any]] = [e for e in logs if e["event"] == "patient.synced"]
    deferred = [e for e in logs if e["event"] == "job.deferred"]
    assert len(deferred) == 3
    assert synced[0]["attempt"] == 1  # three deferrals, and still the first attempt


def test_a_retried_failure_is_logged_without_a_traceback(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`job.retrying` says what happened; Dramatiq adds no ERROR with a traceback, which reads
    as a crash to whoever watches the logs and could carry what a remote system said."""
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    sandbox.halaxy.faults.script = [503]  # the first read fails: Transient, retried
    pipeline.send(conn, "patient-created", "Patient", ["1001"])
    wait_until(lambda: sandbox.physitrack.by_external_id("1001"), 30, "the retried sync")
    by_dramatiq = [r for r in caplog.records if r.name == "dramatiq.worker.WorkerThread"]
    [failed] = [r for r in by_dramatiq if "Failed to process" in r.getMessage()]
    assert failed.getMessage().endswith("with expected exception Transient.")
    assert (failed.levelname, failed.exc_info) == ("WARNING", None)
    assert [r for r in caplog.records if r.exc_info] == []

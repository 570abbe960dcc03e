"""The circuit breaker per connection and upstream: its states on the product's clock, one
probe across processes, and what counts as the upstream's fault (never a 4xx)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys, redis_client
from shared.telemetry import (
    Admission,
    BreakerPolicy,
    CircuitBreakers,
    CircuitState,
    begin_outcomes,
    circuit_rows,
    end_outcomes,
    erase_circuits,
)
from shared.telemetry.breaker import (
    Circuit,
    after_outcome,
    upstream_failed,
)
from shared.telemetry.definitions import REGISTRY
from shared.telemetry.http import MeteredClient

POLICY = BreakerPolicy(failures=3, cooldown=timedelta(seconds=30))
CONNECTION = "cn_breaker"
PLATFORM_HOST = "platform.example.test"


@pytest.fixture
def breakers(redis_server_client: redis.Redis, keys: Keys) -> CircuitBreakers:
    return CircuitBreakers(redis_server_client, keys, POLICY)


@pytest.fixture
def other_process(settings: Settings, keys: Keys) -> CircuitBreakers:
    """The same breakers as another process sees them: its own Redis client."""
    return CircuitBreakers(redis_client(settings), keys, POLICY)


def job(breakers: CircuitBreakers, failed: bool, now: datetime) -> Admission:
    """One job of the connection that reached the platform: admitted, then recorded."""
    token = "job-lease"
    admitted = breakers.admit(CONNECTION, token, now)
    if admitted.wait_until is None:
        breakers.record(CONNECTION, {"platform": failed}, admitted, token, now)
    return admitted


_where: dict[str, tuple[redis.Redis, Keys]] = {}


@pytest.fixture(autouse=True)
def _status_reads(redis_server_client: redis.Redis, keys: Keys) -> None:
    _where["status"] = (redis_server_client, keys)


def state(breakers: CircuitBreakers, now: datetime) -> str:
    """The platform circuit's state as `status` shows it."""
    client, keys = _where["status"]
    [platform] = [
        row
        for row in circuit_rows(client, keys, [CONNECTION], now)[CONNECTION]
        if row["upstream"] == "platform"
    ]
    return str(platform["state"])


def transitions(to: str) -> float:
    value = REGISTRY.get_sample_value(
        "halaxy_bridge_circuit_transitions_total",
        {"connection_id": CONNECTION, "upstream": "platform", "to": to},
    )
    return value or 0.0


def open_it(breakers: CircuitBreakers, now: datetime) -> None:
    for _ in range(POLICY.failures):
        job(breakers, True, now)
    assert state(breakers, now) == "open"


# --- The state machine, on the product's clock ---------------------------------------------


def test_it_opens_after_n_failures_in_a_row_and_a_success_starts_the_count_again(
    breakers: CircuitBreakers,
) -> None:
    now = utcnow()
    for _ in range(POLICY.failures - 1):
        job(breakers, True, now)
    job(breakers, False, now)  # an answer ends the run
    for _ in range(POLICY.failures - 1):
        job(breakers, True, now)
    assert state(breakers, now) == "closed"
    opened_before = transitions("open")

    with capture_logs() as logs:
        job(breakers, True, now)

    assert state(breakers, now) == "open"
    assert transitions("open") == opened_before + 1
    [moved] = [line for line in logs if line["event"] == "circuit.transition"]
    assert moved["connection_id"] == CONNECTION
    assert (moved["upstream"], moved["from"], moved["to"]) == ("platform", "closed", "open")
    assert not any("url" in key or "body" in key for key in moved)


def test_while_open_messages_wait_for_the_cooldown_then_it_is_half_open(
    breakers: CircuitBreakers,
) -> None:
    opened = utcnow()
    open_it(breakers, opened)

    waiting = breakers.admit(CONNECTION, "early", opened + timedelta(seconds=29))
    assert waiting.wait_until == opened + POLICY.cooldown
    assert waiting.upstream == "platform"

    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        assert state(breakers, utcnow()) == "half_open"  # the next message probes
        probe = breakers.admit(CONNECTION, "probe", utcnow())
    assert (probe.wait_until, probe.probes) == (None, ("platform",))


def test_only_one_probe_goes_across_two_processes(
    breakers: CircuitBreakers, other_process: CircuitBreakers
) -> None:
    opened = utcnow()
    open_it(breakers, opened)

    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        now = utcnow()
        first = breakers.admit(CONNECTION, "first", now)
        second = other_process.admit(CONNECTION, "second", now)
        third = breakers.admit(CONNECTION, "third", now)

    assert first.probes == ("platform",)
    for held_back in (second, third):
        assert held_back.probes == ()
        assert held_back.wait_until == now + POLICY.cooldown


def test_the_probes_success_closes_it(
    breakers: CircuitBreakers, other_process: CircuitBreakers
) -> None:
    opened = utcnow()
    open_it(breakers, opened)
    closed_before = transitions("closed")

    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        now = utcnow()
        probe = breakers.admit(CONNECTION, "probe", now)
        breakers.record(CONNECTION, {"platform": False}, probe, "probe", now)
        assert state(breakers, now) == "closed"
        assert other_process.admit(CONNECTION, "next", now) == Admission()

    assert transitions("closed") == closed_before + 1


def test_the_probes_failure_opens_it_for_another_cooldown(breakers: CircuitBreakers) -> None:
    opened = utcnow()
    open_it(breakers, opened)

    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        now = utcnow()
        probe = breakers.admit(CONNECTION, "probe", now)
        breakers.record(CONNECTION, {"platform": True}, probe, "probe", now)
        assert state(breakers, now) == "open"
        waiting = breakers.admit(CONNECTION, "next", now)

    assert waiting.wait_until == now + POLICY.cooldown


def test_a_probe_that_never_reached_the_upstream_lets_the_next_message_probe(
    breakers: CircuitBreakers, other_process: CircuitBreakers
) -> None:
    opened = utcnow()
    open_it(breakers, opened)

    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        now = utcnow()
        probe = breakers.admit(CONNECTION, "probe", now)
        breakers.record(CONNECTION, {"halaxy": False}, probe, "probe", now)  # failed before
        assert state(breakers, now) == "half_open"
        assert other_process.admit(CONNECTION, "next", now).probes == ("platform",)


def test_outcomes_of_jobs_under_way_when_it_opened_change_nothing(
    breakers: CircuitBreakers,
) -> None:
    now = utcnow()
    under_way = breakers.admit(CONNECTION, "slow", now)
    open_it(breakers, now)

    breakers.record(CONNECTION, {"platform": False}, under_way, "slow", now)

    assert state(breakers, now) == "open"


def test_offboarding_erases_the_circuits_and_leases(
    breakers: CircuitBreakers, redis_server_client: redis.Redis, keys: Keys
) -> None:
    opened = utcnow()
    open_it(breakers, opened)
    with time_machine.travel(opened + POLICY.cooldown + timedelta(seconds=1), tick=False):
        breakers.admit(CONNECTION, "probe", utcnow())

    assert erase_circuits(redis_server_client, keys, CONNECTION) == 2
    assert redis_server_client.keys(f"{keys.namespace}:circuit*") == []


# --- What counts: never a 4xx --------------------------------------------------------------

client_errors = st.integers(min_value=400, max_value=499)
upstream_faults = st.none() | st.integers(min_value=500, max_value=599)  # None: no answer
any_status = st.none() | st.integers(min_value=100, max_value=599)
thresholds = st.integers(min_value=1, max_value=20)


def fold(
    statuses: list[int | None], policy: BreakerPolicy, circuit: Circuit | None = None
) -> Circuit | None:
    now = utcnow()
    for status in statuses:
        circuit = after_outcome(circuit, upstream_failed(status), False, now, policy)
    return circuit


@given(statuses=st.lists(client_errors, max_size=60), failures=thresholds)
def test_no_sequence_of_4xx_answers_opens_it(statuses: list[int], failures: int) -> None:
    policy = BreakerPolicy(failures, timedelta(seconds=30))
    circuit = fold(statuses, policy)
    assert circuit is None or circuit.state is CircuitState.CLOSED


@given(
    before=st.lists(any_status, max_size=30),
    faults=st.data(),
    failures=thresholds,
)
def test_n_upstream_faults_in_a_row_always_open_it(
    before: list[int | None], faults: st.DataObject, failures: int
) -> None:
    policy = BreakerPolicy(failures, timedelta(seconds=30))
    circuit = fold(before, policy)
    if circuit is not None and circuit.state is not CircuitState.CLOSED:
        return  # opened already (and only a probe moves it now)
    run = faults.draw(st.lists(upstream_faults, min_size=failures, max_size=failures))
    circuit = fold(run, policy, circuit)
    assert circuit is not None
    assert circuit.state is CircuitState.OPEN


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answers=st.lists(client_errors | upstream_faults, max_size=12))
def test_what_the_http_client_meets_is_what_the_breaker_counts(
    redis_server_client: redis.Redis, keys: Keys, answers: list[int | None]
) -> None:
    """Through the connection's own HTTP client: 4xx (429 too) never open it; five timeouts
    or 5xx in a row always do."""
    erase_circuits(redis_server_client, keys, CONNECTION)
    breakers = CircuitBreakers(redis_server_client, keys, BreakerPolicy(5, timedelta(seconds=30)))
    pending = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        status = pending.pop(0)
        if status is None:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(status)

    http = MeteredClient(
        CONNECTION, {(PLATFORM_HOST, 443): "platform"}, transport=httpx.MockTransport(answer)
    )
    now = utcnow()
    run = 0
    for status in answers:
        admitted = breakers.admit(CONNECTION, "job", now)
        if admitted.wait_until is not None:
            break
        outcomes, token = begin_outcomes()
        try:
            http.get(f"https://{PLATFORM_HOST}/api/v2/clients")
        except httpx.TransportError:
            pass
        finally:
            end_outcomes(token)
        breakers.record(CONNECTION, outcomes.failed, admitted, "job", now)
        run = run + 1 if status is None or status >= 500 else 0
        assert (state(breakers, now) == "open") == (run >= 5)


def test_waiting_on_our_own_pool_is_not_the_upstreams_fault() -> None:
    def busy(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("every pooled connection in use", request=request)

    http = MeteredClient(
        CONNECTION, {(PLATFORM_HOST, 443): "platform"}, transport=httpx.MockTransport(busy)
    )
    outcomes, token = begin_outcomes()
    with pytest.raises(httpx.PoolTimeout):
        http.get(f"https://{PLATFORM_HOST}/api/v2/clients")
    end_outcomes(token)
    assert outcomes.failed == {}

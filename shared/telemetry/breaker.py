"""Circuit breakers: one per connection and upstream ("halaxy", "platform").

Closed, it counts the failures in a row that are the upstream's fault: no answer (a timeout,
a refused or dropped connection) or a 5xx. A 4xx, 429 included, is an answer about the request
(or a rate limit, deferred on its own: `RateLimited`): it never counts, and it ends a run of
failures like any answer. After BRIDGE_BREAKER_FAILURES such failures it opens: the
connection's messages wait, deferred by the worker without holding a thread
(`services/workers/breaker.py`), until BRIDGE_BREAKER_COOLDOWN_SECONDS have passed. Then it is
half-open: exactly one message, holding a lease taken with SET NX (across processes), goes
through as the probe; an answer from the upstream closes it, a failure opens it again for
another cooldown. A probe that never reached the upstream gives its lease back: the next
message probes.

What a job's requests met is gathered on its thread (`begin_outcomes`), noted by the
connection's HTTP client (`MeteredClient`, the one place every request of a worker passes);
the worker records it once the job has ended (`CircuitBreakers.record`): one Redis write at
most per job, none while nothing fails. A PDF download (`capability_url("pdf")`) counts as the
platform's: its hosts are the platform's and its file store's.

State is kept in Redis (`Keys.circuits`, one `Circuit` per upstream in a hash, through
`RecordCodec`), on the product's clock. Each transition is logged (connection id, upstream,
from, to: no URL, no body) and counted (`halaxy_bridge_circuit_transitions_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

import httpx
import redis
import structlog

from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.telemetry.attempts import current_capability
from shared.telemetry.definitions import CIRCUIT_TRANSITIONS

log = structlog.get_logger("halaxy_bridge.breaker")

HALAXY = "halaxy"
PLATFORM = "platform"
UPSTREAMS = (HALAXY, PLATFORM)
# How long a probe's lease lasts when its worker dies with it: past the longest job.
DEFAULT_PROBE_LEASE = timedelta(minutes=11)


class CircuitState(StrEnum):
    CLOSED = "closed"  # requests go; failures in a row are counted
    OPEN = "open"  # the connection's messages wait until `retry_at`
    HALF_OPEN = "half_open"  # one probe message is (or may be) on its way


@dataclass(frozen=True)
class Circuit:
    """One connection's breaker for one upstream."""

    state: CircuitState
    since: datetime  # when it entered this state
    failures: int  # failures in a row that were the upstream's fault
    retry_at: datetime | None = None  # open: when the cooldown ends and one probe may go


CIRCUIT = RecordCodec(Circuit)


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int  # BRIDGE_BREAKER_FAILURES
    cooldown: timedelta  # BRIDGE_BREAKER_COOLDOWN_SECONDS


def upstream_failed(status: int | None) -> bool:
    """A failure that is the upstream's fault: no answer (None), or a 5xx."""
    return status is None or status >= 500


def after_outcome(
    circuit: Circuit | None, failed: bool, probe: bool, now: datetime, policy: BreakerPolicy
) -> Circuit | None:
    """The circuit after one job's outcome with its upstream (None: nothing kept, closed).
    While it is open or half-open, only the probe's outcome counts: jobs that were under way
    when it opened say nothing new."""
    state = CircuitState.CLOSED if circuit is None else circuit.state
    if state is CircuitState.CLOSED:
        if not failed:
            if circuit is None or circuit.failures == 0:
                return circuit
            return replace(circuit, failures=0)
        failures = (0 if circuit is None else circuit.failures) + 1
        if failures >= policy.failures:
            return Circuit(CircuitState.OPEN, now, failures, now + policy.cooldown)
        return Circuit(CircuitState.CLOSED, now if circuit is None else circuit.since, failures)
    assert circuit is not None
    if not probe:
        return circuit
    if failed:
        return Circuit(CircuitState.OPEN, now, circuit.failures + 1, now + policy.cooldown)
    return Circuit(CircuitState.CLOSED, now, 0)


def circuit_is_clean(circuit: Circuit | None) -> bool:
    """Closed and counting nothing: what a success leaves as it is."""
    return circuit is None or (circuit.state is CircuitState.CLOSED and circuit.failures == 0)


def shown_state(circuit: Circuit | None, now: datetime) -> CircuitState:
    """The state as ops see it: an open circuit whose cooldown has ended is half-open (the
    next message of its connection probes)."""
    if circuit is None:
        return CircuitState.CLOSED
    if circuit.state is CircuitState.OPEN and circuit.retry_at and now >= circuit.retry_at:
        return CircuitState.HALF_OPEN
    return circuit.state


@dataclass(frozen=True)
class Admission:
    """Whether a message of the connection may run now: `wait_until` None, it runs (probing
    `probes`); else it waits until then because of `upstream`'s circuit."""

    probes: tuple[str, ...] = ()
    wait_until: datetime | None = None
    upstream: str = ""


def admission(circuits: dict[str, Circuit], now: datetime) -> Admission:
    """Before any lease: wait for the latest cooldown still running, else probe every circuit
    that is not closed."""
    waits = [
        (c.retry_at, upstream)
        for upstream, c in circuits.items()
        if c.state is CircuitState.OPEN and c.retry_at is not None and now < c.retry_at
    ]
    if waits:
        until, upstream = max(waits)
        return Admission(wait_until=until, upstream=upstream)
    probes = tuple(u for u in sorted(circuits) if circuits[u].state is not CircuitState.CLOSED)
    return Admission(probes=probes)


# --- What a job's requests met --------------------------------------------------------------


@dataclass
class UpstreamOutcomes:
    """Per upstream a job called: True if any request to it failed by the upstream's fault."""

    failed: dict[str, bool] = field(default_factory=dict)

    def note(self, upstream: str, failed: bool) -> None:
        self.failed[upstream] = self.failed.get(upstream, False) or failed


_outcomes: ContextVar[UpstreamOutcomes | None] = ContextVar("upstream_outcomes", default=None)


def begin_outcomes() -> tuple[UpstreamOutcomes, Token[UpstreamOutcomes | None]]:
    """Gather what this thread's requests meet, until `end_outcomes(token)`."""
    outcomes = UpstreamOutcomes()
    return outcomes, _outcomes.set(outcomes)


def end_outcomes(token: Token[UpstreamOutcomes | None]) -> None:
    _outcomes.reset(token)


def breaker_upstream(target: str) -> str | None:
    """The breaker a request to `target` (MeteredClient's name of its origin) counts for."""
    if current_capability() == "pdf":
        return PLATFORM
    return target if target in UPSTREAMS else None


def note_upstream(target: str, status: int | None) -> None:
    """Note one request's end (its status, None when no answer came) for the job running."""
    outcomes = _outcomes.get()
    upstream = breaker_upstream(target)
    if outcomes is not None and upstream is not None:
        outcomes.note(upstream, upstream_failed(status))


UPSTREAM_FAULTS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def counts_against_upstream(error: httpx.TransportError) -> bool:
    """A request that got no answer by the upstream's fault. Waiting for a connection of our
    own pool, or a request we could not build, is not the upstream's doing."""
    if isinstance(error, httpx.PoolTimeout):
        return False
    return isinstance(
        error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
    )


# --- The breakers in Redis ------------------------------------------------------------------

# KEYS: a probe lease. ARGV: the token that took it. Given back only by its holder.
RELEASE_PROBE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class CircuitBreakers:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        policy: BreakerPolicy,
        probe_lease: timedelta = DEFAULT_PROBE_LEASE,
    ) -> None:
        self._redis = client
        self._keys = keys
        self.policy = policy
        self._probe_lease_ms = int(probe_lease.total_seconds() * 1000)
        self._release = client.register_script(RELEASE_PROBE)

    def read(self, connection_id: str) -> dict[str, Circuit]:
        """The connection's circuits that have a record (none: all closed)."""
        with translate_redis_errors():
            raw = self._redis.hgetall(self._keys.circuits(connection_id))
        return _decoded(connection_id, raw)

    def admit(
        self,
        connection_id: str,
        token: str,
        now: datetime,
        circuits: dict[str, Circuit] | None = None,
    ) -> Admission:
        """Whether a message of the connection runs now; a half-open circuit lets the one
        message through that takes its probe lease (`token` names the holder), the others
        wait a cooldown more. `circuits`: as just `read`, if the caller has them."""
        circuits = self.read(connection_id) if circuits is None else circuits
        if not circuits:
            return Admission()
        decided = admission(circuits, now)
        if decided.wait_until is not None or not decided.probes:
            return decided
        taken: list[str] = []
        with translate_redis_errors():
            for upstream in decided.probes:
                lease = self._keys.circuit_probe(connection_id, upstream)
                if not self._redis.set(lease, token, nx=True, px=self._probe_lease_ms):
                    self._give_back(connection_id, taken, token)
                    return Admission(wait_until=now + self.policy.cooldown, upstream=upstream)
                taken.append(upstream)
        for upstream in decided.probes:
            self._update(connection_id, upstream, partial(_to_half_open, now=now))
        return decided

    def record(
        self,
        connection_id: str,
        outcomes: dict[str, bool],
        admitted: Admission,
        token: str,
        now: datetime,
        seen: dict[str, Circuit] | None = None,
    ) -> None:
        """Apply one job's outcomes (upstream -> failed) and give back its probe leases.
        `seen`: the circuits as read when it was admitted; a success where it was closed and
        counting nothing writes nothing (the common case: no write at all)."""
        try:
            for upstream, failed in outcomes.items():
                probe = upstream in admitted.probes
                if (
                    not failed
                    and not probe
                    and seen is not None
                    and circuit_is_clean(seen.get(upstream))
                ):
                    continue
                change = partial(
                    after_outcome, failed=failed, probe=probe, now=now, policy=self.policy
                )
                self._update(connection_id, upstream, change)
        finally:
            with translate_redis_errors():
                self._give_back(connection_id, list(admitted.probes), token)

    def _give_back(self, connection_id: str, upstreams: list[str], token: str) -> None:
        for upstream in upstreams:
            self._release(keys=[self._keys.circuit_probe(connection_id, upstream)], args=[token])

    def _update(
        self,
        connection_id: str,
        upstream: str,
        change: Callable[[Circuit | None], Circuit | None],
    ) -> None:
        """Read, change and write one circuit, again if another process wrote it meanwhile."""
        key = self._keys.circuits(connection_id)
        moved: list[tuple[Circuit | None, Circuit | None]] = []

        def attempt(pipe: redis.client.Pipeline) -> None:
            moved.clear()
            raw = pipe.hget(key, upstream)
            before = None
            if raw is not None:
                try:
                    before = CIRCUIT.decode(as_bytes(raw))
                except UnreadableRecord:
                    before = None
            after = change(before)
            if after == before:
                return
            pipe.multi()
            if after is None:
                pipe.hdel(key, upstream)
            else:
                pipe.hset(key, upstream, CIRCUIT.encode(after))
            moved.append((before, after))

        with translate_redis_errors():
            self._redis.transaction(attempt, key)
        for before, after in moved:
            old, new = _state(before), _state(after)
            if old is not new:
                CIRCUIT_TRANSITIONS.labels(connection_id, upstream, new.value).inc()
                log.info(
                    "circuit.transition",
                    connection_id=connection_id,
                    upstream=upstream,
                    failures=0 if after is None else after.failures,
                    **{"from": old.value, "to": new.value},
                )


def read_circuits(
    client: redis.Redis, keys: Keys, connection_ids: Iterable[str]
) -> dict[str, dict[str, Circuit]]:
    """Each connection's circuits that have a record, in one round trip."""
    ids = list(connection_ids)
    with translate_redis_errors():
        pipe = client.pipeline(transaction=False)
        for connection_id in ids:
            pipe.hgetall(keys.circuits(connection_id))
        replies = pipe.execute()
    return {cid: _decoded(cid, raw) for cid, raw in zip(ids, replies, strict=True)}


def circuit_rows(
    client: redis.Redis, keys: Keys, connection_ids: Iterable[str], now: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Per connection, each upstream's circuit as status shows it: state (an open one whose
    cooldown has ended is half-open), since when, failures in a row, and until when it is
    open."""
    read = read_circuits(client, keys, connection_ids)
    return {cid: list(_rows(circuits, now)) for cid, circuits in read.items()}


def _decoded(connection_id: str, raw: dict[Any, Any]) -> dict[str, Circuit]:
    circuits = {}
    for name, value in raw.items():
        upstream = as_bytes(name).decode()
        try:
            circuits[upstream] = CIRCUIT.decode(as_bytes(value))
        except UnreadableRecord as exc:
            # Taken as closed: a breaker that cannot be read must not stop a connection's work.
            log.warning(
                "circuit.unreadable",
                connection_id=connection_id,
                upstream=upstream,
                error=str(exc),
            )
    return circuits


def erase_circuits(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """Erase the connection's circuits and probe leases (offboarding); how many keys went."""
    doomed = [keys.circuits(connection_id)]
    doomed += [keys.circuit_probe(connection_id, upstream) for upstream in UPSTREAMS]
    with translate_redis_errors():
        return int(client.delete(*doomed))


def _to_half_open(circuit: Circuit | None, now: datetime) -> Circuit | None:
    if circuit is None or circuit.state is not CircuitState.OPEN:
        return circuit
    return replace(circuit, state=CircuitState.HALF_OPEN, since=now)


def _state(circuit: Circuit | None) -> CircuitState:
    return CircuitState.CLOSED if circuit is None else circuit.state


def _rows(circuits: dict[str, Circuit], now: datetime) -> Iterator[dict[str, Any]]:
    for upstream in UPSTREAMS:
        circuit = circuits.get(upstream)
        state = shown_state(circuit, now)
        yield {
            "upstream": upstream,
            "state": state.value,
            "since": None if circuit is None else circuit.since.isoformat(timespec="seconds"),
            "failures": 0 if circuit is None else circuit.failures,
            "retry_at": None
            if circuit is None or circuit.retry_at is None or state is not CircuitState.OPEN
            else circuit.retry_at.isoformat(timespec="seconds"),
        }

"""The thread leases of fair share (`shared.ops.fair_share`): the Lua step against a model of
it, under any interleaving of takes, give-backs and time passing; and the pool and cap."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.fair_share import ThreadLeases, pool_threads, thread_cap
from shared.ops.liveness import Duty, Heartbeat

CONNECTIONS = ("cn_a", "cn_b", "cn_c")
WINDOW = 30.0
_namespaces = itertools.count()


@dataclass
class Model:
    """What the Lua step is meant to do, in Python."""

    cap: int
    leases: dict[str, dict[str, float]] = field(default_factory=dict)  # connection -> lapses
    waiting: dict[str, float] = field(default_factory=dict)  # connection -> when it waited

    def live(self, connection: str, now: float) -> int:
        return sum(1 for lapses in self.leases.get(connection, {}).values() if lapses > now)

    def others_waiting(self, connection: str, now: float) -> bool:
        return any(c != connection and at > now - WINDOW for c, at in self.waiting.items())

    def take(self, connection: str, token: str, now: float, lasts: float, waited: bool) -> bool:
        mine = self.leases.setdefault(connection, {})
        for lapsed in [t for t, lapses in mine.items() if lapses <= now]:
            del mine[lapsed]
        if waited and not mine:  # starved: its work waited, and it holds no thread
            self.waiting[connection] = now
        if len(mine) >= self.cap:
            self.waiting = {c: at for c, at in self.waiting.items() if at > now - WINDOW}
            if self.others_waiting(connection, now):
                return False
        mine[token] = now + lasts
        return True

    def give_back(self, connection: str, token: str) -> None:
        self.leases.get(connection, {}).pop(token, None)


take_steps = st.tuples(
    st.just("take"),
    st.sampled_from(CONNECTIONS),
    st.floats(0, 20),  # time passing before it, seconds
    st.sampled_from([5.0, 40.0, 600.0]),  # the lease's life
    st.booleans(),  # its message waited for a thread
)
give_back_steps = st.tuples(st.just("give_back"), st.integers(0, 10_000))
steps = st.lists(st.one_of(take_steps, give_back_steps), max_size=60)


@settings(max_examples=60, deadline=None)
@given(steps=steps, cap=st.integers(1, 4))
def test_any_interleaving_keeps_a_waited_on_connection_to_its_cap_and_leaks_nothing(
    redis_server_client: redis.Redis, base_settings: Settings, steps: list[Any], cap: int
) -> None:
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys, waiting_window=WINDOW)
    model = Model(cap)
    now, handed_out = 1_000_000.0, []
    try:
        for step in steps:
            if step[0] == "take":
                _, connection, later, lasts, waited = step
                now += later
                token = f"t{len(handed_out)}"
                expected = model.take(connection, token, now, lasts, waited)
                taken = leases.take(
                    connection,
                    token,
                    now=now,
                    lapses_at=now + lasts,
                    cap=cap,
                    waited=waited,
                    key_seconds=600,
                )
                assert taken == expected
                if taken:
                    handed_out.append((connection, token))
                    # Taken while another connection's work waits: never beyond the cap.
                    if model.others_waiting(connection, now):
                        assert leases.held([connection], now)[connection] <= cap
            elif handed_out:
                connection, token = handed_out[step[1] % len(handed_out)]
                model.give_back(connection, token)
                leases.give_back(connection, token)
            held = leases.held(CONNECTIONS, now)
            assert held == {c: model.live(c, now) for c in CONNECTIONS}

        # Once every lease has lapsed (its worker killed, say) none is counted, and each
        # connection takes a thread again even at a cap of one while others wait.
        after = now + 601
        assert leases.held(CONNECTIONS, after) == dict.fromkeys(CONNECTIONS, 0)
        for connection in CONNECTIONS:
            assert leases.take(
                connection,
                "again",
                now=after,
                lapses_at=after + 5,
                cap=1,
                waited=True,
                key_seconds=5,
            )
            assert redis_server_client.zcard(keys.thread_leases(connection)) == 1
    finally:
        for key in redis_server_client.scan_iter(match=f"{keys.namespace}:*"):
            redis_server_client.delete(key)


def test_a_connection_alone_may_use_every_thread(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    """Work-conserving: with no other connection's work waiting, the cap does not bind."""
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys)
    taken = [
        leases.take(
            "cn_a", f"t{n}", now=100.0, lapses_at=200.0, cap=2, waited=True, key_seconds=100
        )
        for n in range(8)
    ]
    assert taken == [True] * 8
    # Another connection's live work waits: the first is held to its cap from now on.
    assert leases.take("cn_b", "b", now=101.0, lapses_at=200.0, cap=2, waited=True, key_seconds=9)
    assert not leases.take(
        "cn_a", "t9", now=102.0, lapses_at=200.0, cap=2, waited=False, key_seconds=9
    )
    # Long after the other last waited, the cap no longer binds.
    later = 101.0 + WINDOW + 1
    assert leases.take(
        "cn_a", "t10", now=later, lapses_at=200.0, cap=2, waited=False, key_seconds=9
    )
    # Offboarding erases its leases and its waiting mark.
    assert leases.forget("cn_a") == 9
    assert leases.take("cn_c", "c", now=later, lapses_at=200.0, cap=1, waited=True, key_seconds=9)
    assert leases.forget("cn_c") == 1 + 1
    assert redis_server_client.exists(keys.thread_leases("cn_a")) == 0
    assert redis_server_client.zscore(keys.waiting_connections(), "cn_c") is None
    leases.forget("cn_b")


def test_busy_clinics_that_each_hold_threads_share_the_whole_pool(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    """Work that waits in a backlog marks nothing while its clinic holds a thread: two clinics
    with a backlog each (every message waited) use the pool between them, past their caps."""
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys)
    assert leases.take("cn_a", "a0", now=1.0, lapses_at=99.0, cap=2, waited=False, key_seconds=9)
    assert leases.take("cn_b", "b0", now=1.0, lapses_at=99.0, cap=2, waited=False, key_seconds=9)
    taken = [
        leases.take(c, f"{c}{n}", now=2.0, lapses_at=99.0, cap=2, waited=True, key_seconds=9)
        for n in range(1, 8)
        for c in ("cn_a", "cn_b")
    ]
    assert taken == [True] * 14
    assert leases.held(["cn_a", "cn_b"], 2.0) == {"cn_a": 8, "cn_b": 8}
    leases.forget("cn_a")
    leases.forget("cn_b")


def beat(instance: str, threads: int, seen_at: float, role: Duty = Duty.WORKER) -> Heartbeat:
    return Heartbeat(
        instance=instance,
        role=role,
        host="h",
        pid=1,
        started_at="2026-01-01T00:00:00+00:00",
        seen_at=seen_at,
        fresh_for=30.0,
        threads=threads,
    )


def test_the_pool_is_every_live_workers_threads() -> None:
    now = 1000.0
    beats = [beat("a", 16, now - 1), beat("b", 8, now - 29), beat("dead", 16, now - 31)]
    assert pool_threads(beats, now) == 24
    # A heartbeat from before workers reported their threads counts none.
    old = Heartbeat(
        instance="old",
        role=Duty.WORKER,
        host="h",
        pid=1,
        started_at="",
        seen_at=now,
        fresh_for=30.0,
    )
    assert pool_threads([old], now) == 0


@pytest.mark.parametrize(
    ("share", "pool", "cap"),
    [(0.25, 16, 4), (0.25, 32, 8), (0.25, 3, 1), (1.0, 16, 16), (0.5, 1, 1), (0.3, 10, 3)],
)
def test_the_cap_is_the_share_of_the_pool_at_least_one(share: float, pool: int, cap: int) -> None:
    assert thread_cap(share, pool) == cap


@given(share=st.floats(0.001, 1.0), pool=st.integers(0, 10_000))
def test_the_cap_is_never_zero_nor_more_than_the_pool(share: float, pool: int) -> None:
    assert 1 <= thread_cap(share, pool) <= max(1, pool)

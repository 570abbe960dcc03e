"""The thread leases of fair share (`shared.ops.fair_share`): the Lua step against a model of
it, under any interleaving of takes, give-backs, live messages queued and finished, and time
passing; and the pool and cap."""

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
from shared.ops.queued import QueuedMessages

CONNECTIONS = ("cn_a", "cn_b", "cn_c")
WINDOW = 30.0
ACTIVE = 5.0
SLACK = 1.0
_namespaces = itertools.count()


@dataclass
class Model:
    """What the Lua step is meant to do, in Python."""

    cap: int
    leases: dict[str, dict[str, float]] = field(default_factory=dict)  # connection -> lapses
    index: dict[str, float] = field(default_factory=dict)  # connection -> latest live due
    due: dict[str, dict[str, float]] = field(default_factory=dict)  # its unfinished live work

    def live(self, connection: str, now: float) -> int:
        return sum(1 for lapses in self.leases.get(connection, {}).values() if lapses > now)

    def short_of_its_share(self, connection: str, now: float, indexed_at: float) -> bool:
        """Fewer threads than the cap, and live work due that no thread runs or queued lately."""
        held = self.live(connection, now)
        due = sum(1 for at in self.due.get(connection, {}).values() if at <= now + SLACK)
        return held < self.cap and (now - ACTIVE <= indexed_at <= now + SLACK or due > held)

    def another_short(self, connection: str, now: float) -> bool:
        return any(
            c != connection and at > now - WINDOW and self.short_of_its_share(c, now, at)
            for c, at in self.index.items()
        )

    def take(self, connection: str, token: str, now: float, lasts: float) -> bool:
        mine = self.leases.setdefault(connection, {})
        for lapsed in [t for t, lapses in mine.items() if lapses <= now]:
            del mine[lapsed]
        if len(mine) >= self.cap:
            self.index = {c: at for c, at in self.index.items() if at > now - WINDOW}
            if self.another_short(connection, now):
                return False
        mine[token] = now + lasts
        return True

    def give_back(self, connection: str, token: str) -> None:
        self.leases.get(connection, {}).pop(token, None)

    def queue_live(self, connection: str, message: str, due_at: float) -> None:
        self.due.setdefault(connection, {})[message] = due_at
        self.index[connection] = max(due_at, self.index.get(connection, due_at))

    def finish(self, connection: str, message: str) -> None:
        self.due.get(connection, {}).pop(message, None)


later = st.floats(0, 20)  # time passing before the step, seconds
take_steps = st.tuples(
    st.just("take"),
    st.sampled_from(CONNECTIONS),
    later,
    st.sampled_from([5.0, 40.0, 600.0]),  # the lease's life
)
give_back_steps = st.tuples(st.just("give_back"), st.integers(0, 10_000))
queue_steps = st.tuples(
    st.just("queue_live"),
    st.sampled_from(CONNECTIONS),
    later,
    # due in: now, a moment later by the receiver's clock, a retry's backoff, a deferral's
    st.sampled_from([0.0, 0.0, 0.05, 10.0, 60.0]),
)
finish_steps = st.tuples(st.just("finish"), st.integers(0, 10_000))
steps = st.lists(st.one_of(take_steps, give_back_steps, queue_steps, finish_steps), max_size=60)


@settings(max_examples=60, deadline=None)
@given(steps=steps, cap=st.integers(1, 4))
def test_any_interleaving_holds_a_connection_to_its_cap_while_another_is_short_of_it(
    redis_server_client: redis.Redis, base_settings: Settings, steps: list[Any], cap: int
) -> None:
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(
        redis_server_client, keys, live_window=WINDOW, active_seconds=ACTIVE, clock_slack=SLACK
    )
    queued = QueuedMessages(redis_server_client, keys)
    model = Model(cap)
    now, handed_out, unfinished = 1_000_000.0, [], []
    try:
        for step in steps:
            if step[0] == "take":
                _, connection, passing, lasts = step
                now += passing
                token = f"t{len(handed_out)}"
                expected = model.take(connection, token, now, lasts)
                taken = leases.take(
                    connection, token, now=now, lapses_at=now + lasts, cap=cap, key_seconds=600
                )
                assert taken == expected
                if taken:
                    handed_out.append((connection, token))
                    # Taken while another connection is short of its share: never beyond the
                    # cap.
                    if model.another_short(connection, now):
                        assert leases.held([connection], now)[connection] <= cap
            elif step[0] == "give_back" and handed_out:
                connection, token = handed_out[step[1] % len(handed_out)]
                model.give_back(connection, token)
                leases.give_back(connection, token)
            elif step[0] == "queue_live":
                _, connection, passing, due_in = step
                now += passing
                message = f"m{len(unfinished)}"
                model.queue_live(connection, message, now + due_in)
                queued.add(connection, "live", message, now + due_in)
                unfinished.append((connection, message))
            elif step[0] == "finish" and unfinished:
                connection, message = unfinished[step[1] % len(unfinished)]
                model.finish(connection, message)
                queued.remove(connection, "live", message)
            held = leases.held(CONNECTIONS, now)
            assert held == {c: model.live(c, now) for c in CONNECTIONS}

        # Once every lease has lapsed (its worker killed, say) none is counted, and each
        # connection takes a thread again even at a cap of one while others are short of it.
        after = now + 601
        assert leases.held(CONNECTIONS, after) == dict.fromkeys(CONNECTIONS, 0)
        for connection in CONNECTIONS:
            queued.add(connection, "live", f"waiting-{connection}", after)
        for connection in CONNECTIONS:
            assert leases.take(
                connection, "again", now=after, lapses_at=after + 5, cap=1, key_seconds=5
            )
            assert redis_server_client.zcard(keys.thread_leases(connection)) == 1
    finally:
        for key in redis_server_client.scan_iter(match=f"{keys.namespace}:*"):
            redis_server_client.delete(key)


def test_a_connection_alone_may_use_every_thread(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    """Work-conserving: while no other connection is short of its share, the cap does not
    bind; from the moment one is, it does."""
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys)
    queued = QueuedMessages(redis_server_client, keys)
    taken = [
        leases.take("cn_a", f"t{n}", now=100.0, lapses_at=999.0, cap=2, key_seconds=100)
        for n in range(8)
    ]
    assert taken == [True] * 8
    # Another connection's bulk and storm work hold nobody to a cap; nor does its live work
    # not due yet (a retry's backoff).
    queued.add("cn_b", "bulk", "b-bulk", 100.0)
    queued.add("cn_b", "storm", "b-storm", 100.0)
    queued.add("cn_b", "live.DQ", "b-later", 150.0)
    assert leases.take("cn_a", "t8", now=101.0, lapses_at=999.0, cap=2, key_seconds=9)
    # Its live message is due, no thread runs it: the first is held to its cap at once.
    queued.add("cn_b", "live", "b1", 101.0)
    assert not leases.take("cn_a", "t9", now=102.0, lapses_at=999.0, cap=2, key_seconds=9)
    # Running it (its lease taken) leaves nothing of it waiting: the cap no longer binds.
    assert leases.take("cn_b", "b", now=102.0, lapses_at=999.0, cap=2, key_seconds=9)
    assert leases.take("cn_a", "t10", now=102.0, lapses_at=999.0, cap=2, key_seconds=9)
    # Another waiting, and the other at its cap too: each holds its share, both go on.
    queued.add("cn_b", "live", "b2", 102.0)
    queued.add("cn_b", "live", "b3", 102.0)
    assert not leases.take("cn_a", "t11", now=103.0, lapses_at=999.0, cap=2, key_seconds=9)
    assert leases.take("cn_b", "b'", now=103.0, lapses_at=999.0, cap=2, key_seconds=9)
    assert leases.take("cn_a", "t12", now=103.0, lapses_at=999.0, cap=2, key_seconds=9)
    # A connection that queued no live work within the window is out of the index.
    queued.add("cn_c", "live", "c1", 103.0)
    assert not leases.take("cn_a", "t13", now=104.0, lapses_at=999.0, cap=2, key_seconds=9)
    later = 103.0 + leases.live_window + 1
    assert leases.take("cn_a", "t14", now=later, lapses_at=999.0, cap=2, key_seconds=9)
    assert redis_server_client.zscore(keys.live_connections(), "cn_c") is None
    # Offboarding erases its leases and its member of the index.
    queued.add("cn_a", "live", "a1", later)
    assert leases.forget("cn_a") == 12 + 1  # its leases, its member of the index
    # Its leases, and its member: its latest live work is due at 150, within the window.
    assert leases.forget("cn_b") == 2 + 1
    assert redis_server_client.exists(keys.thread_leases("cn_a")) == 0
    assert redis_server_client.zscore(keys.live_connections(), "cn_a") is None
    queued.forget("cn_a")
    queued.forget("cn_b")
    queued.forget("cn_c")


def test_live_work_stamped_a_moment_after_the_workers_clock_is_due_now(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    """The receiver stamps a webhook with its own clock, which may read a little later than the
    taking worker's did: that work is due, and its connection active, all the same (within
    `clock_slack`); a retry's backoff is not."""
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys, clock_slack=1.0)
    queued = QueuedMessages(redis_server_client, keys)
    for n in range(2):
        assert leases.take("cn_a", f"a{n}", now=100.0, lapses_at=999.0, cap=2, key_seconds=9)
    queued.add("cn_c", "live", "c-retry", 107.5)  # a retry's shortest backoff
    assert leases.take("cn_a", "a2", now=100.0, lapses_at=999.0, cap=2, key_seconds=9)
    queued.add("cn_b", "live", "b1", 100.05)  # the webhook a moment later, by the receiver
    assert not leases.take("cn_a", "a3", now=100.0, lapses_at=999.0, cap=2, key_seconds=9)
    # No longer waiting (finished), but active: its latest live work fell due a moment ago.
    queued.remove("cn_b", "live", "b1")
    assert not leases.take("cn_a", "a3", now=100.0, lapses_at=999.0, cap=2, key_seconds=9)
    for connection in ("cn_a", "cn_b", "cn_c"):
        leases.forget(connection)
        queued.forget(connection)


def test_busy_clinics_that_each_hold_their_share_share_the_whole_pool(
    redis_server_client: redis.Redis, base_settings: Settings
) -> None:
    """Two clinics with a live backlog each: once each holds its cap, neither is short of its
    share, and they use the pool between them, past their caps."""
    keys = Keys(f"{base_settings.redis_namespace}-fair-{next(_namespaces)}")
    leases = ThreadLeases(redis_server_client, keys)
    queued = QueuedMessages(redis_server_client, keys)
    for n in range(20):
        queued.add("cn_a", "live", f"a-m{n}", 1.0)
        queued.add("cn_b", "live", f"b-m{n}", 1.0)
    taken = [
        leases.take(c, f"{c}{n}", now=2.0, lapses_at=99.0, cap=2, key_seconds=9)
        for n in range(8)
        for c in ("cn_a", "cn_b")
    ]
    assert taken == [True] * 16
    assert leases.held(["cn_a", "cn_b"], 2.0) == {"cn_a": 8, "cn_b": 8}
    # A third, short of its share, holds both to their caps.
    queued.add("cn_c", "live", "c-m", 2.0)
    assert not leases.take("cn_a", "a-more", now=2.0, lapses_at=99.0, cap=2, key_seconds=9)
    assert not leases.take("cn_b", "b-more", now=2.0, lapses_at=99.0, cap=2, key_seconds=9)
    for connection in ("cn_a", "cn_b", "cn_c"):
        leases.forget(connection)
        queued.forget(connection)


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

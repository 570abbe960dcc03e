"""Leases (`held_lease`): kept alive by one renewal thread per renewer, for as long as their
holder works and no longer, against real Redis and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from structlog.testing import capture_logs

from shared.infra.config import Settings
from shared.infra.errors import Transient
from shared.infra.store import Keys, LeaseRenewer, held_lease
from tests.redis_server import RedisServer

HOLDER = """
import sys, time
import redis
from shared.infra.store import LeaseRenewer, held_lease

client = redis.Redis.from_url(sys.argv[1])
renewer = LeaseRenewer()
with held_lease(client, sys.argv[2], ttl=float(sys.argv[3]), wait=1, busy="b", renewer=renewer):
    print("held", flush=True)
    time.sleep(60)
"""


def renewer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lease-renewer"]


def test_many_leases_at_once_are_kept_alive_by_one_thread(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    names = [f"{keys.namespace}:lease-{n}" for n in range(8)]
    held = threading.Barrier(len(names) + 1)
    done = threading.Event()

    def hold(name: str, ttl: float) -> None:
        with held_lease(redis_server_client, name, ttl=ttl, wait=1, busy="b", renewer=renewer):
            held.wait()
            done.wait()

    threads = [
        threading.Thread(target=hold, args=(name, 0.3 + 0.1 * (n % 3)))
        for n, name in enumerate(names)
    ]
    before = renewer_threads()
    for thread in threads:
        thread.start()
    held.wait()
    time.sleep(1.5)  # several times every ttl
    try:
        assert all(redis_server_client.pttl(name) > 0 for name in names)
        assert len(set(renewer_threads()) - set(before)) == 1
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert redis_server_client.exists(*names) == 0  # each released as its block ended


def test_a_lease_whose_block_ended_is_renewed_no_more(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    name = f"{keys.namespace}:lease-ended"
    with held_lease(redis_server_client, name, ttl=0.3, wait=1, busy="busy", renewer=renewer):
        token = redis_server_client.get(name)
    assert redis_server_client.exists(name) == 0
    # Put back what the renewer would extend if it still held the lease: it must lapse.
    redis_server_client.set(name, token or b"", px=300)
    time.sleep(0.8)
    assert redis_server_client.exists(name) == 0


def test_a_lease_lapses_about_its_ttl_after_its_holder_is_killed(
    redis_server_client: redis.Redis, keys: Keys, settings: Settings, renewer: LeaseRenewer
) -> None:
    name = f"{keys.namespace}:lease-killed"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.redis_url, name, "0.6"], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        time.sleep(1.5)
        assert redis_server_client.pttl(name) > 0  # renewed past its ttl while alive
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed = time.monotonic()
        while redis_server_client.exists(name):
            assert time.monotonic() - killed < 0.6 + 0.5, "the lease outlived its dead holder"
            time.sleep(0.02)
        with held_lease(redis_server_client, name, ttl=0.6, wait=0.1, busy="b", renewer=renewer):
            pass  # another worker takes over
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_renewal_outlasts_a_redis_outage_shorter_than_the_ttl(
    private_redis: RedisServer, keys: Keys, renewer: LeaseRenewer
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_connect_timeout=0.2)
    name = f"{keys.namespace}:lease-outage"
    try:
        with held_lease(client, name, ttl=3.0, wait=1, busy="busy", renewer=renewer):
            private_redis.stop()  # renewals fail meanwhile
            time.sleep(1.2)
            private_redis.start()
            time.sleep(4.0)  # more than the ttl since the outage: renewed again
            assert client.pttl(name) > 0
            with (
                pytest.raises(Transient),
                held_lease(client, name, ttl=3.0, wait=0.1, busy="busy", renewer=renewer),
            ):
                pass
        assert client.exists(name) == 0
    finally:
        client.close()


def test_an_unexpected_error_in_one_renewal_does_not_stop_the_others(
    redis_server_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    renewer: LeaseRenewer,
) -> None:
    name = f"{keys.namespace}:lease-unlucky"
    real = redis.lock.Lock.reacquire
    failures = iter([RuntimeError("a bug in one renewal")])

    def reacquire_once_broken(lock: redis.lock.Lock) -> bool:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(lock)

    monkeypatch.setattr(redis.lock.Lock, "reacquire", reacquire_once_broken)
    before = renewer_threads()
    with (
        capture_logs() as logs,
        held_lease(redis_server_client, name, ttl=0.3, wait=1, busy="busy", renewer=renewer),
    ):
        time.sleep(1.2)  # four ttls: only renewals after the failure keep it
        assert redis_server_client.pttl(name) > 0
    assert len(set(renewer_threads()) - set(before)) == 1
    assert [e["event"] for e in logs] == ["lease.renewal_failed"]


def test_a_closed_renewer_stops_its_thread_and_refuses_new_leases(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    renewer = LeaseRenewer()
    held, taken_after = f"{keys.namespace}:lease-held", f"{keys.namespace}:lease-after"
    before = renewer_threads()
    with held_lease(redis_server_client, held, ttl=0.3, wait=1, busy="busy", renewer=renewer):
        [thread] = set(renewer_threads()) - set(before)
        time.sleep(0.6)
        assert redis_server_client.pttl(held) > 0  # renewed until the close
        renewer.close()
        assert not thread.is_alive()
        time.sleep(0.6)
        assert redis_server_client.exists(held) == 0  # renewed no more: lapsed after its ttl
    with (
        pytest.raises(RuntimeError, match="closed"),
        held_lease(redis_server_client, taken_after, ttl=5, wait=1, busy="b", renewer=renewer),
    ):
        pass
    assert redis_server_client.exists(taken_after) == 0  # refused, and not left held
    assert set(renewer_threads()) == set(before)


def test_a_forked_child_cannot_use_its_parents_renewer(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    """Dramatiq's workers build their runtime, and so their renewer, after the fork. If one
    ever crossed a fork, the child must fail loudly rather than keep its parent's leases alive
    or wait on a lock its parent held."""
    name = f"{keys.namespace}:lease-parent"
    with held_lease(redis_server_client, name, ttl=5, wait=1, busy="b", renewer=renewer):
        lease = redis_server_client.lock(f"{keys.namespace}:lease-child", timeout=5)
        pid = os.fork()
        if pid == 0:
            # The child does no more than the call under test: after a fork in a process with
            # other threads, anything that takes a lock they held (I/O, logging) may hang.
            code = 1
            try:
                renewer.add(lease)
            except RuntimeError as exc:
                code = 0 if "forked child" in str(exc) else 3
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if ended[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in LeaseRenewer.add")
    assert os.waitstatus_to_exitcode(ended[1]) == 0


def test_a_lease_is_freed_once_redis_is_back_from_a_short_outage(
    private_redis: RedisServer, keys: Keys, renewer: LeaseRenewer
) -> None:
    """Left held, it would turn the retry of its job away as busy until its ttl ran out."""
    client = redis.Redis.from_url(private_redis.url, socket_connect_timeout=0.2)
    name = f"{keys.namespace}:lease-freed-after-outage"
    back = threading.Timer(1.0, private_redis.start)
    try:
        with held_lease(client, name, ttl=30.0, wait=1, busy="busy", renewer=renewer):
            private_redis.stop()
            back.start()
        assert client.exists(name) == 0
    finally:
        back.join()
        client.close()

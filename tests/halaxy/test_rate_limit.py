"""The shared Halaxy request budget: one sliding window per key across every process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.halaxy.client import HalaxyClient
from shared.halaxy.rate_limit import HalaxyRateLimiter
from shared.halaxy.tokens import TokenCache
from shared.infra.config import Settings
from shared.infra.errors import RateLimited, StoreUnavailable, Transient
from shared.infra.store import Keys, LeaseRenewer, held_lease
from tests.conftest import make_connection
from tests.helpers import run_together

BASE = "https://au-api.halaxy.com/main"


def test_the_budget_is_shared_by_every_limiter_on_the_key(
    redis_server_client: redis.Redis, keys: Keys, settings: Settings
) -> None:
    # Two processes' limiters: their own Redis connections, one budget.
    other = redis.Redis.from_url(settings.redis_url)
    first = HalaxyRateLimiter(redis_server_client, keys, limit=5, window_ms=1000)
    second = HalaxyRateLimiter(other, keys, limit=5, window_ms=1000)
    for limiter in (first, second, first, second, first):
        limiter.acquire(BASE, "key-a")
    with pytest.raises(RateLimited) as caught:
        second.acquire(BASE, "key-a")
    assert 0 < caught.value.retry_after <= 1.0
    second.acquire(BASE, "key-b")  # another key has its own budget
    time.sleep(caught.value.retry_after + 0.05)
    first.acquire(BASE, "key-a")  # the window slid on
    other.close()


def test_many_threads_never_take_more_than_the_limit(
    redis_server_client: redis.Redis, keys: Keys, settings: Settings
) -> None:
    taken: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        client = redis.Redis.from_url(settings.redis_url)
        limiter = HalaxyRateLimiter(client, keys, limit=50, window_ms=60_000)
        barrier.wait()
        count = 0
        for _ in range(20):
            try:
                limiter.acquire(BASE, "key-a")
                count += 1
            except RateLimited:
                pass
        taken.append(count)
        client.close()

    run_together(work, 8)
    assert sum(taken) == 50


@pytest.fixture
def clients(
    store: ConnectionStore,
    verify_key: KeyVerifier,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    settings: Settings,
    keys: Keys,
) -> Iterator[list[HalaxyClient]]:
    # Added without the key check, so no request has used the key's window at the fake yet.
    connection = make_connection(store, fake_halaxy, verify_key, verify=False)
    fake_halaxy.patients["42"] = patient_resource("42")
    with TestClient(fake_halaxy.app()) as http:
        built = []
        for _ in range(2):
            client = redis.Redis.from_url(settings.redis_url)
            tokens = TokenCache(client, keys, settings.fernet)
            limiter = HalaxyRateLimiter(client, keys)
            built.append(
                HalaxyClient(connection.halaxy_account, http, tokens, settings.user_agent, limiter)
            )
        yield built


def test_a_429_from_halaxy_pauses_every_process_on_the_key(
    clients: list[HalaxyClient], fake_halaxy: FakeHalaxy
) -> None:
    first, second = clients
    first.read("Patient/42")
    fake_halaxy.faults.script = [429]
    fake_halaxy.faults.retry_after = 2
    with pytest.raises(RateLimited):
        first.read("Patient/42")
    sent = len(fake_halaxy.requests)
    with pytest.raises(RateLimited) as caught:
        second.read("Patient/42")  # refused here, without a request to Halaxy
    assert len(fake_halaxy.requests) == sent
    assert 1.0 < caught.value.retry_after <= 2.0


def test_halaxy_saying_nothing_remains_pauses_the_key(
    clients: list[HalaxyClient], fake_halaxy: FakeHalaxy
) -> None:
    first, second = clients
    fake_halaxy.rate_limit = 1  # its first answer says x-ratelimit-remaining: 0
    first.read("Patient/42")
    sent = len(fake_halaxy.requests)
    with pytest.raises(RateLimited):
        second.read("Patient/42")
    assert len(fake_halaxy.requests) == sent


class FailingPause(HalaxyRateLimiter):
    def pause(self, base_url: str, client_id: str, seconds: float) -> None:
        raise StoreUnavailable("Redis timed out")


def test_a_written_note_is_reported_even_when_recording_the_pause_fails(
    connection: Connection, redis_server_client: redis.Redis, keys: Keys, settings: Settings
) -> None:
    """A 201 that also says 'nothing remains' must still count as written, never retried."""
    posts: list[str] = []

    def halaxy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        posts.append(request.url.path)
        return httpx.Response(201, json={"id": "DR-1"}, headers={"x-ratelimit-remaining": "0"})

    with httpx.Client(transport=httpx.MockTransport(halaxy)) as http:
        client = HalaxyClient(
            connection.halaxy_account,
            http,
            TokenCache(redis_server_client, keys, settings.fernet),
            settings.user_agent,
            FailingPause(redis_server_client, keys),
        )
        created = client.create("DocumentReference", lambda: [b"{}"], 2)
    assert created == {"id": "DR-1"}
    assert len(posts) == 1


def test_a_lease_outlives_its_ttl_while_its_holder_works(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    name = f"{keys.namespace}:lease-test"
    with held_lease(redis_server_client, name, ttl=0.6, wait=1, busy="busy", renewer=renewer):
        time.sleep(1.5)
        assert redis_server_client.pttl(name) > 0  # renewed by the renewal thread
        with (
            pytest.raises(Transient),
            held_lease(redis_server_client, name, ttl=0.6, wait=0.1, busy="busy", renewer=renewer),
        ):
            pass
    assert redis_server_client.exists(name) == 0


def test_the_budget_is_taken_with_the_token_only_while_one_is_cached(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    limiter = HalaxyRateLimiter(redis_server_client, keys, limit=2, window_ms=60_000)
    token_key = f"{keys.namespace}:a-token"
    assert limiter.acquire_if_set(BASE, "key-a", token_key) is None  # nothing taken
    redis_server_client.set(token_key, b"sealed")
    assert limiter.acquire_if_set(BASE, "key-a", token_key) == b"sealed"
    limiter.acquire(BASE, "key-a")  # the second and last request of the window
    with pytest.raises(RateLimited):
        limiter.acquire_if_set(BASE, "key-a", token_key)
    redis_server_client.delete(token_key)
    assert limiter.acquire_if_set(BASE, "key-a", token_key) is None


def test_every_request_halaxy_receives_takes_one_request_from_the_budget(
    connection: Connection,
    fake_halaxy: FakeHalaxy,
    redis_server_client: redis.Redis,
    settings: Settings,
    keys: Keys,
) -> None:
    fake_halaxy.patients["42"] = patient_resource("42")
    now = [1000.0]
    fake_halaxy.clock = lambda: now[0]
    with TestClient(fake_halaxy.app()) as http:
        tokens = TokenCache(redis_server_client, keys, settings.fernet)
        limiter = HalaxyRateLimiter(redis_server_client, keys, limit=6, window_ms=60_000)
        client = HalaxyClient(connection.halaxy_account, http, tokens, settings.user_agent, limiter)
        fake_halaxy.requests.clear()  # the key check made when the connection was added
        client.read("Patient/42")  # a token, then the read
        client.read("Patient/42")
        now[0] += 15 * 60  # the token stops working: 401, a new token, the read again
        client.read("Patient/42")
        assert len(fake_halaxy.requests) == 6
        with pytest.raises(RateLimited):
            client.read("Patient/42")  # the budget of 6 is spent: refused before sending
        assert len(fake_halaxy.requests) == 6

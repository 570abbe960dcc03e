"""HalaxyClient and the shared token cache, against the fake Halaxy and real Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from cryptography.fernet import MultiFernet
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from shared.connections.model import Connection
from shared.halaxy.auth import Token
from shared.halaxy.client import HalaxyAuthRefused, HalaxyClient, HalaxyNotFound
from shared.halaxy.tokens import TokenCache
from shared.infra.config import Settings
from shared.infra.errors import Ambiguous, Permanent, RateLimited, Transient
from shared.infra.store import Keys
from tests.helpers import run_together


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(fake_halaxy: FakeHalaxy) -> Clock:
    fake_halaxy.clock = clock = Clock()
    return clock


@pytest.fixture
def http(fake_halaxy: FakeHalaxy) -> Iterator[TestClient]:
    with TestClient(fake_halaxy.app()) as client:
        yield client


def halaxy_client(
    connection: Connection, http: httpx.Client, redis_client: redis.Redis, settings: Settings
) -> HalaxyClient:
    tokens = TokenCache(redis_client, Keys(settings.redis_namespace), settings.fernet)
    return HalaxyClient(connection.halaxy_account, http, tokens, settings.user_agent)


@pytest.fixture
def halaxy(
    connection: Connection,
    http: TestClient,
    redis_server_client: redis.Redis,
    settings: Settings,
    fake_halaxy: FakeHalaxy,
    clock: Clock,
) -> HalaxyClient:
    fake_halaxy.patients["42"] = patient_resource("42")
    fake_halaxy.forget_requests()  # the key check made when the connection was added
    return halaxy_client(connection, http, redis_server_client, settings)


def test_reads_reuse_one_token_and_always_identify_themselves(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy, settings: Settings
) -> None:
    for reference in ("Patient/42", "/main/Patient/42", f"{halaxy.resolve('Patient/42')}"):
        assert halaxy.read(reference)["id"] == "42"
    assert len(fake_halaxy.token_requests()) == 1
    assert {r.user_agent for r in fake_halaxy.requests} == {settings.user_agent}


def test_a_reference_to_another_host_is_refused_without_a_request(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy
) -> None:
    with pytest.raises(Permanent, match="outside the connection's host"):
        halaxy.read("https://evil.example/main/Patient/42")
    assert fake_halaxy.requests == []


@pytest.mark.parametrize(
    ("reference", "httpx_would_send"),
    [
        ("Patient/.", "/main/Patient"),  # Halaxy's search of every patient
        ("Patient/..", "/main"),
        ("/main/Patient/..", "/main"),
        ("Patient/./42", "/main/Patient/42"),
        ("Patient/%2E%2E", None),  # a server may decode it and resolve it all the same
        ("Patient/", None),  # an empty id: the search again
    ],
)
def test_a_reference_with_a_dot_or_empty_segment_is_refused_without_a_request(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy, reference: str, httpx_would_send: str | None
) -> None:
    if httpx_would_send is not None:
        # The defence is needed: httpx removes dot segments before sending (RFC 3986 5.2.4).
        sent = httpx.URL(f"https://au-api.halaxy.com/main/{reference.removeprefix('/main/')}")
        assert sent.path == httpx_would_send
    with pytest.raises(Permanent, match="empty or dot path segment"):
        halaxy.read(reference)
    with pytest.raises(Permanent, match="empty or dot path segment"):
        halaxy.resolve(f"{base_of(halaxy)}/{reference.removeprefix('/main/')}")
    assert fake_halaxy.requests == []


def base_of(halaxy: HalaxyClient) -> str:
    return halaxy.resolve("Patient/42").removesuffix("/Patient/42")


def test_ids_with_dots_that_are_not_segments_of_dots_are_read(halaxy: HalaxyClient) -> None:
    assert halaxy.resolve("Patient/1.2").endswith("/Patient/1.2")
    assert halaxy.resolve("Patient/..1").endswith("/Patient/..1")


def test_token_is_kept_at_most_15_minutes_and_sealed(
    halaxy: HalaxyClient, redis_server_client: redis.Redis, keys: Keys
) -> None:
    halaxy.read("Patient/42")
    [key] = list(redis_server_client.scan_iter(match=f"{keys.namespace}:halaxy-token:*"))
    assert 0 < redis_server_client.ttl(key) <= 15 * 60 - 60  # although expires_in says 3600
    assert b"gAAAAA" in redis_server_client.get(key)  # a Fernet token, not the access token


def test_expired_token_is_refreshed_once_and_the_read_succeeds(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy, clock: Clock
) -> None:
    halaxy.read("Patient/42")
    clock.now += 15 * 60  # the fake's tokens stop working after 15 minutes
    assert halaxy.read("Patient/42")["id"] == "42"
    assert len(fake_halaxy.token_requests()) == 2
    statuses = [r.status for r in fake_halaxy.requests if "Patient" in r.path]
    assert statuses == [200, 401, 200]


def test_a_revoked_key_is_a_permanent_error_after_one_refresh(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy
) -> None:
    halaxy.read("Patient/42")
    fake_halaxy.faults.script = [401, 401]  # the key lost its permission
    with pytest.raises(HalaxyAuthRefused):
        halaxy.read("Patient/42")
    assert len(fake_halaxy.token_requests()) == 2  # one refresh, no loop
    fake_halaxy.tokens.clear()
    fake_halaxy.keys.clear()  # the key was revoked: the refresh itself is refused
    with pytest.raises(Permanent, match="refused the API key"):
        halaxy.read("Patient/42")


def test_tokens_are_shared_and_fetched_once_when_eight_threads_start_together(
    connection: Connection,
    http: TestClient,
    settings: Settings,
    fake_halaxy: FakeHalaxy,
    clock: Clock,
) -> None:
    fake_halaxy.patients["42"] = patient_resource("42")
    fake_halaxy.requests.clear()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        # Each thread is like its own process: its own Redis connection and token cache.
        client = redis.Redis.from_url(settings.redis_url)
        halaxy = halaxy_client(connection, http, client, settings)
        barrier.wait()
        try:
            for _ in range(5):
                halaxy.read("Patient/42")
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    run_together(work, 8)
    assert errors == []
    assert len(fake_halaxy.token_requests()) == 1
    assert len([r for r in fake_halaxy.requests if "Patient" in r.path]) == 40


@pytest.mark.parametrize(
    ("fault", "error"),
    [(500, Transient), (502, Transient), (408, Transient), (403, Permanent), (400, Permanent)],
)
def test_statuses_become_typed_errors(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy, fault: int, error: type[Exception]
) -> None:
    halaxy.read("Patient/42")
    fake_halaxy.faults.script = [fault]
    with pytest.raises(error):
        halaxy.read("Patient/42")


def test_rate_limit_carries_retry_after(halaxy: HalaxyClient, fake_halaxy: FakeHalaxy) -> None:
    halaxy.read("Patient/42")
    fake_halaxy.faults.script = [429]
    fake_halaxy.faults.retry_after = 7
    with pytest.raises(RateLimited) as caught:
        halaxy.read("Patient/42")
    assert caught.value.retry_after == 7


def test_the_fake_enforces_500_a_minute_per_key(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy, clock: Clock
) -> None:
    fake_halaxy.rate_limit = 5
    for _ in range(5):
        halaxy.read("Patient/42")
    with pytest.raises(RateLimited) as caught:
        halaxy.read("Patient/42")
    assert caught.value.retry_after == 60
    clock.now += 61
    assert halaxy.read("Patient/42")["id"] == "42"


def test_unknown_patient_is_not_found(halaxy: HalaxyClient) -> None:
    with pytest.raises(HalaxyNotFound):
        halaxy.read("Patient/999")


def test_timeouts_and_connection_errors_are_transient(
    connection: Connection, redis_server_client: redis.Redis, settings: Settings
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        halaxy = halaxy_client(connection, http, redis_server_client, settings)
        with pytest.raises(Transient, match="timed out"):
            halaxy.read("Patient/1")
        with pytest.raises(Transient, match="ConnectError"):
            halaxy.read("Patient/1")


def test_search_follows_next_links_across_pages(
    halaxy: HalaxyClient, fake_halaxy: FakeHalaxy
) -> None:
    fake_halaxy.page_size = 4
    for i in range(1, 11):
        fake_halaxy.patients[str(i)] = patient_resource(str(i))
    found = [p["id"] for p in halaxy.search("Patient", {"_count": "4"})]
    assert sorted(found, key=int) == [*(str(i) for i in range(1, 11)), "42"]
    assert len([r for r in fake_halaxy.requests if r.path == "/main/Patient"]) == 3


def test_search_refuses_a_next_link_to_another_host(
    connection: Connection, redis_server_client: redis.Redis, settings: Settings
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        body: dict[str, Any] = {
            "resourceType": "Bundle",
            "link": [{"relation": "next", "url": "https://evil.example/main/Patient?page=2"}],
            "entry": [{"resource": {"resourceType": "Patient", "id": "1"}}],
        }
        return httpx.Response(200, json=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        halaxy = halaxy_client(connection, http, redis_server_client, settings)
        pages = halaxy.search("Patient", {})
        assert next(pages)["id"] == "1"
        with pytest.raises(Permanent):
            next(pages)


class CountingFernet(MultiFernet):
    def __init__(self, fernet: MultiFernet) -> None:
        self._inner = fernet
        self.decrypted = 0

    def encrypt(self, msg: bytes) -> bytes:
        return self._inner.encrypt(msg)

    def decrypt(self, msg: bytes | str, ttl: int | None = None) -> bytes:
        self.decrypted += 1
        return self._inner.decrypt(msg, ttl)


def test_a_token_is_decrypted_once_and_a_refresh_elsewhere_is_seen_at_once(
    redis_server_client: redis.Redis, keys: Keys, settings: Settings
) -> None:
    fernet = CountingFernet(settings.fernet)
    mine = TokenCache(redis_server_client, keys, fernet)
    other_client = redis.Redis.from_url(settings.redis_url)
    theirs = TokenCache(other_client, keys, settings.fernet)  # another process
    issued = iter(["t1", "t2"])

    def fetch() -> Token:
        return Token(next(issued), 900)

    def must_not_fetch() -> Token:
        raise AssertionError("fetched although a token is cached")

    base = "https://au-api.halaxy.com/main"
    assert theirs.get(base, "key-a", fetch) == "t1"
    for _ in range(5):
        assert mine.get(base, "key-a", must_not_fetch) == "t1"
    assert fernet.decrypted == 1
    theirs.invalidate(base, "key-a", "t1")  # Halaxy said 401 to the other process
    assert theirs.get(base, "key-a", fetch) == "t2"
    assert mine.get(base, "key-a", must_not_fetch) == "t2"  # not the remembered t1
    theirs.invalidate(base, "key-a", "t2")
    assert mine.get(base, "key-a", lambda: Token("t3", 900)) == "t3"
    other_client.close()


@pytest.mark.parametrize(
    ("status", "raised", "posts"),
    [
        # A 5xx proves nothing, whatever its body says: one POST, and the caller parks it.
        (500, Ambiguous, 1),
        (502, Ambiguous, 1),
        # A 4xx `expired` refused the token before the write: once more with a fresh one.
        (400, HalaxyAuthRefused, 2),
    ],
)
def test_a_write_answered_expired_is_sent_again_only_when_the_answer_proves_it_was_refused(
    connection: Connection,
    redis_server_client: redis.Redis,
    settings: Settings,
    status: int,
    raised: type[Exception],
    posts: int,
) -> None:
    posted: list[httpx.Request] = []
    expired = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "expired", "diagnostics": "token expired"}],
    }

    def halaxy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 900})
        posted.append(request)
        return httpx.Response(status, json=expired)

    with httpx.Client(transport=httpx.MockTransport(halaxy)) as http:
        client = halaxy_client(connection, http, redis_server_client, settings)
        with pytest.raises(raised):
            client.create("DocumentReference", lambda: [b"{}"], 2)
    assert len(posted) == posts

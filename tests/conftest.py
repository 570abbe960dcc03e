"""Shared fixtures. Tests use the Redis at REDIS_URL (started by `make test` if needed), each
under a key namespace of its own, so they never collide with other users of that Redis."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

from cryptography.fernet import Fernet

# Before any project import: the workers package reads the environment when imported.
RUN_NAMESPACE = f"hbtest-{os.getpid()}-{secrets.token_hex(3)}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ["BRIDGE_REDIS_NAMESPACE"] = RUN_NAMESPACE
os.environ["BRIDGE_SECRET_KEY"] = Fernet.generate_key().decode()
os.environ["BRIDGE_ADMIN_TOKEN"] = "admin-" + secrets.token_urlsafe(24)
os.environ["BRIDGE_PUBLIC_URL"] = "https://bridge.example.test"
os.environ["LOG_FORMAT"] = "console"
# Fair share binds only while another connection's live work waits for a thread, which a test
# that pauses its worker makes happen by chance: tests not about it hold no connection to a share
# (tests/services/test_fair_share_pipeline.py sets its own).
os.environ.setdefault("BRIDGE_CONNECTION_THREAD_SHARE", "1")

import itertools  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from services.sandbox.halaxy import FakeHalaxy  # noqa: E402
from services.sandbox.physitrack import FakePhysitrack  # noqa: E402
from services.webhook_receiver.app import create_app, halaxy_key_verifier  # noqa: E402
from shared.connections import onboarding  # noqa: E402
from shared.connections.model import Connection  # noqa: E402
from shared.connections.onboarding import KeyVerifier  # noqa: E402
from shared.connections.roster import PlatformKeyVerifier, physitrack_key_verifier  # noqa: E402
from shared.connections.store import ConnectionStore  # noqa: E402
from shared.infra.clock import utcnow  # noqa: E402
from shared.infra.config import Settings, load_settings  # noqa: E402
from shared.infra.store import Keys, LeaseRenewer  # noqa: E402
from tests.helpers import audit_of  # noqa: E402
from tests.procfile import Procfile  # noqa: E402
from tests.redis_server import RedisServer, SentinelGroup  # noqa: E402

pytest_plugins = ["tests.workers"]
_counter = itertools.count()


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def redis_server_client(base_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(base_settings.redis_url)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(
            f"no Redis at REDIS_URL={base_settings.redis_url}: run the suite with make test"
        )
    yield client
    for key in client.scan_iter(match=f"{RUN_NAMESPACE}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def settings(base_settings: Settings, redis_server_client: redis.Redis) -> Settings:
    """Settings with a key namespace of this test's own."""
    return base_settings.model_copy(update={"redis_namespace": f"{RUN_NAMESPACE}-{next(_counter)}"})


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_namespace)


@pytest.fixture
def renewer() -> Iterator[LeaseRenewer]:
    built = LeaseRenewer()
    yield built
    built.close()


@pytest.fixture
def store(settings: Settings, redis_server_client: redis.Redis, keys: Keys) -> ConnectionStore:
    return ConnectionStore(redis_server_client, keys, settings.fernet)


@pytest.fixture
def fake_halaxy() -> FakeHalaxy:
    return FakeHalaxy()


@pytest.fixture
def fake_physitrack() -> FakePhysitrack:
    return FakePhysitrack()


@pytest.fixture
def physitrack_http(fake_physitrack: FakePhysitrack) -> Iterator[TestClient]:
    """The fake Physitrack served in-process, at http://testserver."""
    with TestClient(fake_physitrack.app()) as http:
        yield http


@pytest.fixture
def verify_key(settings: Settings, fake_halaxy: FakeHalaxy) -> Iterator[KeyVerifier]:
    """Checks Halaxy keys against the fake Halaxy, whatever host the base URL names."""
    with TestClient(fake_halaxy.app()) as http:
        yield halaxy_key_verifier(settings, http)


@pytest.fixture
def verify_platform_key(
    settings: Settings, fake_physitrack: FakePhysitrack
) -> Iterator[PlatformKeyVerifier]:
    """Checks practitioners' Physitrack keys against the fake Physitrack, whatever host the
    connection's platform base URL names (its path must end in /api/v2)."""
    with TestClient(fake_physitrack.app()) as http:
        yield physitrack_key_verifier(http, settings.user_agent)


@pytest.fixture
def app(
    settings: Settings, verify_key: KeyVerifier, verify_platform_key: PlatformKeyVerifier
) -> Starlette:
    return create_app(settings, verify_key=verify_key, verify_platform_key=verify_platform_key)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def make_connection(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, **fields: object
) -> Connection:
    data: dict[str, object] = {
        "name": "Clinic One",
        "halaxy_key": fake_halaxy.add_key(),
        "region": "au",
        "platform": "physitrack",
        "platform_base_url": "https://au.physitrack.com/api/v2",
        "platform_api_key": "pt-key-" + secrets.token_hex(8),
        "author": "PR-1001",
    }
    data.update(fields)
    return onboarding.add_connection(
        store, verify_key, onboarding.parse_request(data), utcnow(), audit_of(store), "test"
    )


@pytest.fixture
def connection(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> Connection:
    return make_connection(store, fake_halaxy, verify_key)


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF on), for tests that stop and start Redis."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels of this test's own, behind a password."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), "pw-" + secrets.token_hex(12))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def sentinel_settings(settings: Settings, sentinel_group: SentinelGroup) -> Settings:
    """`settings` on `sentinel_group`, waiting 200 ms for a replica's acknowledgement."""
    return sentinel_group.settings_for(settings, replica_ack_ms_setting=200)


@pytest.fixture
def procfile(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Procfile]]:
    """Makes the Procfile's processes for an environment (`procfile(env)["web"].start()`);
    any still running at the end are killed. Their output is under the test's tmp_path."""
    made: list[Procfile] = []

    def make(env: dict[str, str]) -> Procfile:
        made.append(Procfile(env, tmp_path))
        return made[-1]

    yield make
    for each in made:
        each.kill_all()


# The figures chaos and failover tests measure, shown at the end of the run whether the test
# passed or not: pytest keeps a passing test's own output to itself.
_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Records a line of figures for the run's summary (and prints it, for a failure's log)."""

    def record(line: str) -> None:
        print(line)
        request.config.stash.setdefault(_FIGURES, []).append(f"{request.node.nodeid}\n  {line}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("figures measured by the tests")
        for line in lines:
            terminalreporter.write_line(line)

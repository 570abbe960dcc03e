"""Redis through Sentinel, with real redis-server and sentinel processes on loopback ports
(`tests/redis_server.py`): every client follows a failover without a restart, and a sentinel
unreachable, a wrong master name or a wrong password is said plainly, naming the variable to
check, at start-up (the CLI, the receiver, a worker, the scheduler) and by /readyz; never the
password."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.webhook_receiver.app import create_app
from shared.infra.config import Settings
from shared.infra.redis_health import redis_problem
from shared.infra.store import async_redis_client, redis_client
from tests.helpers import BIN, process_env, wait_until
from tests.redis_server import SentinelGroup, free_port

pytestmark = [pytest.mark.redis, pytest.mark.dateless]  # reads no date: run once, not a year ahead


@pytest.fixture(scope="module")
def steady_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """One group for the tests that only read from it (each test of a failover has its own)."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), "pw-" + secrets.token_hex(12))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def steady_settings(settings: Settings, steady_group: SentinelGroup) -> Settings:
    return steady_group.settings_for(settings)


def test_the_clients_follow_a_failover_without_being_built_again(
    sentinel_group: SentinelGroup, sentinel_settings: Settings
) -> None:
    client = redis_client(sentinel_settings)
    client.set("k", "before")
    first = sentinel_group.master_port()
    assert first is not None

    async def write_async(value: str) -> bool:
        async_client = async_redis_client(sentinel_settings)
        try:
            await async_client.set("ak", value)
            return True
        except redis.exceptions.RedisError:
            return False
        finally:
            await async_client.aclose()

    assert asyncio.run(write_async("before"))
    sentinel_group.kill(first)

    def written() -> bool:
        try:
            return bool(client.set("k", "after"))
        except redis.exceptions.RedisError:
            return False

    wait_until(written, 30, "a write through the same client to the new master")
    assert sentinel_group.master_port() not in (None, first)
    assert client.get("k") == b"after"
    wait_until(lambda: asyncio.run(write_async("after")), 10, "an async write")
    client.close()


def wrong(settings: Settings, group: SentinelGroup, case: str) -> Settings:
    """`settings` made wrong in one way."""
    changes: dict[str, Any] = {
        "unreachable": {"redis_sentinels": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"},
        "master": {"redis_sentinel_master": "not-our-master"},
        "password": {"redis_password": SecretStr("not-the-pw-0123")},
    }[case]
    return settings.model_copy(update=changes)


SAYS = {
    "unreachable": "no sentinel answered (REDIS_SENTINELS: 127.0.0.1:",
    "master": "no sentinel knows a master named 'not-our-master' (REDIS_SENTINEL_MASTER)",
    "password": "a sentinel refused the password (REDIS_PASSWORD must be every sentinel's",
}
READYZ_SAYS = {
    "unreachable": "Redis cannot be used: no sentinel answered",
    "master": "no sentinel knows the master name (REDIS_SENTINEL_MASTER)",
    "password": "a sentinel refused the password (REDIS_PASSWORD)",
}
LASTING = {"unreachable": False, "master": True, "password": True}
CASES = sorted(SAYS)


def env_of(settings: Settings, group: SentinelGroup) -> dict[str, str]:
    assert settings.redis_password is not None
    return process_env(
        settings,
        REDIS_SENTINELS=settings.redis_sentinels,
        REDIS_SENTINEL_MASTER=settings.redis_sentinel_master,
        REDIS_PASSWORD=settings.redis_password.get_secret_value(),
    )


def assert_no_password(text: str, group: SentinelGroup) -> None:
    assert group.password not in text
    assert "not-the-pw-0123" not in text


@pytest.mark.parametrize("case", CASES)
def test_what_is_wrong_is_said_and_whether_waiting_can_mend_it(
    steady_group: SentinelGroup, steady_settings: Settings, case: str
) -> None:
    problem = redis_problem(wrong(steady_settings, steady_group, case))

    assert problem is not None
    assert SAYS[case] in problem.detail
    assert problem.lasting is LASTING[case]
    assert_no_password(problem.detail, steady_group)
    assert redis_problem(steady_settings) is None


@pytest.mark.parametrize("case", CASES)
def test_readyz_answers_503_saying_what_is_wrong(
    steady_group: SentinelGroup, steady_settings: Settings, case: str
) -> None:
    with TestClient(create_app(wrong(steady_settings, steady_group, case))) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert READYZ_SAYS[case] in response.json()["detail"]
    assert_no_password(response.text, steady_group)
    # Anyone who reaches the port may read it: no address or name of the deployment's Redis.
    assert "127.0.0.1" not in response.text
    assert "not-our-master" not in response.text


def test_readyz_is_ready_through_the_sentinels(steady_settings: Settings) -> None:
    with TestClient(create_app(steady_settings)) as client:
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("case", CASES)
def test_the_cli_exits_3_with_one_line_saying_what_is_wrong(
    steady_group: SentinelGroup, steady_settings: Settings, case: str
) -> None:
    env = env_of(wrong(steady_settings, steady_group, case), steady_group)
    done = subprocess.run(
        [str(BIN / "halaxy-bridge"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 3, done.stderr
    [line] = done.stderr.splitlines()
    assert SAYS[case] in line
    assert_no_password(done.stderr, steady_group)


# How each stops: the receiver as on a bad setting; a worker whose boot failed; click's error.
EXIT_CODES = {"receiver": 2, "worker": 1, "scheduler": 1}
# How each Procfile process is started here, as the Procfile starts it.
STARTS = {
    "receiver": ["uvicorn", "services.webhook_receiver.app:app", "--port", "{port}"],
    "worker": ["dramatiq", "services.workers", "--processes", "1", "--threads", "1"],
    "scheduler": ["halaxy-bridge", "scheduler"],
}


@pytest.mark.parametrize("process", sorted(STARTS))
@pytest.mark.parametrize("case", ["master", "password"])
def test_a_process_does_not_start_on_a_setting_that_is_wrong(
    steady_group: SentinelGroup,
    steady_settings: Settings,
    tmp_path: Path,
    process: str,
    case: str,
) -> None:
    """A wrong master name or password never mends itself: the process stops at start-up,
    saying why. (An unreachable Redis may come back: they wait for it, as before.)"""
    env = env_of(wrong(steady_settings, steady_group, case), steady_group)
    command = [str(BIN / a) if n == 0 else a for n, a in enumerate(STARTS[process])]
    command = [a.replace("{port}", str(free_port())) for a in command]
    with (tmp_path / "err").open("w+") as err:
        started = subprocess.Popen(command, env=env, stdout=err, stderr=err)
        try:
            code = started.wait(timeout=60)
        finally:
            if started.poll() is None:
                started.kill()
                started.wait()
    output = (tmp_path / "err").read_text()
    assert code == EXIT_CODES[process], output
    assert SAYS[case] in output
    assert "Redis cannot be used" in output
    assert_no_password(output, steady_group)


def test_one_redis_at_redis_url_takes_redis_password_and_a_wrong_one_is_said_so(
    steady_group: SentinelGroup, settings: Settings
) -> None:
    port = steady_group.master_port()
    at_url = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    right = at_url.model_copy(update={"redis_password": SecretStr(steady_group.password)})
    wrong_password = at_url.model_copy(update={"redis_password": SecretStr("not-the-pw-0123")})

    assert redis_problem(right) is None
    problem = redis_problem(wrong_password)
    assert problem is not None
    assert problem.lasting
    assert problem.detail == (
        "Redis refused the password (check REDIS_PASSWORD against its requirepass) "
        f"(REDIS_URL: 127.0.0.1:{port}/0)"
    )
    missing = redis_problem(at_url)
    assert missing is not None
    assert missing.lasting
    assert "Redis refused the password" in missing.detail

"""A newcomer's first hour, as real processes: the sandbox prints what `connections add`
needs, and `demo --serve` prints what to poke it with, answers the README's own curl
commands, and leaves nothing behind in a shared Redis when it is stopped."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from services.sandbox.serve import free_port
from shared.infra.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Output:
    """A child process's stdout, read line by line as it comes (a file, so nothing blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def wait_for(self, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.path.read_text(errors="replace")
            found = re.search(pattern, text, re.MULTILINE)
            if found:
                return found.group(0)
            assert process.poll() is None, f"exited {process.returncode}:\n{text}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text}"
            time.sleep(0.1)


def start(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        return subprocess.Popen(
            [str(BIN / "halaxy-bridge"), *args], stdout=out, stderr=err, env=env, cwd=ROOT
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}


# --- the sandbox --------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path, child_env: dict[str, str]) -> Iterator[Output]:
    process = start(["sandbox", "--port", str(free_port())], tmp_path, child_env)
    output = Output(tmp_path / "out")
    output.wait_for(r"^  halaxy-bridge connections add .*$", process, 30)
    output.wait_for(r"^", process, 1)
    try:
        yield output
    finally:
        stop(process)


def test_the_sandbox_prints_keys_and_a_connections_add_line_that_works(
    sandbox: Output, child_env: dict[str, str]
) -> None:
    text = sandbox.path.read_text()
    halaxy_key = re.search(r"^Halaxy key \(--halaxy-key\): +(\S+)$", text, re.MULTILINE)
    platform_key = re.search(r"^Platform key \(--platform-api-key\): (\S+)$", text, re.MULTILINE)
    assert halaxy_key is not None
    assert ":" in halaxy_key.group(1)
    assert platform_key is not None
    assert "(keys: 1)" in text
    [line] = [line for line in text.splitlines() if line.startswith("  halaxy-bridge ")]
    command = shlex.split(line)
    assert halaxy_key.group(1) in command
    assert platform_key.group(1) in command

    # The line as printed, with --json to read its answer; it verifies the key (a token).
    done = subprocess.run(
        [str(BIN / "halaxy-bridge"), *command[1:], "--json"],
        env=child_env,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["id"].startswith("cn_")


# --- the demo -----------------------------------------------------------------------------------


def readme_curl_blocks() -> list[str]:
    """The README's copy-paste curl commands against the running demo."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    found = [block for block in blocks if block.startswith('curl -sS --fail-with-body "$HB/')]
    assert len(found) == 2, "the README shows one Halaxy webhook and one program callback"
    return found


def exported(line: str) -> dict[str, str]:
    words = shlex.split(line)
    assert words[0] == "export"
    return dict(word.split("=", 1) for word in words[1:])


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="needs curl (Debian: apt-get install curl)"
)
def test_demo_serve_answers_the_readme_and_leaves_no_key_behind(
    tmp_path: Path, redis_server_client: redis.Redis
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = start(["demo", "--serve"], tmp_path, env)
    output = Output(tmp_path / "out")
    try:
        values = exported(output.wait_for(r"^export HB=.*$", process, 90))
        text = (tmp_path / "out").read_text()
        namespace = re.search(r"^Redis namespace: (hb-demo-[0-9a-f]+) ", text, re.MULTILINE)
        assert namespace is not None
        assert f"Admin token:     {values['HB_ADMIN_TOKEN']}" in text
        assert f"Ops page:        {values['HB']}/ops" in text
        assert list(redis_server_client.scan_iter(match=f"{namespace.group(1)}*"))

        for block in readme_curl_blocks():
            done = subprocess.run(
                ["bash", "-c", block],
                env={**os.environ, **values},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, (block, done.stdout, done.stderr)
            assert len(orjson.loads(done.stdout)["accepted"]) == 1, done.stdout

        admin = {"Authorization": f"Bearer {values['HB_ADMIN_TOKEN']}"}
        for path in ("/ops", "/ops/status"):
            assert httpx.get(values["HB"] + path, headers=admin).status_code == 200
    finally:
        code = stop(process)

    assert code == 0, (tmp_path / "err").read_text()
    assert (tmp_path / "out").read_text().rstrip().endswith("demo: ok")
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert list(redis_server_client.scan_iter(match=f"{namespace.group(1)}*")) == []

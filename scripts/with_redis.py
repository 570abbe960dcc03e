"""Run a command with a reachable Redis: the one at REDIS_URL, else a throwaway redis-server.

Usage: python scripts/with_redis.py COMMAND [ARGS...]
The throwaway server listens on a free loopback port, keeps nothing on disk, and is stopped
when the command ends. Its URL is passed to the command as REDIS_URL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except (redis.exceptions.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(command: list[str]) -> int:
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    if reachable(url):
        print(f"with_redis: using the Redis at {url.split('@')[-1]}", file=sys.stderr)
        return subprocess.call(command, env={**os.environ, "REDIS_URL": url})
    binary = shutil.which("redis-server")
    if binary is None:
        print(
            f"with_redis: no Redis at {url} and no redis-server to start.\n"
            "  Install one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew "
            "install redis)\n  or point REDIS_URL at a Redis you may use for tests.",
            file=sys.stderr,
        )
        return 1
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hb-redis-") as directory:
        server = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while not reachable(url):
                if time.monotonic() > deadline or server.poll() is not None:
                    print("with_redis: the throwaway redis-server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"with_redis: started a throwaway redis-server on port {port}", file=sys.stderr)
            return subprocess.call(command, env={**os.environ, "REDIS_URL": url})
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))

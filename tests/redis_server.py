"""A throwaway redis-server on a free loopback port, which tests may stop and restart."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from shared.infra.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class SentinelGroup:
    """A master, a replica and three sentinels (quorum 2) on loopback ports, all behind one
    password, for tests that fail Redis over. Each node keeps its port across a restart; a
    sentinel's config is a file of its own, which it rewrites as the group changes."""

    MASTER_NAME = "hbmaster"

    def settings_for(self, settings: Settings, **update: object) -> Settings:
        """`settings` reaching Redis through this group's sentinels, with its password."""
        return settings.model_copy(
            update={
                "redis_sentinels": self.sentinels,
                "redis_sentinel_master": self.MASTER_NAME,
                "redis_password": SecretStr(self.password),
                **update,
            }
        )

    def __init__(
        self,
        directory: Path,
        password: str,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 4000,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.node_ports = [free_port(), free_port()]  # [0] starts as the master
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}  # by port

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for this group."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": self.sentinels,
            "REDIS_SENTINEL_MASTER": self.MASTER_NAME,
            "REDIS_PASSWORD": self.password,
        }

    def start(self) -> SentinelGroup:
        master, replica = self.node_ports
        self.start_node(master)
        self.start_node(replica, replica_of=master)
        wait_for(lambda: self.replicas_of(master) == 1, "the replica to sync")
        for port in self.sentinel_ports:
            self.start_sentinel(port, master)
        wait_for(
            lambda: all(self.sentinel_sees_group(port) for port in self.sentinel_ports),
            "the sentinels to find each other and the replica",
        )
        return self

    def start_node(self, port: int, replica_of: int | None = None) -> None:
        """Start a node; with `replica_of`, as that node's replica. A node that died is started
        again as the current master's replica, as the sentinels' view has it: started as a
        master, empty, it could be promoted (and the data wiped) before they convert it."""
        directory = self.directory / f"node-{port}"
        directory.mkdir(exist_ok=True)
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        args += ["--requirepass", self.password, "--masterauth", self.password, "--save", ""]
        args += ["--appendonly", "no", "--maxmemory-policy", "noeviction"]
        args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        args += ["--logfile", str(self.directory / f"node-{port}.log")]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: self._answers(port), f"redis-server on {port}")

    def start_sentinel(self, port: int, master: int) -> None:
        config = self.directory / f"sentinel-{port}.conf"
        name = self.MASTER_NAME
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {name} 127.0.0.1 {master} 2\n"
            f"sentinel auth-pass {name} {self.password}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
            f"logfile {self.directory / f'sentinel-{port}.log'}\n"
        )
        self.processes[port] = subprocess.Popen(
            [self.binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self._answers(port), f"the sentinel on {port}")

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers knows it."""
        for port in self.sentinel_ports:
            try:
                with self.client(port) as client:
                    reply = client.execute_command(
                        "SENTINEL", "get-master-addr-by-name", self.MASTER_NAME
                    )
                    return int(reply[1])
            except redis.exceptions.RedisError:
                continue
        return None

    def replicas_of(self, port: int) -> int:
        try:
            with self.client(port) as client:
                return int(client.info("replication").get("connected_slaves", 0))
        except redis.exceptions.RedisError:
            return 0

    def kill(self, port: int) -> None:
        """SIGKILL a node or sentinel: no shutdown, nothing saved."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def pause(self, port: int) -> None:
        """Stop a process in its tracks (SIGSTOP): it holds its sockets and answers nothing."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(timeout=10)
        self.processes.clear()

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.password, socket_connect_timeout=0.5, socket_timeout=2
        )

    def sentinel_sees_group(self, port: int) -> bool:
        try:
            with self.client(port) as client:
                master = client.sentinel_master(self.MASTER_NAME)
        except redis.exceptions.RedisError:
            return False
        return int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= 2

    def _answers(self, port: int) -> bool:
        try:
            with self.client(port) as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)

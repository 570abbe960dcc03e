"""The product's processes, started as the Procfile starts them and always torn down.

Every process runs in a session (process group) of its own, so stopping it stops its
children too (Dramatiq forks its worker processes); a group that does not stop on SIGTERM is
SIGKILLed. CPU time and memory are read from /proc.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bench.common import BIN, ROOT, BenchError, wait_for
from shared.infra.config import Settings

PROCFILE = ROOT / "Procfile"
RECEIVER_APP = "services.webhook_receiver.app:app"
WORKER_MODULE = "services.workers"
DRAMATIQ_DEFAULT_THREADS = 8  # `dramatiq --help`: "(default: 8)"
READY = "Worker process is ready for action"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def procfile_command(kind: str) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and the argv of the Procfile's `kind` line."""
    for line in PROCFILE.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == kind:
            words = shlex.split(command)
            env: dict[str, str] = {}
            while words and (words[0] == "env" or ASSIGNMENT.fullmatch(words[0])):
                key, _, value = words.pop(0).partition("=")
                if key != "env":
                    env[key] = value
            return env, words
    raise BenchError(f"the Procfile has no {kind!r} line")


def _set_option(argv: list[str], names: tuple[str, ...], value: str) -> list[str]:
    """`argv` with the option's value replaced (or the option added)."""
    out = list(argv)
    for index, word in enumerate(out):
        if word in names and index + 1 < len(out):
            out[index + 1] = value
            return out
        for name in names:
            if word.startswith(name + "="):
                out[index] = f"{name}={value}"
                return out
    return [*out, names[0], value]


def _option(argv: list[str], names: tuple[str, ...]) -> str | None:
    for index, word in enumerate(argv):
        if word in names and index + 1 < len(argv):
            return argv[index + 1]
        for name in names:
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def _local_binary(argv: list[str]) -> list[str]:
    candidate = BIN / argv[0]
    return [str(candidate) if candidate.exists() else argv[0], *argv[1:]]


def receiver_command(port: int, app: str | None = None) -> tuple[dict[str, str], list[str]]:
    """The Procfile's `web` line on 127.0.0.1:`port`, serving `app` instead when given."""
    env, argv = procfile_command("web")
    if app is not None:
        argv = [app if word == RECEIVER_APP else word for word in argv]
    argv = _set_option(argv, ("--host",), "127.0.0.1")
    argv = _set_option(argv, ("--port",), str(port))
    return env, _local_binary(argv)


def worker_command(
    processes: int, module: str | None = None, threads: int | None = None
) -> tuple[dict[str, str], list[str]]:
    """The Procfile's `worker` line with `processes` processes, importing `module` instead of
    the workers package when given (the no-op floor), with the Procfile's other flags."""
    env, argv = procfile_command("worker")
    if module is not None:
        argv = [module if word == WORKER_MODULE else word for word in argv]
    argv = _set_option(argv, ("--processes", "-p"), str(processes))
    if threads is not None:
        argv = _set_option(argv, ("--threads", "-t"), str(threads))
    return env, _local_binary(argv)


def worker_threads(argv: list[str] | None = None) -> int:
    """Threads per worker process under the Procfile's flags."""
    if argv is None:
        argv = procfile_command("worker")[1]
    value = _option(argv, ("--threads", "-t"))
    return int(value) if value else DRAMATIQ_DEFAULT_THREADS


def describe(argv: list[str], env: dict[str, str]) -> str:
    """A command as a person would type it (binaries without the venv path)."""
    words = [Path(argv[0]).name, *argv[1:]]
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *map(shlex.quote, words)])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _handle: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def tree(self) -> list[int]:
        """This process and its descendants."""
        return [self.pid, *descendants(self.pid)]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole group, SIGKILL it if it does not end within `timeout`."""
        try:
            if self.popen.poll() is None:
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(self.pid, signal.SIGKILL)
                    self.popen.wait(timeout=10)
            # Children that outlived their parent are still in the group.
            _signal_group(self.pid, signal.SIGKILL)
        finally:
            self._handle.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(name: str, argv: list[str], env: dict[str, str], log: Path) -> Proc:
    handle = log.open("ab")
    try:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        handle.close()
        raise
    return Proc(name, popen, log, handle)


def child_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    from tests.helpers import process_env

    return process_env(settings, LOG_LEVEL="INFO", **extra)


@dataclass
class Receiver:
    proc: Proc
    url: str
    command: str


@contextmanager
def receiver(
    settings: Settings, log: Path, app: str | None = None, name: str = "receiver"
) -> Iterator[Receiver]:
    """The Procfile's `web` process (or the same uvicorn serving `app`), until the block ends."""
    from services.sandbox.serve import free_port

    port = free_port()
    env, argv = receiver_command(port, app)
    proc = spawn(name, argv, child_env(settings, env), log)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not proc.alive():
                raise BenchError(f"{name} exited:\n{proc.log_tail()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, f"{name} to start", poll=0.05)
        yield Receiver(proc, url, describe(_set_option(argv, ("--port",), "PORT"), env))
    finally:
        proc.stop()


@dataclass
class Workers:
    proc: Proc
    processes: int
    threads: int
    command: str

    def worker_pids(self) -> list[int]:
        """The processes doing the work (Dramatiq's forked children), not the supervisor."""
        return descendants(self.proc.pid) or [self.proc.pid]


@contextmanager
def workers(
    settings: Settings,
    log: Path,
    processes: int,
    module: str | None = None,
    threads: int | None = None,
    name: str = "worker",
    env: dict[str, str] | None = None,
) -> Iterator[Workers]:
    """The Procfile's `worker` line with `processes` processes (and `env` added to the
    environment), ready when the block starts."""
    procfile_env, argv = worker_command(processes, module, threads)
    proc = spawn(name, argv, child_env(settings, {**procfile_env, **(env or {})}), log)
    try:

        def ready() -> bool:
            if not proc.alive():
                raise BenchError(f"{name} exited:\n{proc.log_tail()}")
            return proc.log_text().count(READY) >= processes

        wait_for(ready, 60, f"{processes} {name} process(es) to boot", poll=0.05)
        yield Workers(proc, processes, worker_threads(argv), describe(argv, procfile_env))
    finally:
        proc.stop()


# /proc readers ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids`, in seconds (processes gone count as 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (`VmHWM`) of `pid` (Linux 4.0+); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class CpuMeter:
    """CPU used by some processes (and this one: the sandbox runs here) over an interval."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.cpu = cpu_seconds(pids)
        self.own = time.process_time()

    def cores(self) -> tuple[float, float]:
        """(cores used by the processes, cores used by this process) since the start."""
        wall = max(time.monotonic() - self.started, 1e-9)
        return (cpu_seconds(self.pids) - self.cpu) / wall, (time.process_time() - self.own) / wall

"""The Procfile's processes, run the way a Procfile runner runs them: each line read by honcho's
parser, its command run through the shell in a process group of its own (so `${PORT:-8000}`
and `env ...` mean what they mean in production), stopped or killed by signalling the group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from honcho.environ import parse_procfile

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    """Each process type of the Procfile and its command, as honcho reads them."""
    return dict(parse_procfile(path.read_text()).processes)


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie waiting for its reaper does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it ended while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


@dataclass
class ProcfileProcess:
    """One Procfile line, started any number of times; its output appends to two files."""

    name: str
    command: str
    env: dict[str, str]
    logs: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return self.logs / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.logs / f"{self.name}.stderr"

    def start(self) -> ProcfileProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(  # noqa: S602  (a Procfile line is a shell command)
                self.command,
                shell=True,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Signal the process group as honcho does; wait until every process in it has gone.
        Returns how long that took; fails after `timeout` seconds."""
        assert self.popen is not None
        began = time.monotonic()
        os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=timeout)  # reaped: only the rest of the group can answer now
        left = timeout - (time.monotonic() - began)
        wait_until(lambda: not group_alive(self.popen.pid), max(left, 0.0), f"{self.name} to stop")
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the whole group, if any of it is still there (clean-up after a failure)."""
        if self.popen is not None and group_alive(self.popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self) -> str:
        """Everything it wrote, stdout then stderr."""
        stdout = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return stdout + self.stderr()


class Procfile:
    """The processes of the Procfile, each started on demand with one environment."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.processes = {
            name: ProcfileProcess(name, command, env, logs)
            for name, command in procfile_commands().items()
        }

    def __getitem__(self, name: str) -> ProcfileProcess:
        return self.processes[name]

    def kill_all(self) -> None:
        for process in self.processes.values():
            process.kill()

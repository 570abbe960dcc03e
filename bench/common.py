"""What every benchmark shares: the environment, sizes, result rows, namespaces, statistics.

`prepare_environment()` must run before any project module is imported: the workers package
reads the environment (Redis URL, secret key, namespace) when it is first imported.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from shared.infra.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_ID = f"hbbench-{os.getpid()}-{secrets.token_hex(3)}"


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (a process did not start, work was lost)."""


def prepare_environment() -> None:
    """Settings for this process and the ones it starts, before any project import."""
    import warnings

    from cryptography.fernet import Fernet

    # tests.workers (reused for its sandbox helpers) imports starlette's TestClient.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["BRIDGE_REDIS_NAMESPACE"] = RUN_ID
    if not os.environ.get("BRIDGE_SECRET_KEY"):
        os.environ["BRIDGE_SECRET_KEY"] = Fernet.generate_key().decode()
    # This process logs warnings only; the receiver and the workers it starts log as in
    # production, JSON lines at INFO (bench.procs.child_env), into files.
    os.environ["LOG_FORMAT"] = "json"
    os.environ["LOG_LEVEL"] = "WARNING"


@dataclass(frozen=True)
class Size:
    """How much work each benchmark does; `tiny` runs each in seconds (the smoke test)."""

    name: str
    p1_seconds: float  # each measured wrk run
    p1_warmup_seconds: float
    p1_rounds: int  # floor and figure alternate this many times; the medians are reported
    p2_syncs: int  # patient events drained per worker setting
    p2_noop: int  # no-op messages drained per worker setting (the floor)
    clinics: int  # patients are spread over this many clinics (one Halaxy key each)
    p3_seconds: float  # at 20 events/s
    p3_floor_samples: int
    p4_backfill: int  # clinic A's patients
    p4_idle_seconds: float  # clinic B alone
    p4_busy_seconds: float  # clinic B while A backfills
    p4_rate: float  # clinic B's events per second
    p5_syncs: int
    p6_pdfs: int
    p6_pdf_bytes: int
    p4b_storm: int  # clinic A's live events, all at once
    p4b_idle_seconds: float  # clinic B alone
    p4b_busy_seconds: float  # clinic B during A's storm
    p4b_settle_seconds: float  # how long B's last events may take before they count as that
    p7_connections: int
    p7_events: int  # per round, spread over p7_connections or all for one connection
    p7_rounds: int  # one connection and many alternate this many times; medians reported
    p8_clinics: int  # one of them hangs
    p8_events_per_clinic: int
    p8_window_seconds: float  # the longest the other clinics' events are waited for


SIZES = {
    "tiny": Size(
        name="tiny",
        p1_seconds=1.0,
        p1_warmup_seconds=0.5,
        p1_rounds=1,
        p2_syncs=40,
        p2_noop=80,
        clinics=4,
        p3_seconds=1.5,
        p3_floor_samples=20,
        p4_backfill=100,
        p4_idle_seconds=1.5,
        p4_busy_seconds=2.0,
        p4_rate=4.0,
        p5_syncs=24,
        p6_pdfs=2,
        p6_pdf_bytes=2 * 1024 * 1024,
        p4b_storm=100,
        p4b_idle_seconds=1.0,
        p4b_busy_seconds=1.0,
        p4b_settle_seconds=20.0,
        p7_connections=10,
        p7_events=40,
        p7_rounds=1,
        p8_clinics=3,
        p8_events_per_clinic=8,
        p8_window_seconds=10.0,
    ),
    "full": Size(
        name="full",
        p1_seconds=10.0,
        p1_warmup_seconds=2.0,
        p1_rounds=3,
        p2_syncs=2000,
        p2_noop=4000,
        clinics=20,
        p3_seconds=15.0,
        p3_floor_samples=300,
        p4_backfill=2000,
        p4_idle_seconds=20.0,
        # Deferred backfill jobs come back about 60 s after the first ones ran: include that.
        p4_busy_seconds=75.0,
        p4_rate=4.0,
        p5_syncs=400,
        p6_pdfs=10,
        p6_pdf_bytes=19 * 1024 * 1024,
        p4b_storm=5000,
        p4b_idle_seconds=20.0,
        # A's deferred events come back from the delay queue about 35-60 s in: include that.
        p4b_busy_seconds=75.0,
        p4b_settle_seconds=90.0,
        p7_connections=200,
        # One connection's events must stay under the bridge's Halaxy budget (480 a minute a
        # key, shared/halaxy/rate_limit.py), or the floor would measure deferrals.
        p7_events=400,
        p7_rounds=3,
        p8_clinics=5,
        p8_events_per_clinic=80,
        p8_window_seconds=60.0,
    ),
}


@dataclass
class Row:
    """One line of the table: a figure, its floor from the same run, and the verdict."""

    id: str
    what: str
    figure: float
    floor: float
    unit: str
    floor_what: str
    target: str
    passed: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.figure / self.floor if self.floor else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "what": self.what,
            "figure": self.figure,
            "floor": self.floor,
            "ratio": self.ratio,
            "unit": self.unit,
            "floor_what": self.floor_what,
            "target": self.target,
            "passed": self.passed,
            "notes": self.notes,
        }


@dataclass
class Context:
    """What the runner hands each benchmark."""

    size: Size
    workdir: Path  # logs of the processes started, profiles
    profile: bool = False  # attach py-spy to the process under load (not a measured run)
    say: Callable[[str], None] = print

    def path(self, name: str) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir / name


def base_settings() -> Settings:
    from shared.infra.config import load_settings

    return load_settings()


_namespaces = iter(range(1, 1_000_000))


@contextmanager
def namespace(label: str) -> Iterator[Settings]:
    """Settings under a Redis key namespace of their own, removed afterwards."""
    from shared.infra.store import redis_client

    name = f"{RUN_ID}-{label}{next(_namespaces)}"
    settings = base_settings().model_copy(update={"redis_namespace": name})
    try:
        yield settings
    finally:
        client = redis_client(settings)
        try:
            purge(client, name)
        finally:
            client.close()


def purge(client: redis.Redis, name: str) -> None:
    """Delete the keys of namespace `name` (the bridge's and Dramatiq's)."""
    for pattern in (f"{name}:*", f"{name}-dramatiq:*"):
        batch: list[Any] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which `pct` percent of samples fall)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    """Poll `condition` until it returns something true; raise `BenchError` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return result


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def product_settings(settings: Settings, *aliases: str) -> str:
    """The values the product runs with for these settings (by env var name), for the notes:
    what a figure depends on, or that this build has no such setting."""
    fields = {
        (info.alias or name).upper(): name for name, info in type(settings).model_fields.items()
    }
    shown = []
    for alias in aliases:
        name = fields.get(alias.upper())
        if name is None:
            shown.append(f"{alias} (not in this build)")
        else:
            origin = "set" if alias in os.environ else "default"
            shown.append(f"{alias}={getattr(settings, name)} ({origin})")
    return ", ".join(shown)

"""Load generators: `wrk` (or an asyncio httpx stand-in without it) for throughput, a bulk
poster for filling queues, and an open-loop paced sender for latency."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import orjson

from bench.common import ROOT, BenchError, percentile
from bench.sandbox import Webhook

WRK_SCRIPT = ROOT / "bench" / "wrk_webhook.lua"
MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class Template:
    """A request whose body is `head + event id + tail`, the id unique per request."""

    path: str
    head: bytes
    tail: bytes
    authorization: str

    @classmethod
    def from_webhook(cls, hook: Webhook, placeholder: str) -> Template:
        head, found, tail = hook.body.partition(placeholder.encode())
        if not found:
            raise BenchError("the webhook body has no event id placeholder")
        return cls(hook.path, head, tail, hook.headers.get("Authorization", ""))


@dataclass(frozen=True)
class LoadResult:
    tool: str
    completed: int  # responses received
    ok: int  # 2xx among them
    errors: int  # non-2xx answers, timeouts, broken connections
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        """2xx answers per second."""
        return self.ok / self.seconds if self.seconds else 0.0


def hammer(
    base_url: str, template: Template, connections: int, seconds: float, prefix: str
) -> LoadResult:
    """As many requests as `connections` concurrent connections get answered in `seconds`."""
    if shutil.which("wrk"):
        return _wrk(base_url, template, connections, seconds, prefix)
    return asyncio.run(_async_hammer(base_url, template, connections, seconds, prefix))


def _wrk(
    base_url: str, template: Template, connections: int, seconds: float, prefix: str
) -> LoadResult:
    threads = max(1, min(2, os.cpu_count() or 1, connections))
    env = {
        **os.environ,
        "BENCH_PATH": template.path,
        "BENCH_BODY_HEAD": template.head.decode(),
        "BENCH_BODY_TAIL": template.tail.decode(),
        "BENCH_AUTHORIZATION": template.authorization,
        "BENCH_EVENT_PREFIX": prefix,
    }
    duration = max(1, round(seconds))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        base_url,
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARKER)]
    if result.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr[-500:]}")
    data = orjson.loads(lines[-1].removeprefix(MARKER))
    broken = data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"]
    return LoadResult(
        tool=f"wrk -t{threads} -c{connections}",
        completed=data["requests"],
        ok=data["requests"] - data["status_errors"],
        errors=data["status_errors"] + broken,
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


async def _async_hammer(
    base_url: str, template: Template, connections: int, seconds: float, prefix: str
) -> LoadResult:
    """The stand-in for wrk: `connections` asyncio tasks on one httpx client (slower: the
    generator, not the server, may be the limit)."""
    latencies: list[float] = []
    statuses: list[int] = []
    counter = itertools.count()
    headers = {"Content-Type": "application/json"}
    if template.authorization:
        headers["Authorization"] = template.authorization
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
        started = time.monotonic()
        deadline = started + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                body = template.head + f"{prefix}-{next(counter)}".encode() + template.tail
                sent = time.monotonic()
                try:
                    response = await client.post(template.path, content=body, headers=headers)
                    statuses.append(response.status_code)
                except httpx.HTTPError:
                    statuses.append(-1)
                latencies.append((time.monotonic() - sent) * 1000)

        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.monotonic() - started
    ok = sum(1 for s in statuses if 200 <= s < 300)
    return LoadResult(
        tool=f"httpx asyncio x{connections}",
        completed=sum(1 for s in statuses if s > 0),
        ok=ok,
        errors=len(statuses) - ok,
        seconds=elapsed,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=0.0),
    )


def post_all(base_url: str, hooks: Sequence[Webhook], concurrency: int = 16) -> None:
    """Post every webhook (`concurrency` at a time); each must be answered 202."""
    statuses = asyncio.run(_post_all(base_url, hooks, concurrency))
    refused = [s for s in statuses if s != 202]
    if refused:
        raise BenchError(f"{len(refused)} of {len(hooks)} webhooks refused: {refused[:5]}")


async def _post_all(base_url: str, hooks: Sequence[Webhook], concurrency: int) -> list[int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = list(reversed(hooks))
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def loop() -> None:
            while queue:
                hook = queue.pop()
                response = await client.post(hook.path, content=hook.body, headers=hook.headers)
                statuses.append(response.status_code)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return statuses


def send_paced(
    base_url: str,
    hooks: Sequence[Webhook],
    rate: float,
    answered_at: dict[str, float] | None = None,
) -> dict[str, float]:
    """Post the webhooks at `rate` a second, open loop (a slow answer does not delay the next
    send); returns when each patient's webhook was sent (time.monotonic), and fills
    `answered_at`, when given, with when each was accepted."""
    sent_at: dict[str, float] = {}
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with (
        httpx.Client(base_url=base_url, timeout=10, limits=limits) as client,
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="sender") as pool,
    ):

        def post(hook: Webhook) -> None:
            sent_at[hook.patient_id] = time.monotonic()
            response = client.post(hook.path, content=hook.body, headers=hook.headers)
            statuses.append(response.status_code)
            if answered_at is not None:
                answered_at[hook.patient_id] = time.monotonic()

        started = time.monotonic()
        futures = []
        for index, hook in enumerate(hooks):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(post, hook))
        for future in futures:
            future.result()
    refused = [s for s in statuses if s != 202]
    if refused:
        raise BenchError(f"{len(refused)} of {len(hooks)} webhooks refused: {refused[:5]}")
    return sent_at

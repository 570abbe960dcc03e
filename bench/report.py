"""The results table and docs/performance.md: the machine, the date, the table, how each figure
was measured, and the hand-written "What was profiled and changed" section, which is kept
from the previous file (between its markers) when the file is written again."""

from __future__ import annotations

import math
import os
import platform
from contextlib import suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import Row, fmt

KEEP_START = "<!-- kept by bench/report.py: start -->"
KEEP_END = "<!-- kept by bench/report.py: end -->"
DEFAULT_KEPT = "_Not written yet: profile with `python -m bench --profile`, then describe here._"
PACKAGES = ("uvicorn", "starlette", "dramatiq", "redis", "httpx", "pydantic", "structlog")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine(redis_url: str) -> dict[str, str]:
    """What the figures depend on: CPU, memory, Python, Redis, library versions, load."""
    import redis

    info: dict[str, str] = {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} cores",
        "RAM": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, decode_responses=True)
    try:
        server: dict[str, Any] = client.info("server")
        persistence: dict[str, Any] = client.info("persistence")
        aof = "AOF on" if persistence.get("aof_enabled") else "AOF off"
        with suppress(redis.RedisError):  # CONFIG may be disabled on a managed Redis
            aof += f", appendfsync {client.config_get('appendfsync').get('appendfsync', '?')}"
        host = redis_url.split("@")[-1].split("//")[-1].split("/")[0]
        info["Redis"] = f"{server.get('redis_version')} ({aof}) at {host}"
    except redis.RedisError as exc:  # the table is still worth writing
        info["Redis"] = f"unknown ({type(exc).__name__})"
    finally:
        client.close()
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    info["Libraries"] = ", ".join(versions)
    load = os.getloadavg()
    info["Load average at start"] = f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"
    return info


def _ratio(row: Row) -> str:
    return "n/a" if math.isnan(row.ratio) else f"{row.ratio:.2f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | figure | value | floor | ratio | target | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.id} | {row.what} | {fmt(row.figure)} {row.unit} | {fmt(row.floor)} "
            f"{row.unit} ({row.floor_what}) | {_ratio(row)} | {row.target} | "
            f"{'pass' if row.passed else '**FAIL**'} |"
        )
    return "\n".join(lines)


def console_table(rows: list[Row]) -> str:
    lines = [f"{'#':<17}{'figure':<44}{'value':>14}{'floor':>14}{'ratio':>8}  target / result"]
    for row in rows:
        lines.append(
            f"{row.id:<17}{row.what[:43]:<44}{fmt(row.figure) + ' ' + row.unit:>14}"
            f"{fmt(row.floor) + ' ' + row.unit:>14}{_ratio(row):>8}  {row.target} "
            f"{'pass' if row.passed else 'FAIL'}"
        )
    return "\n".join(lines)


def kept_section(path: Path) -> str:
    """The hand-written section of an existing file, or a placeholder."""
    if path.exists():
        text = path.read_text()
        start, end = text.find(KEEP_START), text.find(KEEP_END)
        if 0 <= start < end:
            return text[start + len(KEEP_START) : end].strip("\n")
    return DEFAULT_KEPT


def document(
    rows: list[Row],
    info: dict[str, str],
    size: str,
    descriptions: dict[str, str],
    errors: list[str],
    kept: str,
    elapsed_s: float,
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    passed = sum(1 for r in rows if r.passed)
    parts = [
        "# Performance",
        "",
        f"Written by `make bench` (`python -m bench --size {size}`) on {now}, in "
        f"{elapsed_s / 60:.1f} minutes. Every figure is measured together with its floor, in "
        "the same run on the same machine, and judged by their ratio or by an absolute "
        "target as issues 7 and 21 set them; the machine is shared and noisy, so compare ratios "
        "between runs, not raw figures. Timings are never asserted in tests "
        "(`tests/test_bench_smoke.py` only checks that each benchmark runs at a tiny size).",
        "",
        "## Machine",
        "",
        *[f"- **{k}**: {v}" for k, v in info.items()],
        "",
        f"## Results ({passed} of {len(rows)} targets met)",
        "",
        table(rows),
        "",
    ]
    if errors:
        parts += ["**Benchmarks that did not finish:**", "", *[f"- {e}" for e in errors], ""]
    parts += ["### Notes per figure", ""]
    for row in rows:
        if row.notes:
            parts.append(f"- **{row.id} {row.what}**: " + "; ".join(row.notes) + ".")
    parts += ["", "## How each figure is measured", ""]
    for text in descriptions.values():
        title, _, body = text.strip().partition("\n")
        parts += [f"**{title.strip()}** " + " ".join(body.split()), ""]
    parts += [
        "## What was profiled and changed",
        "",
        KEEP_START,
        kept,
        KEEP_END,
        "",
    ]
    return "\n".join(parts)

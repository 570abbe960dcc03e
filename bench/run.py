"""`python -m bench [--size tiny|full] [--only P1,P3] [--doc PATH] [--json PATH] [--profile]`

Runs the benchmarks of issues 7 and 21 against the Redis at REDIS_URL (`make bench` provides one),
prints the table, and writes docs/performance.md (unless `--doc -`). With `--profile` it
instead runs P1, P2 and P5 with py-spy attached to the receiver or the worker and prints
where their time goes (the figures of a profiled run are not written anywhere: py-spy
competes for the CPU).
"""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench.common import ROOT, RUN_ID, SIZES, BenchError, Context, Row, prepare_environment

BENCHMARKS = {
    "P1": "p1_receiver",
    "P2": "p2_throughput",
    "P3": "p3_latency",
    "P4": "p4_fairness",
    "P4b": "p4b_storm",
    "P5": "p5_upstream_latency",
    "P6": "p6_pdf_memory",
    "P7": "p7_many_connections",
    "P8": "p8_hanging_platform",
}
PROFILED = ("P1", "P2", "P5")
DEFAULT_DOC = ROOT / "docs" / "performance.md"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[2])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark ids (default: all), e.g. P1,P3"
    )
    parser.add_argument(
        "--doc",
        default=str(DEFAULT_DOC),
        help="the Markdown file to write ('-' for none; default docs/performance.md)",
    )
    parser.add_argument("--json", default="", help="also write the rows as JSON to this file")
    parser.add_argument(
        "--workdir", default="", help="where logs and profiles go (default build/bench/<time>)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile P1, P2, P5 with py-spy (no doc written)"
    )
    return parser.parse_args(argv)


def _failed_row(benchmark: str, error: str) -> Row:
    return Row(
        id=benchmark,
        what="did not finish",
        figure=math.nan,
        floor=math.nan,
        unit="",
        floor_what="",
        target="",
        passed=False,
        notes=[error],
    )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # On SIGTERM, unwind like Ctrl-C so every process started is stopped (finally blocks).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    prepare_environment()  # before the benchmarks import the workers package
    import orjson

    from bench import report
    from shared.infra.config import load_settings

    by_id = {b.upper(): b for b in BENCHMARKS}
    asked = [b.strip() for b in args.only.split(",") if b.strip()]
    selected = [by_id.get(b.upper(), b) for b in asked] or list(BENCHMARKS)
    if args.profile and not args.only:
        selected = list(PROFILED)
    unknown = [b for b in selected if b not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = Path(args.workdir) if args.workdir else ROOT / "build" / "bench" / stamp
    ctx = Context(size=SIZES[args.size], workdir=workdir, profile=args.profile)
    redis_url = load_settings().redis_url
    info = report.machine(redis_url)
    print(f"bench: size {args.size}, namespace {RUN_ID}, logs in {workdir}", flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    errors: list[str] = []
    descriptions: dict[str, str] = {}
    for benchmark in selected:
        module: ModuleType = importlib.import_module(f"bench.{BENCHMARKS[benchmark]}")
        descriptions[benchmark] = module.__doc__ or ""
        print((module.__doc__ or benchmark).splitlines()[0], flush=True)
        began = time.monotonic()
        try:
            produced: list[Row] = module.run(ctx)
        except (BenchError, Exception) as exc:
            traceback.print_exc()
            errors.append(f"{benchmark}: {type(exc).__name__}: {exc}")
            produced = [_failed_row(benchmark, f"{type(exc).__name__}: {exc}")]
        rows += produced
        print(f"{benchmark}: done in {time.monotonic() - began:.0f} s", flush=True)
        for row in produced:
            print("  " + report.console_table([row]).splitlines()[1], flush=True)
    elapsed = time.monotonic() - started
    print("\n" + report.console_table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(orjson.dumps([r.as_dict() for r in rows]).decode())
    if args.doc != "-" and not args.profile:
        doc = Path(args.doc)
        text = report.document(
            rows, info, args.size, descriptions, errors, report.kept_section(doc), elapsed
        )
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(text)
        print(f"bench: wrote {doc}", flush=True)
    print(f"bench: {elapsed / 60:.1f} minutes", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

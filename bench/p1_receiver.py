"""P1: accepted Halaxy webhooks per second through one receiver process.

The receiver is the Procfile's `web` line (one uvicorn process) on the real Redis; `wrk` at 64
connections posts Halaxy notification Bundles for one connection, each with an event id of its
own (the Lua script makes them), so every request is authenticated, parsed, checked against
the dedup set and durably queued. Floor: the same uvicorn command serving a bare Starlette
route that reads the body and answers 202. Floor and figure alternate, each after a warm-up;
the medians are reported. Every accepted event is checked to be on the queue. The p99 row's
notes record its margin under the 25 ms line (or how far over it is), and each round's p99.
"""

from __future__ import annotations

from statistics import median

from bench.common import Context, Row, fmt, namespace
from bench.drain import LANES
from bench.loadgen import LoadResult, Template, hammer
from bench.procs import CpuMeter, Receiver, receiver
from bench.profiling import profiled
from bench.sandbox import add_clinics, running_sandbox, webhook
from shared.infra.store import Keys, redis_client

ID = "P1"
CONNECTIONS = 64
PLACEHOLDER = "@@EVENT@@"
RATIO_TARGET = 0.25
P99_TARGET_MS = 25.0


def _measure(
    ctx: Context, target: Receiver, template: Template, label: str, cores: list[float]
) -> LoadResult:
    size = ctx.size
    hammer(target.url, template, CONNECTIONS, size.p1_warmup_seconds, f"{label}-warm")
    meter = CpuMeter([target.proc.pid])
    result = hammer(target.url, template, CONNECTIONS, size.p1_seconds, label)
    used, _ = meter.cores()
    cores.append(used)
    ctx.say(
        f"  {label}: {result.rate:,.0f}/s ok, {result.errors} errors, p50 {result.p50_ms:.1f} ms,"
        f" p99 {result.p99_ms:.1f} ms, process CPU {used:.2f} cores ({result.tool})"
    )
    return result


def run(ctx: Context) -> list[Row]:
    with namespace("p1") as settings, running_sandbox() as sandbox:
        [connection] = add_clinics(settings, sandbox, 1, "P1 clinic")
        template = Template.from_webhook(webhook(connection, "1001", PLACEHOLDER), PLACEHOLDER)
        floors: list[LoadResult] = []
        figures: list[LoadResult] = []
        floor_cores: list[float] = []
        figure_cores: list[float] = []
        with (
            receiver(settings, ctx.path("p1-floor.log"), app="bench.floor_app:app") as floor,
            receiver(settings, ctx.path("p1-receiver.log")) as real,
        ):
            for number in range(1 if ctx.profile else ctx.size.p1_rounds):
                floors.append(_measure(ctx, floor, template, f"floor{number}", floor_cores))
                with profiled(ctx, real.proc.pid, "receiver-P1"):
                    figures.append(_measure(ctx, real, template, f"receiver{number}", figure_cores))
            command = real.command
        client = redis_client(settings)
        try:
            namespace_ = Keys(settings.redis_namespace).dramatiq_namespace()
            queued = sum(int(client.hlen(f"{namespace_}:{lane}.msgs")) for lane in LANES)
        finally:
            client.close()
        # wrk counts answers below 400 as successes; the receiver answers 202 or an error.
        accepted = sum(r.ok for r in figures)  # measured runs only; warm-ups queued more
    rate, floor_rate = median([r.rate for r in figures]), median([r.rate for r in floors])
    p99, floor_p99 = median([r.p99_ms for r in figures]), median([r.p99_ms for r in floors])
    errors = sum(r.errors for r in figures)
    common = [
        f"`{command}`, {figures[0].tool}, {len(figures)} x {ctx.size.p1_seconds:.0f} s runs "
        f"alternating with the floor's",
    ]
    rate_row = Row(
        id=ID,
        what="accepted webhooks/s, one receiver process",
        figure=rate,
        floor=floor_rate,
        unit="req/s",
        floor_what="bare Starlette route reading the body, 202",
        target=f"ratio ≥ {RATIO_TARGET}",
        passed=rate / floor_rate >= RATIO_TARGET and errors == 0,
        notes=[
            *common,
            f"errors (non-2xx or broken) in measured runs: {errors}; events on the queue "
            f"after all runs: {queued:,} (≥ {accepted:,} accepted in the measured runs)",
            f"p50 {fmt(median([r.p50_ms for r in figures]))} ms "
            f"(floor {fmt(median([r.p50_ms for r in floors]))} ms)",
            f"the receiver process used {median(figure_cores):.2f} cores "
            f"({median(figure_cores) / rate * 1000:.2f} ms of CPU a webhook), the floor's "
            f"{median(floor_cores):.2f} ({median(floor_cores) / floor_rate * 1000:.3f} ms a "
            "request); 2 cores shared with wrk and Redis",
        ],
    )
    p99_row = Row(
        id=ID,
        what="p99 latency at 64 connections",
        figure=p99,
        floor=floor_p99,
        unit="ms",
        floor_what="the floor route's p99",
        target=f"≤ {P99_TARGET_MS:.0f} ms",
        passed=p99 <= P99_TARGET_MS,
        notes=[
            f"p99 {fmt(p99)} ms, margin {fmt(P99_TARGET_MS - p99)} ms / "
            f"{P99_TARGET_MS / p99:.2f} x under {P99_TARGET_MS:.0f} ms"
            if p99 <= P99_TARGET_MS
            else f"p99 {fmt(p99)} ms, {fmt(p99 - P99_TARGET_MS)} ms over {P99_TARGET_MS:.0f} ms",
            f"the rounds' p99s {', '.join(fmt(r.p99_ms) for r in figures)} ms",
            f"max {fmt(max(r.max_ms for r in figures))} ms",
        ],
    )
    return [rate_row, p99_row]

"""P5: patient syncs per second with 100 ms upstream latency per call, one worker process.

As P2 with one worker process, except that every sandbox Halaxy API call and every sandbox
Physitrack call answers after 100 ms (token requests excepted: a token serves 15 minutes).
Floor: the latency-bound ideal for the worker's concurrency, threads / (calls per sync x
0.1 s), with the calls per sync counted from the sandbox's request logs. Target: at least 50
syncs a second per process, which only overlapping I/O can reach.
"""

from __future__ import annotations

from bench.common import Context, Row, namespace
from bench.drain import sync_drain
from bench.sandbox import running_sandbox

ID = "P5"
LATENCY = 0.1
TARGET = 50.0


def run(ctx: Context) -> list[Row]:
    syncs = ctx.size.p5_syncs
    with (
        namespace("p5") as settings,
        running_sandbox(halaxy_latency=LATENCY, platform_latency=LATENCY) as sandbox,
    ):
        drain = sync_drain(
            ctx, settings, sandbox, syncs, 1, ctx.path("p5-worker.log"), profile_as="worker-P5"
        )
        halaxy_calls = sum(
            1 for r in sandbox.halaxy.requests if not r.path.endswith("/oauth/token")
        )
        platform_calls = len(sandbox.physitrack.requests)
    calls_per_sync = (halaxy_calls + platform_calls) / syncs
    threads = drain.workers.threads
    ideal = threads / (calls_per_sync * LATENCY)
    needed = int(TARGET * calls_per_sync * LATENCY) + 1
    return [
        Row(
            id=ID,
            what="syncs/s, 100 ms per upstream call, 1 process",
            figure=drain.rate,
            floor=ideal,
            unit="/s",
            floor_what=f"{threads} threads / ({calls_per_sync:.2f} calls x 0.1 s)",
            target=f"≥ {TARGET:.0f} /s",
            passed=drain.rate >= TARGET,
            notes=[
                f"`{drain.workers.command}`: {threads} threads; {syncs} syncs in "
                f"{drain.seconds:.1f} s; {halaxy_calls} Halaxy and {platform_calls} Physitrack "
                f"calls; worker CPU {drain.worker_cores:.2f} cores",
                f"with {calls_per_sync:.2f} calls of 100 ms per sync, {TARGET:.0f} syncs/s needs "
                f"at least {needed} threads per process",
            ],
        )
    ]

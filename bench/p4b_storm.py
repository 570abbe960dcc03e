"""P4b: clinic B's live-event latency while clinic A sends a storm of 5,000 live events.

The real receiver process and one worker process (the Procfile's lines), with the product's
default settings (the per-connection thread share and the storm lane's threshold included:
their values are in the notes); every sandbox Halaxy call takes 20 ms, as in P4, and the
sandbox enforces Halaxy's 500 requests a minute per key. Clinic B sends patient-created
webhooks open loop at a steady rate; each latency runs from the moment the receiver accepted
the webhook (its 202) to the client's creation in the sandbox Physitrack. Floor: B's p95 with
A idle, measured first in the same run. Then clinic A posts patient-created webhooks for
5,000 fresh patients as fast as the receiver takes them (a bulk import in Halaxy), while B
keeps sending for a fixed stretch, at full size long enough (75 s) to include the moment when
A's events deferred by its Halaxy budget (480 requests a minute a key) come back from the delay
queue; B's events still not done a while after B's last send count as the time they have
waited (a lower bound). Target: B's p95 during A's storm at most twice
B's idle p95.
"""

from __future__ import annotations

import threading
import time

from bench.common import BenchError, Context, Row, fmt, namespace, percentile, product_settings
from bench.latency import bounded_latencies, warm_up
from bench.loadgen import post_all, send_paced
from bench.procs import receiver, workers
from bench.sandbox import add_clinics, add_patients, running_sandbox, spread, timed
from shared.infra.config import Settings
from shared.infra.store import Keys, redis_client

ID = "P4b"
HALAXY_LATENCY = 0.02
RATIO_TARGET = 2.0
STORM_CONCURRENCY = 16
QUEUES = ("live", "live.DQ", "storm", "storm.DQ", "bulk")  # .DQ: Dramatiq's delay queues
SETTINGS = ("BRIDGE_STORM_EVENTS_PER_MINUTE", "BRIDGE_CONNECTION_THREAD_SHARE")


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    rate = size.p4_rate
    idle_ids = [f"B-idle-{n}" for n in range(max(5, round(rate * size.p4b_idle_seconds)))]
    busy_ids = [f"B-busy-{n}" for n in range(max(5, round(rate * size.p4b_busy_seconds)))]
    storm_ids = [f"A-storm-{n}" for n in range(size.p4b_storm)]
    with namespace("p4b") as settings, running_sandbox(halaxy_latency=HALAXY_LATENCY) as sandbox:
        clinic_a, clinic_b = add_clinics(settings, sandbox, 2, "P4b clinic")
        add_patients(sandbox, ["A-warm", "B-warm", *idle_ids, *busy_ids, *storm_ids])
        storm_hooks = spread([clinic_a], storm_ids)
        with (
            receiver(settings, ctx.path("p4b-receiver.log")) as web,
            workers(settings, ctx.path("p4b-worker.log"), processes=1) as running,
        ):
            warm_up(web.url, sandbox, spread([clinic_a, clinic_b], ["A-warm", "B-warm"]))
            idle_hooks = spread([clinic_b], idle_ids)
            accepted: dict[str, float] = {}
            send_paced(web.url, idle_hooks, rate, answered_at=accepted)
            idle, idle_missing = bounded_latencies(
                sandbox, idle_hooks, accepted, size.p4b_settle_seconds
            )
            if idle_missing:
                raise BenchError(f"{idle_missing} of B's idle events were not done")
            ctx.say(f"  B alone: p95 {percentile(idle, 95) * 1000:.0f} ms")

            storm_errors: list[BaseException] = []
            storm_took: list[float] = []

            def storm() -> None:
                began = time.monotonic()
                try:
                    post_all(web.url, storm_hooks, concurrency=STORM_CONCURRENCY)
                except BaseException as exc:  # reported below, on the main thread
                    storm_errors.append(exc)
                storm_took.append(time.monotonic() - began)

            storm_thread = threading.Thread(target=storm, name="storm", daemon=True)
            storm_started = time.monotonic()
            storm_thread.start()
            busy_hooks = spread([clinic_b], busy_ids)
            send_paced(web.url, busy_hooks, rate, answered_at=accepted)
            storm_thread.join()
            if storm_errors:
                raise BenchError(f"A's storm was not accepted: {storm_errors[0]}")
            queued = _queued(settings)
            busy, busy_missing = bounded_latencies(
                sandbox, busy_hooks, accepted, size.p4b_settle_seconds
            )
            ctx.say(
                f"  B during A's storm: p95 {percentile(busy, 95) * 1000:.0f} ms"
                f" ({busy_missing} not done)"
            )
            written = timed(sandbox).written_at
            storm_done = sum(1 for p in storm_ids if p in written)
            elapsed = time.monotonic() - storm_started
            log = running.proc.log_text()
            deferred = log.count('"job.deferred"')
            command = running.command
    busy_p95, idle_p95 = percentile(busy, 95) * 1000, percentile(idle, 95) * 1000
    notes = [
        f"B at {rate:.0f} events/s: {len(idle)} events alone, {len(busy)} during A's storm; "
        f"receiver and `{command}`; Halaxy calls take {HALAXY_LATENCY * 1000:.0f} ms; "
        + product_settings(settings, *SETTINGS),
        f"B p50 {fmt(percentile(busy, 50) * 1000)} ms during the storm vs "
        f"{fmt(percentile(idle, 50) * 1000)} ms alone, max {fmt(max(busy) * 1000)} ms",
        f"A: {len(storm_ids):,} webhooks accepted in {storm_took[0]:.1f} s; right after, the "
        f"queues held {queued}; {storm_done:,} of A's patients synced {elapsed:.0f} s after the "
        f"storm began, {deferred:,} job deferrals logged",
    ]
    if busy_missing:
        notes.append(
            f"{busy_missing} of B's {len(busy)} storm-time events were not done "
            f"{size.p4b_settle_seconds:.0f} s after B's last send: counted as the time they "
            "had waited, so the p95 is a lower bound"
        )
    return [
        Row(
            id=ID,
            what="clinic B live p95 during A's storm of live events",
            figure=busy_p95,
            floor=idle_p95,
            unit="ms",
            floor_what="B's p95 alone, same run",
            target=f"ratio ≤ {RATIO_TARGET:.0f}",
            passed=busy_p95 <= RATIO_TARGET * idle_p95,
            notes=notes,
        )
    ]


def _queued(settings: Settings) -> str:
    """Messages not yet done on each queue, for the notes."""
    client = redis_client(settings)
    try:
        prefix = Keys(settings.redis_namespace).dramatiq_namespace()
        counts = {q: int(client.hlen(f"{prefix}:{q}.msgs")) for q in QUEUES}
    finally:
        client.close()
    return ", ".join(f"{count:,} on {queue}" for queue, count in counts.items())

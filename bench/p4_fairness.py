"""P4: fairness: clinic B's live-event latency while clinic A backfills 2,000 patients.

The real receiver process and one worker process (the Procfile's lines); every sandbox Halaxy
call takes 20 ms (as in the in-process fairness test) and the sandbox enforces Halaxy's 500
requests a minute per key. Clinic B sends patient-created webhooks open loop at a steady rate
and each latency runs from the send to the client's creation in the sandbox Physitrack. Floor:
B's latencies with A idle, measured first. Then, with the worker stopped, A's first sweep is
run as the scheduler runs it (it pages through A's patients and queues each as bulk work: all
2,000 at once; beside a running worker, A's own bulk syncs could spend the Halaxy budget its
page reads need, and the sweep would go on only at later ticks), the worker is started again
and B sends for the
same kind of stretch, long enough at full size to include the moment, about a minute in, when
A's jobs deferred by its rate-limit budget come back from the delay queue. Target: B's p95
with A backfilling at most twice B's p95 with A idle.
"""

from __future__ import annotations

import time

from bench.common import BenchError, Context, Row, fmt, namespace, percentile
from bench.latency import send_and_time, warm_up
from bench.procs import receiver, workers
from bench.sandbox import add_clinics, add_patients, running_sandbox, spread, timed
from services.scheduler.loop import Scheduler
from services.workers.runtime import WorkerRuntime
from shared.infra.config import Settings
from shared.patients.reconcile import Sweep, SweepLog
from tests.test_chaos_inprocess import max_per_minute

ID = "P4"
HALAXY_LATENCY = 0.02
RATIO_TARGET = 2.0
SWEEP_SECONDS = 60.0


def _backfill(settings: Settings, connection_id: str) -> Sweep | None:
    """A's first sweep, turn after turn as the scheduler's ticks take it (without their
    pauses), until it has queued every patient."""
    runtime = WorkerRuntime(settings)
    try:
        scheduler = Scheduler(settings, runtime)
        sweeps = SweepLog(runtime.redis, runtime.keys)
        deadline = time.monotonic() + SWEEP_SECONDS
        while (sweep := sweeps.last(connection_id)) is None and time.monotonic() < deadline:
            scheduler.sweep_if_due(connection_id)
        return sweep
    finally:
        runtime.close()


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    rate = size.p4_rate
    idle_ids = [f"B-idle-{n}" for n in range(max(5, round(rate * size.p4_idle_seconds)))]
    busy_ids = [f"B-busy-{n}" for n in range(max(5, round(rate * size.p4_busy_seconds)))]
    backfill_ids = [f"A{n}" for n in range(size.p4_backfill)]
    with namespace("p4") as settings, running_sandbox(halaxy_latency=HALAXY_LATENCY) as sandbox:
        clinic_a, clinic_b = add_clinics(settings, sandbox, 2, "P4 clinic")
        # The fake Halaxy's patients are every clinic's: B's busy-phase patients are added only
        # after A's sweep has listed its patients, so A's backfill does not create them first.
        add_patients(sandbox, ["B-warm", *idle_ids, *backfill_ids])
        with receiver(settings, ctx.path("p4-receiver.log")) as web:
            with workers(settings, ctx.path("p4-worker-idle.log"), processes=1):
                warm_up(web.url, sandbox, spread([clinic_b], ["B-warm"]))
                idle = send_and_time(web.url, sandbox, spread([clinic_b], idle_ids), rate)
            ctx.say(f"  B with A idle: p95 {percentile(idle, 95) * 1000:.0f} ms")
            sweep = _backfill(settings, clinic_a.id)
            if sweep is None or sweep.patients_queued < len(backfill_ids):
                raise BenchError(f"the backfill of clinic A did not queue its patients: {sweep}")
            add_patients(sandbox, busy_ids)
            with workers(settings, ctx.path("p4-worker.log"), processes=1) as running:
                busy = send_and_time(web.url, sandbox, spread([clinic_b], busy_ids), rate)
                ctx.say(f"  B with A backfilling: p95 {percentile(busy, 95) * 1000:.0f} ms")
                written = timed(sandbox).written_at
                backfilled = sum(1 for patient_id in backfill_ids if patient_id in written)
                deferred = running.proc.log_text().count('"job.deferred"')
                command = running.command
        a_requests = [
            r.received_at
            for r in sandbox.halaxy.requests
            if r.client_id == clinic_a.halaxy_client_id
        ]
    busy_p95, idle_p95 = percentile(busy, 95) * 1000, percentile(idle, 95) * 1000
    return [
        Row(
            id=ID,
            what="clinic B p95 while A backfills",
            figure=busy_p95,
            floor=idle_p95,
            unit="ms",
            floor_what="B's p95 with A idle",
            target=f"ratio ≤ {RATIO_TARGET:.0f}",
            passed=busy_p95 <= RATIO_TARGET * idle_p95,
            notes=[
                f"B at {rate:.0f} events/s: {len(idle)} events idle, {len(busy)} during the "
                f"backfill; receiver and `{command}`; Halaxy calls take "
                f"{HALAXY_LATENCY * 1000:.0f} ms",
                f"B p50 {fmt(percentile(busy, 50) * 1000)} ms busy vs "
                f"{fmt(percentile(idle, 50) * 1000)} ms idle, max "
                f"{fmt(max(busy) * 1000)} ms busy",
                f"A: {backfilled:,} of {len(backfill_ids):,} patients synced meanwhile, "
                f"{deferred:,} job deferrals logged, at most {max_per_minute(a_requests)} "
                "Halaxy requests in any minute",
            ],
        )
    ]

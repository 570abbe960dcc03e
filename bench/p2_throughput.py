"""P2: patient syncs per second end to end against the ceiling, with one and two worker processes.

Patient-created webhooks for fresh patients, spread over several clinics (one Halaxy key each,
so Halaxy's 500 requests a minute per key is not what limits), are accepted by the real
receiver process; then the Procfile's `worker` line is started with `--processes 1` or `2`
and times the drain from the first fetch to the last acknowledgement, each patient fetched
from the sandbox Halaxy and created in the sandbox Physitrack (both answering at once, served
by this process). Every patient is checked to be in the platform. Floor, the ceiling: the same
worker settings draining messages of the same shape through the product's broker and
middleware whose actor does only what one sync sends (`dramatiq bench.ceiling_worker`):
first a steady-state sync is recorded in this run (`bench.recording_worker`: every Redis
command and pipeline and every HTTP request a worker thread sends for the message, less what
the same middleware sends for a no-op message), then the ceiling replays those Redis
operations, with their arguments, on a copy of the recording's keys, and those HTTP requests
against a server answering with the recorded answers. The ratio is the share of the worker's
capacity the bridge's own work (decryption, mapping, domain logic, logs, metrics) leaves.
Targets: syncs/s at least 0.7 of the ceiling; two worker processes at least 1.7 times one
(same threads each). Issue 7's target (0.25 of a no-op message's rate), which no sync on this
stack could meet, is replaced; the no-op drain is still run and given in the notes, and, with
one process, syncs and no-ops again on one thread, for their own CPU.
"""

from __future__ import annotations

import os

from bench.ceiling import Plan, ceiling_drain, record_sync
from bench.common import Context, Row, namespace
from bench.drain import Drain, noop_drain, sync_drain
from bench.sandbox import running_sandbox

ID = "P2"
CEILING_TARGET = 0.7
SCALING_TARGET = 1.7
ISSUE_7_NOOP_TARGET = 0.25  # the old target, for the notes


def _cpu_ms(drain: Drain) -> float:
    return drain.worker_cores * drain.seconds / drain.messages * 1000


def _notes(kind: str, drain: Drain) -> str:
    return (
        f"{kind}: {drain.messages:,} in {drain.seconds:.2f} s, worker processes used "
        f"{drain.worker_cores:.2f} cores ({_cpu_ms(drain):.2f} ms of CPU each), the bench "
        f"process {drain.own_cores:.2f}"
    )


def _syncs(
    ctx: Context,
    syncs: int,
    processes: int,
    log: str,
    threads: int | None = None,
    profile_as: str = "",
) -> Drain:
    with namespace("p2") as settings, running_sandbox() as sandbox:
        return sync_drain(
            ctx,
            settings,
            sandbox,
            syncs,
            processes,
            ctx.path(log),
            threads=threads,
            profile_as=profile_as,
        )


def _one_thread(ctx: Context) -> str:
    """A sync's CPU against a no-op's, both on one thread of one process: what is left of
    each when no other thread contends for the interpreter."""
    size = ctx.size
    noop = noop_drain(ctx, size.p2_noop // 4, 1, ctx.path("p2-noop-1-thread.log"), threads=1)
    sync = _syncs(ctx, size.p2_syncs // 2, 1, "p2-worker-1-thread.log", threads=1)
    ctx.say(f"  one thread: {_cpu_ms(sync):.2f} ms of CPU a sync, {_cpu_ms(noop):.2f} a no-op")
    note = (
        f"one thread, nothing to contend with: a sync used {_cpu_ms(sync):.2f} ms of CPU, "
        f"a no-op message {_cpu_ms(noop):.2f} ms"
    )
    if _cpu_ms(noop) > 0:  # CPU is counted in clock ticks: a tiny drain may show none
        note += f", {_cpu_ms(sync) / _cpu_ms(noop):.1f} times as much"
    return note


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    plan: Plan = record_sync(ctx)
    ctx.say(f"  one sync sends: {plan.summary()}")
    rows = []
    rates: dict[int, Drain] = {}
    for processes in (1, 2):
        noop = noop_drain(ctx, size.p2_noop, processes, ctx.path(f"p2-noop-{processes}.log"))
        ctx.say(f"  no-ops, {processes} process(es): {noop.rate:,.0f} messages/s")
        ceiling = ceiling_drain(
            ctx, plan, size.p2_syncs, processes, ctx.path(f"p2-ceiling-{processes}.log")
        )
        ctx.say(f"  ceiling, {processes} process(es): {ceiling.rate:,.0f} messages/s")
        figure = _syncs(
            ctx,
            size.p2_syncs,
            processes,
            f"p2-worker-{processes}.log",
            profile_as=f"worker-P2-{processes}proc",
        )
        rates[processes] = figure
        ctx.say(f"  figure, {processes} process(es): {figure.rate:,.0f} syncs/s")
        notes = [
            f"`{figure.workers.command}`, {figure.workers.threads} threads each",
            _notes("syncs", figure),
            _notes("ceiling messages", ceiling),
        ]
        if processes == 1:
            notes.append(f"one recorded sync sends {plan.summary()}")
        notes.append(
            f"issue 7's floor, no-op messages (`dramatiq bench.noop_worker`): {noop.rate:,.0f}/s, "
            f"syncs {figure.rate / noop.rate:.2f} of it (its old target {ISSUE_7_NOOP_TARGET}), "
            f"the ceiling {ceiling.rate / noop.rate:.2f}; " + _notes("no-ops", noop)
        )
        if processes == 1:
            notes.append(_one_thread(ctx))
        plural = "es" if processes > 1 else ""
        rows.append(
            Row(
                id=f"{ID} (vs ceiling)",
                what=f"patient syncs/s, {processes} worker process{plural}",
                figure=figure.rate,
                floor=ceiling.rate,
                unit="/s",
                floor_what="ceiling: the sync's own Redis and HTTP operations alone, same settings",
                target=f"ratio ≥ {CEILING_TARGET}",
                passed=figure.rate / ceiling.rate >= CEILING_TARGET,
                notes=notes,
            )
        )
    one, two = rates[1], rates[2]
    rows.append(
        Row(
            id=f"{ID} (scaling)",
            what="patient syncs/s, 2 worker processes vs 1",
            figure=two.rate,
            floor=one.rate,
            unit="/s",
            floor_what="syncs/s with 1 worker process, same threads",
            target=f"ratio ≥ {SCALING_TARGET}",
            passed=two.rate / one.rate >= SCALING_TARGET,
            notes=[
                f"worker processes used {one.worker_cores:.2f} cores with one process, "
                f"{two.worker_cores:.2f} with two; the bench process (sandbox, watcher) "
                f"{one.own_cores:.2f} and {two.own_cores:.2f}; on {os.cpu_count()} cores shared "
                "with Redis and the bench process"
            ],
        )
    )
    return rows

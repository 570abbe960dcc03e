"""P2: patient syncs per second end to end, with one and with two worker processes.

Patient-created webhooks for fresh patients, spread over several clinics (one Halaxy key each,
so Halaxy's 500 requests a minute per key is not what limits), are accepted by the real
receiver process; then the Procfile's `worker` line is started with `--processes 1` or `2`
and times the drain from the first fetch to the last acknowledgement, each patient fetched
from the sandbox Halaxy and created in the sandbox Physitrack (both answering at once, served
by this process). Every patient is checked to be in the platform. Floor: the same number of
processes and threads draining no-op messages of the same shape through the product's broker
and middleware (`dramatiq bench.noop_worker`), timed the same way.

More drains explain the figure, in the rows' notes: the ceiling, the same messages each making
a sync's two HTTP requests and nothing else (`dramatiq bench.http_only_worker`), which no
patient sync on this worker can beat; and, with one process, syncs and no-ops again on one
thread, where no other thread contends for the interpreter, for their own CPU.
"""

from __future__ import annotations

from bench.common import Context, Row, namespace
from bench.drain import Drain, http_only_drain, noop_drain, sync_drain
from bench.sandbox import running_sandbox

ID = "P2"
RATIO_TARGET = 0.25


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
        note += (
            f", {_cpu_ms(sync) / _cpu_ms(noop):.1f} times as much (the ratio target allows "
            f"{1 / RATIO_TARGET:.0f} times)"
        )
    return note


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    rows = []
    for processes in (1, 2):
        floor = noop_drain(ctx, size.p2_noop, processes, ctx.path(f"p2-noop-{processes}.log"))
        ctx.say(f"  floor, {processes} process(es): {floor.rate:,.0f} no-op messages/s")
        ceiling = http_only_drain(
            ctx, size.p2_syncs, processes, ctx.path(f"p2-http-only-{processes}.log")
        )
        ctx.say(f"  ceiling, {processes} process(es): {ceiling.rate:,.0f} messages/s")
        figure = _syncs(
            ctx,
            size.p2_syncs,
            processes,
            f"p2-worker-{processes}.log",
            profile_as=f"worker-P2-{processes}proc",
        )
        ctx.say(f"  figure, {processes} process(es): {figure.rate:,.0f} syncs/s")
        notes = [
            f"`{figure.workers.command}`, {figure.workers.threads} threads each",
            _notes("syncs", figure),
            _notes("no-ops", floor),
            f"ceiling, the sync's two HTTP requests and nothing else "
            f"(`dramatiq bench.http_only_worker`, same settings): {ceiling.rate:,.0f}/s, "
            f"{ceiling.rate / floor.rate:.2f} of the floor; " + _notes("requests", ceiling),
        ]
        if processes == 1:
            notes.append(_one_thread(ctx))
        rows.append(
            Row(
                id=ID,
                what=f"patient syncs/s, {processes} worker process{'es' if processes > 1 else ''}",
                figure=figure.rate,
                floor=floor.rate,
                unit="/s",
                floor_what="no-op messages/s, same settings",
                target=f"ratio ≥ {RATIO_TARGET}",
                passed=figure.rate / floor.rate >= RATIO_TARGET,
                notes=notes,
            )
        )
    return rows

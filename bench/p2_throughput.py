"""P2: patient syncs per second end to end, with one and with two worker processes.

Patient-created webhooks for fresh patients, spread over several clinics (one Halaxy key each,
so Halaxy's 500 requests a minute per key is not what limits), are accepted by the real
receiver process; then the Procfile's `worker` line is started with `--processes 1` or `2`
and times the drain from the first fetch to the last acknowledgement, each patient fetched
from the sandbox Halaxy and created in the sandbox Physitrack (both answering at once, served
by this process). Every patient is checked to be in the platform. Floor: the same number of
processes and threads draining no-op messages of the same shape through the product's broker
and middleware (`dramatiq bench.noop_worker`), timed the same way.
"""

from __future__ import annotations

from bench.common import Context, Row, namespace
from bench.drain import Drain, noop_drain, sync_drain
from bench.sandbox import running_sandbox

ID = "P2"
RATIO_TARGET = 0.25


def _notes(kind: str, drain: Drain) -> str:
    cpu_ms = drain.worker_cores * drain.seconds / drain.messages * 1000
    return (
        f"{kind}: {drain.messages:,} in {drain.seconds:.2f} s, worker processes used "
        f"{drain.worker_cores:.2f} cores ({cpu_ms:.2f} ms of CPU each), the bench process "
        f"(sandbox) {drain.own_cores:.2f}"
    )


def measure(ctx: Context, processes: int, profile_as: str = "") -> tuple[Drain, Drain]:
    size = ctx.size
    floor = noop_drain(ctx, size.p2_noop, processes, ctx.path(f"p2-noop-{processes}.log"))
    ctx.say(f"  floor, {processes} process(es): {floor.rate:,.0f} no-op messages/s")
    with namespace("p2") as settings, running_sandbox() as sandbox:
        figure = sync_drain(
            ctx,
            settings,
            sandbox,
            size.p2_syncs,
            processes,
            ctx.path(f"p2-worker-{processes}.log"),
            profile_as=profile_as,
        )
    ctx.say(f"  figure, {processes} process(es): {figure.rate:,.0f} syncs/s")
    return figure, floor


def run(ctx: Context) -> list[Row]:
    rows = []
    for processes in (1, 2):
        figure, floor = measure(ctx, processes, profile_as=f"worker-P2-{processes}proc")
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
                notes=[
                    f"`{figure.workers.command}`, {figure.workers.threads} threads each",
                    _notes("syncs", figure),
                    _notes("no-ops", floor),
                ],
            )
        )
    return rows

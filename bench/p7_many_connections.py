"""P7: many clinics: patient syncs per second with events spread evenly over 200 connections.

The real receiver process and one worker process (the Procfile's lines), the sandbox
answering at once. Every connection first syncs one patient (tokens fetched and cached, the
worker's per-connection clients built: the steady state of a worker serving many clinics).
Then, in rounds, a batch of patient-created webhooks for fresh patients is posted to the
receiver as fast as it takes them, and the figure is the batch over the time from the first
post to the last client created in the sandbox Physitrack. Floor: the same batch, all for one
connection (a fresh one each round, warmed the same way), alternating with the spread batch;
the medians are reported. The batch stays under the bridge's own Halaxy budget of 480
requests a minute per key, so the floor measures syncs, not deferrals. Target: throughput
over 200 connections at least 0.8 of one connection's: what a connection costs the worker
beyond its events stays small.
"""

from __future__ import annotations

import time
from statistics import median

from bench.common import BenchError, Context, Row, namespace, wait_for
from bench.latency import warm_up
from bench.loadgen import post_all
from bench.procs import receiver, workers
from bench.sandbox import Webhook, add_clinics, add_patients, running_sandbox, spread, timed
from shared.ops.fair_share import ACTIVE_SECONDS
from tests.workers import Sandbox

ID = "P7"
RATIO_TARGET = 0.8
SETTLE_SECONDS = 120.0


def _throughput(url: str, sandbox: Sandbox, hooks: list[Webhook]) -> float:
    """Events per second from the first post to the last client created."""
    written = timed(sandbox).written_at
    began = time.monotonic()
    post_all(url, hooks)
    try:
        wait_for(
            lambda: all(h.patient_id in written for h in hooks),
            SETTLE_SECONDS,
            "every patient of the batch to reach the platform",
        )
    except BenchError:
        missing = sum(1 for h in hooks if h.patient_id not in written)
        raise BenchError(f"{missing} of {len(hooks)} patients not in the platform") from None
    return len(hooks) / (max(written[h.patient_id] for h in hooks) - began)


def _per(events: int, connections: int) -> str:
    low, high = events // connections, -(-events // connections)
    return str(low) if low == high else f"{low} or {high}"


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    events, rounds = size.p7_events, size.p7_rounds
    with namespace("p7") as settings, running_sandbox() as sandbox:
        many = add_clinics(settings, sandbox, size.p7_connections, "P7 clinic")
        singles = add_clinics(settings, sandbox, rounds, "P7 single clinic")
        warm_ids = [f"warm-{n}" for n in range(len(many) + len(singles))]
        batches = {
            (kind, number): [f"{kind}-{number}-{n}" for n in range(events)]
            for kind in ("one", "many")
            for number in range(rounds)
        }
        add_patients(sandbox, warm_ids + [p for ids in batches.values() for p in ids])
        with (
            receiver(settings, ctx.path("p7-receiver.log")) as web,
            workers(settings, ctx.path("p7-worker.log"), processes=1) as running,
        ):
            warm_up(web.url, sandbox, spread([*many, *singles], warm_ids))
            one: list[float] = []
            spread_rates: list[float] = []
            for number in range(rounds):
                # Fair share holds a clinic to its share while another clinic sent live work
                # in the last ACTIVE_SECONDS: the floor is one clinic alone, so it waits out
                # the spread batch's clinics first.
                time.sleep(ACTIVE_SECONDS + 1)
                single = spread([singles[number]], batches[("one", number)])
                one.append(_throughput(web.url, sandbox, single))
                hooks = spread(many, batches[("many", number)])
                spread_rates.append(_throughput(web.url, sandbox, hooks))
                ctx.say(
                    f"  round {number + 1}: one connection {one[-1]:,.0f} syncs/s, "
                    f"{len(many)} connections {spread_rates[-1]:,.0f} syncs/s"
                )
            command = running.command
    figure, floor = median(spread_rates), median(one)
    return [
        Row(
            id=ID,
            what=f"syncs/s with events spread over {len(many)} connections",
            figure=figure,
            floor=floor,
            unit="/s",
            floor_what="the same events for one connection",
            target=f"ratio ≥ {RATIO_TARGET}",
            passed=figure / floor >= RATIO_TARGET,
            notes=[
                f"receiver and `{command}`; {events} events a batch ({_per(events, len(many))} "
                f"per connection when spread), {rounds} round(s), "
                "first post to last client created, every connection warmed by one sync first",
                "one connection: "
                + ", ".join(f"{r:,.0f}" for r in one)
                + " syncs/s; spread: "
                + ", ".join(f"{r:,.0f}" for r in spread_rates),
            ],
        )
    ]

"""P8: one clinic's platform hanging: the other clinics' patient syncs per second.

The real receiver process and one worker process (the Procfile's lines) with the product's
default settings (upstream timeouts and circuit breaker included: their values are in the
notes), several clinics, the sandbox answering at once. Every clinic first syncs one patient
(the steady state). Then a batch of patient-created webhooks for fresh patients, the same
number for each clinic and dealt round them, is posted to the receiver as fast as it takes
them, and the figure is the other clinics' events over the time from the first post to the
last of their clients created in the sandbox Physitrack. Floor: the same batch (fresh
patients) with no clinic hanging, measured first in the same run. Then one clinic's platform
hangs: the sandbox Physitrack reads that clinic's requests (by its API key) and never answers
them, holding the connection open, as a platform that accepts connections but is stuck does.
If the other clinics' events are not all done within a window, their figure is the events
done over the window. Target: the other clinics' throughput with one platform hanging at
least 0.8 of their throughput with none hanging.
"""

from __future__ import annotations

import time

from bench.common import Context, Row, namespace, product_settings
from bench.latency import warm_up
from bench.loadgen import post_all
from bench.procs import receiver, workers
from bench.sandbox import Webhook, add_clinics, add_patients, running_sandbox, spread, timed
from tests.workers import Sandbox

ID = "P8"
RATIO_TARGET = 0.8
SETTINGS = (
    "BRIDGE_BREAKER_FAILURES",
    "BRIDGE_BREAKER_COOLDOWN_SECONDS",
    "BRIDGE_CONNECTION_THREAD_SHARE",
)


def _others_throughput(
    url: str, sandbox: Sandbox, hooks: list[Webhook], others: set[str], window: float
) -> tuple[float, int, float]:
    """(events/s of the clinics in `others`, how many of theirs were done, seconds taken)."""
    written = timed(sandbox).written_at
    theirs = [h.patient_id for h in hooks if h.path.split("/")[3] in others]
    began = time.monotonic()
    post_all(url, hooks)
    deadline = began + window
    while time.monotonic() < deadline and not all(p in written for p in theirs):
        time.sleep(0.02)
    done = [written[p] for p in theirs if p in written]
    if len(done) == len(theirs):
        seconds = max(done) - began
    else:
        seconds = max(time.monotonic() - began, window)
    return len(done) / seconds, len(done), seconds


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    per_clinic = size.p8_events_per_clinic
    with namespace("p8") as settings, running_sandbox() as sandbox:
        clinics = add_clinics(settings, sandbox, size.p8_clinics, "P8 clinic")
        hanging, others = clinics[0], clinics[1:]
        other_ids = {c.id for c in others}
        batch = per_clinic * len(clinics)
        warm_ids = [f"warm-{n}" for n in range(len(clinics))]
        normal_ids = [f"normal-{n}" for n in range(batch)]
        hung_ids = [f"hung-{n}" for n in range(batch)]
        add_patients(sandbox, warm_ids + normal_ids + hung_ids)
        with (
            receiver(settings, ctx.path("p8-receiver.log")) as web,
            workers(settings, ctx.path("p8-worker.log"), processes=1) as running,
        ):
            warm_up(web.url, sandbox, spread(clinics, warm_ids))
            floor, floor_done, floor_seconds = _others_throughput(
                web.url, sandbox, spread(clinics, normal_ids), other_ids, size.p8_window_seconds
            )
            ctx.say(f"  no platform hanging: the others {floor:,.0f} syncs/s")
            platform = timed(sandbox)
            platform.hanging.add(hanging.platform_api_key.get_secret_value())
            try:
                figure, done, seconds = _others_throughput(
                    web.url, sandbox, spread(clinics, hung_ids), other_ids, size.p8_window_seconds
                )
            finally:
                hung = platform.hung
                platform.release_hanging()  # so the worker's threads can finish and stop
            ctx.say(
                f"  one platform hanging: the others {figure:,.0f} syncs/s "
                f"({done} of {per_clinic * len(others)} done in {seconds:.1f} s)"
            )
            command = running.command
    expected = per_clinic * len(others)
    return [
        Row(
            id=ID,
            what="other clinics' syncs/s, one clinic's platform hanging",
            figure=figure,
            floor=floor,
            unit="/s",
            floor_what="their syncs/s with no platform hanging, same run",
            target=f"ratio ≥ {RATIO_TARGET}",
            passed=figure / floor >= RATIO_TARGET,
            notes=[
                f"receiver and `{command}`; {len(clinics)} clinics, {per_clinic} events each a "
                f"batch; " + product_settings(settings, *SETTINGS),
                f"no platform hanging: the other {len(others)} clinics' {floor_done} of "
                f"{expected} events in {floor_seconds:.1f} s",
                f"one hanging: {done} of {expected} in {seconds:.1f} s"
                + ("" if done == expected else f" (the window: {size.p8_window_seconds:.0f} s)")
                + f"; {hung} platform requests of the hanging clinic left unanswered",
            ],
        )
    ]

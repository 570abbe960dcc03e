"""`halaxy-bridge scheduler`: the Procfile's scheduler process."""

from __future__ import annotations

import signal
import threading

import click


@click.command()
def scheduler() -> None:
    """Run the periodic work (maintenance, reconcile sweeps); one leader among many."""
    from services.scheduler.loop import Scheduler
    from services.workers import settings
    from services.workers.runtime import WorkerRuntime
    from shared.infra import redis_problem
    from shared.telemetry import MetricsPusher

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime = WorkerRuntime(settings)
    problem = redis_problem(settings, runtime.redis)
    if problem is not None and problem.lasting:  # a wrong setting: waiting will not mend it
        runtime.close()
        raise click.ClickException(f"Redis cannot be used: {problem.detail}")
    # Else Redis may come back (restarting, failing over): the loop logs and waits for it.
    # Sweeps call Halaxy too: their requests, token refreshes and refusals count.
    pusher = MetricsPusher(runtime.redis, runtime.keys, settings.metrics_push_seconds)
    pusher.start()
    try:
        Scheduler(settings, runtime).run(stop)
    finally:
        pusher.stop()
        runtime.close()

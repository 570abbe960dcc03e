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

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Scheduler(settings, WorkerRuntime(settings)).run(stop)

"""Dramatiq middleware: a worker writes its heartbeat every few seconds while it runs.

On its own thread, so a worker whose job threads are all busy still says it is alive (status
shows Dramatiq's heartbeat of it beside ours: when that one is old, Dramatiq hands what the
worker holds to others). Removed when the worker stops cleanly; a killed worker's is kept a
day (`shared.ops.liveness`).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Any

import dramatiq
import structlog

from shared.infra import BridgeError, epoch_seconds, iso_now
from shared.ops import Duty, Heartbeat, Heartbeats

log = structlog.get_logger("halaxy_bridge.workers")

BEAT_SECONDS = 5.0  # at most; a third of the freshness when that is shorter


class WorkerHeartbeat(dramatiq.Middleware):
    def __init__(self, heartbeats: Heartbeats, fresh_for: float) -> None:
        self.heartbeats = heartbeats
        self.fresh_for = fresh_for
        self.every = min(BEAT_SECONDS, fresh_for / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._instance = ""
        self._started_at = ""
        self._threads = 0

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        # The broker id is this worker's member in Dramatiq's own heartbeats.
        self._instance = str(getattr(broker, "broker_id", "") or uuid.uuid4())
        self._started_at = iso_now()
        self._threads = int(getattr(worker, "worker_threads", 0))  # the pool fair share divides
        self._stop.clear()
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every + 5)
            self._thread = None
        try:
            self.heartbeats.stop(self._instance)
        except BridgeError as exc:  # its heartbeat goes stale, as a killed worker's would
            log.warning("worker.heartbeat_not_removed", error=type(exc).__name__)

    def beat(self) -> None:
        self.heartbeats.beat(
            Heartbeat(
                instance=self._instance,
                role=Duty.WORKER,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=self._started_at,
                seen_at=epoch_seconds(),
                fresh_for=self.fresh_for,
                threads=self._threads,
            )
        )

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.every):
            try:
                self.beat()
                failing = False
            except Exception as exc:  # this thread must outlive a Redis outage
                if not failing:
                    log.warning("worker.heartbeat_failed", error=type(exc).__name__)
                failing = True

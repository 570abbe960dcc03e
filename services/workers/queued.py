"""Dramatiq middleware: keeps each connection's unfinished messages counted per queue
(`shared.ops.queued`): added before each enqueue, removed after the ack or nack."""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog

from shared.infra import epoch_seconds
from shared.ops import QueuedMessages

log = structlog.get_logger("halaxy_bridge.workers")


def _connection(message: Any) -> str | None:
    connection_id = message.kwargs.get("connection_id")
    return connection_id if isinstance(connection_id, str) and connection_id else None


class TrackQueued(dramatiq.Middleware):
    def __init__(self, queued: QueuedMessages) -> None:
        self.queued = queued

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        """Before the message is written, so it is never finished before it is counted. A
        failure here is logged and the enqueue goes on (Redis is most likely failing it too):
        the work matters more than its count, which misses that one message."""
        connection_id = _connection(message)
        redis_id = message.options.get("redis_message_id")  # set by Redis brokers only
        if connection_id is None or redis_id is None:
            return
        eta = message.options.get("eta")
        # Due when enqueued, or at its eta when delayed (a retry's backoff, a deferral).
        due = eta / 1000 if delay is not None and isinstance(eta, int | float) else epoch_seconds()
        try:
            self.queued.add(connection_id, message.queue_name, redis_id, due)
        except Exception as exc:
            log.warning("queued.not_added", message_id=message.message_id, error=type(exc).__name__)

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        self._finished(message)

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        self._finished(message)

    def _finished(self, message: Any) -> None:
        connection_id = _connection(message)
        redis_id = message.options.get("redis_message_id")
        if connection_id is None or redis_id is None:
            return
        try:
            self.queued.remove(connection_id, message.queue_name, redis_id)
        except Exception as exc:  # the scheduler drops it later (QueuedMessages.prune)
            log.warning(
                "queued.not_removed", message_id=message.message_id, error=type(exc).__name__
            )

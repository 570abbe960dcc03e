"""Dramatiq middleware: a paused connection's messages are held, not run.

Before a message runs, `PausedConnections.hold` checks its connection's pause and, in the same
Lua step, appends the message to the connection's held list; a held message is then skipped
(acknowledged, not retried: it is kept in the held list, not lost) and counted as `held`, not
as a failure. A resume puts the held messages back on their queues (`shared.connections.pause`).
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import SkipMessage

from shared.connections import RELEASED, PausedConnections

# Set on a message this middleware held: `job_metrics` counts it as `held`.
HELD = "bridge_held"


class HoldPausedConnections(dramatiq.Middleware):
    def __init__(self, pauses: PausedConnections) -> None:
        self.pauses = pauses

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        connection_id = message.kwargs.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            return
        released = bool(message.options.get(RELEASED))
        # A Redis that cannot answer raises here: the message is retried, as any job would be.
        if self.pauses.hold(connection_id, q_name(message.queue_name), message.encode(), released):
            message.options[HELD] = True
            raise SkipMessage(f"connection {connection_id} is paused: message held")


class HeldIsNotAWarning(logging.Filter):
    """Dramatiq logs every skipped message at WARNING; a held one is expected while its
    connection is paused (one per webhook), so its line says so, at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        held = bool(args) and bool(getattr(args[0], "options", {}).get(HELD))
        if record.msg == "Message %s was skipped." and held:
            record.msg = "Message %s was held: its connection is paused."
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# Dramatiq's worker threads log their skipped messages on this logger.
logging.getLogger("dramatiq.worker.WorkerThread").addFilter(HeldIsNotAWarning())

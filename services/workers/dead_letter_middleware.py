"""Dramatiq middleware: every message that ends in the dead letters is recorded for 30 days."""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog

from shared.infra import mask
from shared.ops import DeadLetter, DeadLetterStore, iso

log = structlog.get_logger("halaxy_bridge.workers")


class RecordDeadLetters(dramatiq.Middleware):
    def __init__(self, store: DeadLetterStore) -> None:
        self.store = store

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        exception = getattr(message, "_exception", None)
        kwargs = dict(message.kwargs)
        letter = DeadLetter(
            id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name.removesuffix(".DQ"),
            connection_id=str(kwargs.get("connection_id", "")),
            event=str(kwargs.get("event", "")),
            resource_id=str(kwargs.get("resource_id") or kwargs.get("note_id") or ""),
            error_class=type(exception).__name__ if exception else "unknown",
            reason=mask(str(exception))[:500] if exception else "",
            attempts=int(message.options.get("retries", 0)),
            first_enqueued_at=iso(message.message_timestamp),
            failed_at=iso(dramatiq.common.current_millis()),
            kwargs=kwargs,
        )
        try:
            self.store.add(letter)
        except Exception:
            log.exception("dead_letter.not_recorded", message_id=message.message_id)

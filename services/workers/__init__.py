"""Dramatiq workers: `dramatiq services.workers` imports this package.

Importing it builds the broker from the environment (REDIS_URL), makes it Dramatiq's global
broker and declares the actors on it.
"""

from __future__ import annotations

import dramatiq

from services.workers.messaging import build_broker
from shared.config import load_settings
from shared.logs import configure_logging

settings = load_settings()
configure_logging(settings)
broker = build_broker(settings)
dramatiq.set_broker(broker)

from services.workers import actors  # noqa: E402  (actors bind to the broker set above)

__all__ = ["actors", "broker"]

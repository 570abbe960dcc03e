"""Dramatiq workers: `dramatiq services.workers` imports this package.

Importing it builds the broker from the environment (REDIS_URL), gives it the middleware that
builds each worker's runtime, makes it Dramatiq's global broker and declares the actors on it.
"""

from __future__ import annotations

import sys
from functools import partial

import dramatiq

from services.workers.messaging import build_broker
from services.workers.runtime import WorkerRuntime, provide_runtime
from shared.infra import ConfigError, configure_logging, load_settings

try:
    settings = load_settings()
    settings.fernet  # noqa: B018  (workers decrypt connection secrets: the key is required)
except ConfigError as exc:
    print(f"halaxy-bridge worker: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
configure_logging(settings)
broker = build_broker(settings)
provide_runtime(broker, partial(WorkerRuntime, settings))
dramatiq.set_broker(broker)

from services.workers import actors  # noqa: E402  (actors bind to the broker set above)

__all__ = ["actors", "broker"]

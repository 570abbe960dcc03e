"""What the receiver counts: webhook requests and deliveries, events taken in, refusals, last
event time."""

from __future__ import annotations

import functools

from shared.infra import epoch_seconds
from shared.telemetry import (
    LAST_EVENT,
    WEBHOOK_EVENTS,
    WEBHOOK_REJECTIONS,
    WEBHOOK_REQUESTS,
)

WEBHOOK_ROUTES = {"/webhooks/halaxy/": "halaxy", "/webhooks/programs/": "programs"}
# Labelled children are looked up once: `labels()` costs a lock and a dict per call, on every
# webhook. Connection ids reach these only once the connection is found, so the sets are small.
KEPT_CHILDREN = 4096


def authenticated(connection_id: str) -> None:
    """A Halaxy webhook came in with the right secret (program callbacks do not count: the
    quiet-connection alert is about Halaxy's webhooks)."""
    _last_event(connection_id).set(epoch_seconds())


def accepted(connection_id: str, event: str, fresh: int, duplicates: int) -> None:
    _events(connection_id, event, "accepted").inc(fresh)
    _events(connection_id, event, "duplicate").inc(duplicates)


def rejected(connection_id: str, event: str, reason: str) -> None:
    _rejections(connection_id, event, reason).inc()


_last_event = functools.lru_cache(KEPT_CHILDREN)(LAST_EVENT.labels)
_events = functools.lru_cache(KEPT_CHILDREN)(WEBHOOK_EVENTS.labels)
_rejections = functools.lru_cache(KEPT_CHILDREN)(WEBHOOK_REJECTIONS.labels)
_requests = functools.lru_cache(64)(WEBHOOK_REQUESTS.labels)


def webhook_route(path: str) -> str | None:
    for prefix, route in WEBHOOK_ROUTES.items():
        if path.startswith(prefix):
            return route
    return None


def answered(route: str, status: int) -> None:
    """Every answer of a webhook route, whoever called: the connection id in the path is the
    caller's choice, so it is not a label here."""
    _requests(route, status).inc()

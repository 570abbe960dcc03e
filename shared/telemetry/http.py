"""Counts and times every request a worker makes, by connection, target and status, and notes
each in the attempt of the job that made it (`shared.telemetry.attempts`) and in what the job
met of each upstream, for its circuit breaker (`shared.telemetry.breaker`)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.telemetry.attempts import note_call
from shared.telemetry.breaker import counts_against_upstream, note_upstream
from shared.telemetry.definitions import UPSTREAM_DURATION, UPSTREAM_REQUESTS

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 0))


class MeteredClient(httpx.Client):
    """An `httpx.Client` (environment proxies and all) that counts what it sends. `targets`
    names the origins (host, port) of Halaxy and the platform; anything else (a PDF host) is
    "other". The time is to the response headers for a streamed request, else the whole body.
    A request to "other" (a PDF host: its link is a capability) is noted without its path."""

    def __init__(
        self, connection_id: str, targets: dict[tuple[str, int], str], **options: Any
    ) -> None:
        super().__init__(**options)
        self._connection_id = connection_id
        self._targets = targets

    def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        url = request.url
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
        target = self._targets.get((url.host, port), "other")
        started = time.perf_counter()
        try:
            response = super().send(request, **options)
        except httpx.TransportError as exc:
            UPSTREAM_REQUESTS.labels(self._connection_id, target, "error").inc()
            seconds = time.perf_counter() - started
            note_call(target, request.method, _path(target, url), None, seconds)
            if counts_against_upstream(exc):
                note_upstream(target, None)
            raise
        seconds = time.perf_counter() - started
        UPSTREAM_DURATION.labels(self._connection_id, target).observe(seconds)
        UPSTREAM_REQUESTS.labels(self._connection_id, target, str(response.status_code)).inc()
        note_call(target, request.method, _path(target, url), response.status_code, seconds)
        note_upstream(target, response.status_code)
        return response


def _path(target: str, url: httpx.URL) -> str:
    return "" if target == "other" else url.path

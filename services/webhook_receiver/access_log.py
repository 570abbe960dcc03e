"""One structured line per request, written by the receiver itself (uvicorn's is turned off).

An accepted Halaxy webhook is logged by its handler (`webhook.accepted`: connection, event and
event ids), which says all an access line would; every other answer gets an `http.request`
line with the method, the path (never the query string), the status, the client and the
duration. The same middleware counts the webhook routes' answers for /metrics.
"""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.webhook_receiver import metrics

log = structlog.get_logger("halaxy_bridge.receiver")


class ObserveRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            path: str = scope["path"]
            route = metrics.webhook_route(path)
            if route is not None:
                metrics.answered(route, status)
            if not (route == "halaxy" and status == 202):
                client = scope.get("client")
                log.info(
                    "http.request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    client=f"{client[0]}:{client[1]}" if client else None,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )


def turn_off_uvicorn_access_log() -> None:
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

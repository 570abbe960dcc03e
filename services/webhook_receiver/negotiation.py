"""Which form a `/ops` answer takes: the page for a browser, JSON for everything else.

A browser navigating sends `Accept: text/html,...`; curl, httpx and scripts send `*/*` or
`application/json`. One URL serves both, so a link to a list is also its API."""

from __future__ import annotations

from starlette.requests import Request


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")

"""P1's floor: the same uvicorn serving a bare Starlette route that reads the body and
answers 202 (`uvicorn bench.floor_app:app`, started from the Procfile's `web` line)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(
    routes=[
        Route("/webhooks/halaxy/{connection_id}/{event}", accept, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

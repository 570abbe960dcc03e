"""The sandbox Halaxy and Physitrack for benchmarks: served in this process on one port.

Both fakes share one uvicorn event loop (one thread), so they do not contend with each other
for this process's GIL. The Physitrack fake also notes when each client was created, which
is the end of a patient's trip (webhook -> platform).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.rest_platform import FakeRestPlatform
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.store import Keys, redis_client
from tests.helpers import auth
from tests.workers import Sandbox, sandbox_connection

HANG_POLL_SECONDS = 0.1


@dataclass
class TimedPhysitrack(FakePhysitrack):
    """The Physitrack fake, recording when each external id was first created.

    A key in `hanging` hangs: its requests are read and never answered (the connection stays
    open) until `release_hanging()`, after which they are answered 503."""

    written_at: dict[str, float] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    hung: int = 0  # requests that hung
    _released: bool = False

    def release_hanging(self) -> None:
        self._released = True

    async def _handle(self, request: Request, action: Any) -> Response:
        if request.headers.get("X-Api-Key") in self.hanging:
            self.hung += 1
            while not self._released:
                await asyncio.sleep(HANG_POLL_SECONDS)
            return Response(b'{"errors":["released"]}', 503, media_type="application/json")
        response: Response = await super()._handle(request, action)
        return response

    async def _create(self, request: Request) -> Response:
        response = await super()._create(request)
        if response.status_code == 201:
            client = orjson.loads(bytes(response.body))
            self.written_at.setdefault(str(client["external_id"]), time.monotonic())
        return response


@contextmanager
def running_sandbox(
    halaxy_latency: float = 0.0, platform_latency: float = 0.0
) -> Iterator[Sandbox]:
    halaxy, physitrack = FakeHalaxy(), TimedPhysitrack()
    halaxy.faults.latency = halaxy_latency
    physitrack.faults.latency = platform_latency
    app = Starlette(routes=[*halaxy.app().routes, *physitrack.app().routes])
    with ServerThread(app) as server:
        physitrack.public_url = server.url
        try:
            yield Sandbox(
                halaxy=halaxy,
                physitrack=physitrack,
                rest=FakeRestPlatform(),
                halaxy_url=f"{server.url}/main",
                physitrack_url=f"{server.url}/api/v2",
                rest_url=server.url,
            )
        finally:
            physitrack.release_hanging()  # so the server can stop


def timed(sandbox: Sandbox) -> TimedPhysitrack:
    assert isinstance(sandbox.physitrack, TimedPhysitrack)
    return sandbox.physitrack


def _no_verify(base_url: str, client_id: str, client_secret: str) -> None:
    """Connections are added with `verify: False`; nothing is checked."""


def add_clinics(settings: Settings, sandbox: Sandbox, count: int, prefix: str) -> list[Connection]:
    """`count` connections to the sandbox, each with a Halaxy key of its own."""
    client = redis_client(settings)
    try:
        store = ConnectionStore(client, Keys(settings.redis_namespace), settings.fernet)
        return [
            sandbox_connection(store, sandbox, _no_verify, name=f"{prefix} {n}")
            for n in range(count)
        ]
    finally:
        client.close()


def add_patients(sandbox: Sandbox, patient_ids: list[str]) -> None:
    for patient_id in patient_ids:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)


@dataclass(frozen=True)
class Webhook:
    """One Halaxy patient-created delivery, ready to post."""

    patient_id: str
    path: str
    body: bytes
    headers: dict[str, str]


def webhook(connection: Connection, patient_id: str, event_id: str | None = None) -> Webhook:
    event_ids = None if event_id is None else [event_id]
    body = notification(connection.halaxy_base_url, "Patient", [patient_id], event_ids=event_ids)
    return Webhook(
        patient_id=patient_id,
        path=f"/webhooks/halaxy/{connection.id}/patient-created",
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json", **auth(connection)},
    )


def spread(connections: list[Connection], patient_ids: list[str]) -> list[Webhook]:
    """One webhook per patient, the patients dealt round the clinics."""
    return [
        webhook(connections[index % len(connections)], patient_id)
        for index, patient_id in enumerate(patient_ids)
    ]

"""The sandbox Halaxy and Physitrack for benchmarks: served in this process on one port.

Both fakes share one uvicorn event loop (one thread), so they do not contend with each other
for this process's GIL. The Physitrack fake also notes when each client was created, which
is the end of a patient's trip (webhook -> platform).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from services.sandbox.physitrack import CLIENT_FIELDS, FakePhysitrack
from services.sandbox.rest_platform import FakeRestPlatform
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from shared.infra.store import Keys, redis_client
from tests.helpers import auth
from tests.workers import Sandbox, sandbox_connection


@dataclass
class TimedPhysitrack(FakePhysitrack):
    """The Physitrack fake, recording when each external id was first created."""

    written_at: dict[str, float] = field(default_factory=dict)

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
        yield Sandbox(
            halaxy=halaxy,
            physitrack=physitrack,
            rest=FakeRestPlatform(),
            halaxy_url=f"{server.url}/main",
            physitrack_url=f"{server.url}/api/v2",
            rest_url=server.url,
        )


@dataclass
class BareUpstream:
    url: str
    reads: int = 0
    creates: int = 0


@contextmanager
def bare_upstream() -> Iterator[BareUpstream]:
    """P2's ceiling's upstream: a Halaxy-shaped Patient read and a Physitrack-shaped client
    create that answer as the sandbox answers a sync, with no checks and nothing kept but a
    count of each. Served in this process, like the sandbox."""

    async def read(request: Request) -> Response:
        upstream.reads += 1
        resource = patient_resource(request.path_params["id"])
        return Response(orjson.dumps(resource), media_type="application/fhir+json")

    async def create(request: Request) -> Response:
        upstream.creates += 1
        data = orjson.loads(await request.body())
        client = {"id": upstream.creates, **{name: data.get(name) for name in CLIENT_FIELDS}}
        return Response(orjson.dumps(client), status_code=201, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/Patient/{id}", read, methods=["GET"]),
            Route("/clients", create, methods=["POST"]),
        ]
    )
    with ServerThread(app) as server:
        upstream = BareUpstream(server.url)
        yield upstream


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

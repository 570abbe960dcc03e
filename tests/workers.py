"""Running the real actors in-process: sandbox servers, a Dramatiq worker, the receiver."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import orjson
import pytest
import redis
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.rest_platform import FakeRestPlatform
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread
from services.webhook_receiver.app import create_app
from services.workers import broker as global_broker
from services.workers.runtime import WorkerRuntime, provide_runtime
from shared.connections import onboarding
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from tests.helpers import audit_of, auth

PHYSITRACK_WEBHOOK_KEY = "pt-hook-sandbox-deployment-key-0001"


@dataclass
class Sandbox:
    halaxy: FakeHalaxy
    physitrack: FakePhysitrack
    rest: FakeRestPlatform
    halaxy_url: str
    physitrack_url: str
    rest_url: str


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    halaxy, physitrack, rest = FakeHalaxy(), FakePhysitrack(), FakeRestPlatform()
    with (
        ServerThread(halaxy.app()) as h,
        ServerThread(physitrack.app()) as p,
        ServerThread(rest.app()) as r,
    ):
        physitrack.public_url = p.url
        physitrack.webhook_api_key = PHYSITRACK_WEBHOOK_KEY
        yield Sandbox(halaxy, physitrack, rest, f"{h.url}/main", f"{p.url}/api/v2", r.url)


def sandbox_connection(
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    platform: str = "physitrack",
    **fields: Any,
) -> Connection:
    request = onboarding.parse_request(
        {
            "name": "Sandbox Clinic",
            "halaxy_key": sandbox.halaxy.add_key(),
            "halaxy_base_url": sandbox.halaxy_url,
            "platform": platform,
            "platform_base_url": sandbox.physitrack_url
            if platform == "physitrack"
            else sandbox.rest_url,
            "platform_api_key": sandbox.physitrack.add_key()
            if platform == "physitrack"
            else sandbox.rest.add_key(),
            "author": "PR-1001",
            "verify": False,
            # The sandbox serves PDFs over http on loopback: allowed only when listed explicitly.
            "pdf_hosts": [urlsplit(sandbox.physitrack_url).netloc],
            **fields,
        }
    )
    return onboarding.add_connection(store, verify_key, request, utcnow(), audit_of(store), "test")


@dataclass
class Pipeline:
    """The receiver and a worker on the global broker, under the run's base namespace."""

    receiver: TestClient
    worker: dramatiq.Worker
    broker: dramatiq.Broker
    store: ConnectionStore
    redis: redis.Redis
    keys: Keys

    def send(
        self,
        connection: Connection,
        event: str,
        resource_type: str,
        ids: list[str],
        **kwargs: Any,
    ) -> Any:
        body = notification(connection.halaxy_base_url, resource_type, ids, **kwargs)
        response = self.receiver.post(
            f"/webhooks/halaxy/{connection.id}/{event}",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", **auth(connection)},
        )
        assert response.status_code == 202, response.text
        return response

    def callback(
        self, connection: Connection, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        return self.receiver.post(
            f"/webhooks/programs/{connection.id}",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def drain(self, timeout_ms: int = 30_000) -> None:
        self.broker.join("live", timeout=timeout_ms)
        self.broker.join("storm", timeout=timeout_ms)  # a connection's events past its limit
        self.worker.join()

    def dead_letters(self) -> list[dict[str, Any]]:
        namespace = self.keys.dramatiq_namespace()
        payloads = self.redis.hvals(f"{namespace}:live.XQ.msgs")
        return [orjson.loads(p) for p in payloads]


@pytest.fixture
def pipeline(
    base_settings: Settings,
    redis_server_client: redis.Redis,
    verify_key: KeyVerifier,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Pipeline]:
    """With `indirect` parametrization, the parameter is the worker's thread count (one: jobs
    run one at a time, in queue order)."""
    # The one Physitrack webhook key of the deployment, as the sandbox Physitrack posts it.
    settings = base_settings.model_copy(
        update={"physitrack_webhook_keys": SecretStr(PHYSITRACK_WEBHOOK_KEY)}
    )
    for actor_name in global_broker.get_declared_actors():
        # Retries back off from 15 s in production; tests wait milliseconds.
        options = global_broker.get_actor(actor_name).options
        monkeypatch.setitem(options, "min_backoff", 20)
        monkeypatch.setitem(options, "max_backoff", 200)
    keys = Keys(settings.redis_namespace)
    global_broker.flush_all()
    for key in redis_server_client.scan_iter(match=f"{keys.dramatiq_namespace()}:*XQ*"):
        redis_server_client.delete(key)
    provide_runtime(global_broker, partial(WorkerRuntime, settings))
    threads = getattr(request, "param", 4)
    worker = dramatiq.Worker(global_broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        with TestClient(create_app(settings, verify_key=verify_key)) as receiver:
            yield Pipeline(
                receiver=receiver,
                worker=worker,
                broker=global_broker,
                store=ConnectionStore(redis_server_client, keys, settings.fernet),
                redis=redis_server_client,
                keys=keys,
            )
    finally:
        worker.stop()  # and closes the runtime it built
        global_broker.flush_all()

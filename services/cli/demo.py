"""`halaxy-bridge demo`: the receiver and a sandbox Halaxy, end to end, on this machine.

Uses the Redis at REDIS_URL when it answers (under the key namespace `hb-demo`, removed at
the end), else an in-process stand-in, so it runs on a fresh machine with nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import click
import httpx
import orjson
import redis
from cryptography.fernet import Fernet

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread, free_port
from services.webhook_receiver.app import create_app, halaxy_key_verifier
from services.workers.messaging import DramatiqJobQueue, build_broker
from shared import onboarding
from shared.config import Settings, load_settings
from shared.connection_store import ConnectionStore
from shared.connections import utcnow
from shared.jobs import Job, JobQueue
from shared.logs import configure_logging
from shared.store import Keys

DEMO_NAMESPACE = "hb-demo"


@dataclass
class RecordingQueue:
    """Passes jobs on to the real queue and remembers them, to show what was queued."""

    inner: JobQueue
    jobs: list[Job] = field(default_factory=list)

    def enqueue(self, jobs: Sequence[Job]) -> None:
        self.inner.enqueue(jobs)
        self.jobs.extend(jobs)


def _store_and_queue(settings: Settings) -> tuple[redis.Redis, JobQueue, str]:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    try:
        client.ping()
        return client, DramatiqJobQueue(build_broker(settings, client)), "the Redis at REDIS_URL"
    except redis.exceptions.ConnectionError:
        import fakeredis
        from dramatiq.brokers.stub import StubBroker

        broker = StubBroker()
        broker.declare_queue("live")
        return fakeredis.FakeRedis(), DramatiqJobQueue(broker), "an in-process Redis stand-in"


def _step(started: float, text: str) -> None:
    click.echo(f"[{(time.perf_counter() - started) * 1000:7.1f} ms] {text}")


@click.command()
@click.option("--serve", is_flag=True, help="Keep running so you can post your own webhooks.")
def demo(serve: bool) -> None:
    """Run the receiver against the sandbox and send it a Halaxy notification."""
    receiver_port = free_port()
    settings = load_settings(
        BRIDGE_SECRET_KEY=os.environ.get("BRIDGE_SECRET_KEY") or Fernet.generate_key().decode(),
        BRIDGE_REDIS_NAMESPACE=DEMO_NAMESPACE,
        BRIDGE_PUBLIC_URL=f"http://127.0.0.1:{receiver_port}",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="console",
    )
    configure_logging(settings)
    client, inner_queue, where = _store_and_queue(settings)
    queue = RecordingQueue(inner_queue)
    fake_halaxy = FakeHalaxy()
    started = time.perf_counter()
    click.echo(f"halaxy-bridge demo: queue and store on {where}")
    with (
        ServerThread(fake_halaxy.app()) as halaxy,
        httpx.Client(timeout=10) as http,
    ):
        verify = halaxy_key_verifier(settings, http)
        app = create_app(settings, queue=queue, client=client, verify_key=verify)
        with ServerThread(app, port=receiver_port) as receiver:
            _step(started, f"sandbox Halaxy at {halaxy.url}/main, receiver at {receiver.url}")
            store = ConnectionStore(client, Keys(DEMO_NAMESPACE), settings.fernet)
            request = onboarding.parse_request(
                {
                    "name": "Demo Physio Clinic",
                    "halaxy_key": fake_halaxy.add_key(),
                    "halaxy_base_url": f"{halaxy.url}/main",
                    "platform": "physitrack",
                    "platform_base_url": "https://au.physitrack.com/api/v2",
                    "platform_api_key": "demo-platform-key",
                    "author": "PR-100001",
                }
            )
            connection = onboarding.add_connection(store, verify, request, utcnow())
            details = onboarding.setup_details(connection, settings.public_url)
            _step(started, f"connection {connection.id} added; Halaxy key verified by a token")
            url = details["webhook_urls"]["patient-created"]
            body = orjson.dumps(notification(connection.halaxy_base_url, "Patient", ["1001"]))
            headers = {
                "Authorization": details["halaxy_auth_header"],
                "Content-Type": "application/json",
            }
            for attempt in ("sent", "sent again (a redelivery)"):
                response = http.post(url, content=body, headers=headers)
                _step(
                    started,
                    f"Patient·Create notification {attempt} -> {response.status_code} "
                    f"{response.text}",
                )
            for job in queue.jobs:
                kwargs = ", ".join(f"{k}={v}" for k, v in job.kwargs.items())
                _step(started, f"queued on '{job.queue}': {job.actor}({kwargs})")
            if serve:
                click.echo("\nServing; post your own webhooks. Setup values:\n")
                click.echo(onboarding.setup_steps(details))
                click.echo("\nCtrl-C to stop.")
                _wait_forever()
    if where.startswith("the Redis"):
        for key in client.scan_iter(match=f"{DEMO_NAMESPACE}*"):
            client.delete(key)
    ok = len(queue.jobs) == 1
    click.echo("demo: ok" if ok else "demo: FAILED: expected exactly one queued job")
    raise SystemExit(0 if ok else 1)


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass

"""`halaxy-bridge demo`: the whole patient flow on this machine, hop by hop.

A sandbox Halaxy and a sandbox Physitrack on loopback ports, the real receiver and a real
Dramatiq worker (threads in this process). Uses the Redis at REDIS_URL when it answers (under
a key namespace `hb-demo-<random>` of its own, removed at the end), else an in-process
stand-in, so it runs on a fresh machine with nothing else installed.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

# Each run has a namespace of its own, so two demos (or a demo and tests) never share queues.
DEMO_NAMESPACE = f"hb-demo-{secrets.token_hex(4)}"
PATIENT_ID = "1001"
FIRST_PRACTITIONER = "PR-100001"
SECOND_PRACTITIONER = "PR-100002"


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str, at: float | None = None) -> None:
        elapsed = ((at or time.monotonic()) - self.started) * 1000
        click.echo(f"[{elapsed:8.1f} ms] {text}")


def wait_for(condition: Callable[[], Any], what: Callable[[], str], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise click.ClickException(f"the demo timed out waiting for {what()}")
        time.sleep(0.005)
    return result


@click.command()
@click.option("--serve", is_flag=True, help="Keep running so you can post your own webhooks.")
def demo(serve: bool) -> None:
    """Send Halaxy patient webhooks through the bridge into a sandbox Physitrack."""
    from cryptography.fernet import Fernet

    # The worker package reads its settings from the environment when first imported.
    os.environ.setdefault("BRIDGE_SECRET_KEY", Fernet.generate_key().decode())
    os.environ["BRIDGE_REDIS_NAMESPACE"] = DEMO_NAMESPACE
    # The demo's own admin token, printed for /ops: never one inherited from the environment.
    os.environ["BRIDGE_ADMIN_TOKEN"] = "demo-" + secrets.token_urlsafe(18)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("LOG_FORMAT", "console")
    _run(serve)


def _stop_on_sigterm() -> None:
    """SIGTERM (a `kill`, a process manager) ends the demo as Ctrl-C does, so its clean-up
    runs: every key it wrote to a shared Redis is removed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _run(serve: bool) -> None:
    _stop_on_sigterm()
    import dramatiq
    import httpx
    import orjson

    from services.sandbox.halaxy import FakeHalaxy, patient_resource
    from services.sandbox.physitrack import FakePhysitrack
    from services.sandbox.samples import notification
    from services.sandbox.serve import ServerThread, free_port
    from services.webhook_receiver.app import create_app, halaxy_key_verifier
    from services.workers import broker as worker_broker
    from services.workers.messaging import DramatiqEventIntake, DramatiqJobQueue
    from services.workers.runtime import WorkerRuntime, provide_runtime
    from shared.connections import ConnectionStore, onboarding
    from shared.halaxy import ChangedResource, HalaxyEvent
    from shared.infra import AuditTrail, IntakeResult, Job, JobQueue, Keys, load_settings, utcnow
    from shared.patients import EventIntake, job_for_event

    receiver_port = free_port()
    halaxy, physitrack = FakeHalaxy(), FakePhysitrack()
    settings = load_settings(
        BRIDGE_PUBLIC_URL=f"http://127.0.0.1:{receiver_port}",
        # The deployment's one Physitrack webhook key, as the sandbox Physitrack posts it.
        BRIDGE_PHYSITRACK_WEBHOOK_KEYS=physitrack.webhook_api_key,
    )
    client, async_client, broker, where = _redis_and_broker(settings, worker_broker)
    timeline = Timeline()
    click.echo(f"halaxy-bridge demo: queues and store on {where}")

    queued: list[tuple[float, Job]] = []

    @dataclass
    class RecordingQueue:
        inner: JobQueue

        def enqueue(self, jobs: Sequence[Job]) -> None:
            self.inner.enqueue(jobs)
            queued.extend((time.monotonic(), job) for job in jobs)

    @dataclass
    class RecordingIntake:
        inner: EventIntake

        async def accept(
            self,
            record: bytes,
            connection_id: str,
            event: HalaxyEvent,
            changed: Sequence[ChangedResource],
        ) -> IntakeResult:
            result = await self.inner.accept(record, connection_id, event, changed)
            queued.extend(
                (time.monotonic(), job_for_event(connection_id, event, item))
                for item in changed
                if item.event_key in result.accepted
            )
            return result

    provide_runtime(broker, lambda: WorkerRuntime(settings, client))
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        with (
            ServerThread(halaxy.app()) as halaxy_server,
            ServerThread(physitrack.app()) as physitrack_server,
            httpx.Client(timeout=10) as http,
        ):
            physitrack.public_url = physitrack_server.url
            verify = halaxy_key_verifier(settings, http)
            app = create_app(
                settings,
                queue=RecordingQueue(DramatiqJobQueue(broker)),
                client=client,
                async_client=async_client,
                intake=RecordingIntake(DramatiqEventIntake(async_client, Keys(DEMO_NAMESPACE))),
                verify_key=verify,
            )
            with ServerThread(app, port=receiver_port) as receiver:
                timeline.say(
                    f"sandbox Halaxy {halaxy_server.url}/main, sandbox Physitrack "
                    f"{physitrack_server.url}/api/v2, receiver {receiver.url}"
                )
                store = ConnectionStore(client, Keys(DEMO_NAMESPACE), settings.fernet)
                request = onboarding.parse_request(
                    {
                        "name": "Demo Physio Clinic",
                        "halaxy_key": halaxy.add_key(),
                        "halaxy_base_url": f"{halaxy_server.url}/main",
                        "platform": "physitrack",
                        "platform_base_url": f"{physitrack_server.url}/api/v2",
                        "platform_api_key": physitrack.add_key(),
                        "author": "PR-100001",
                        "pdf_hosts": [physitrack_server.url.removeprefix("http://")],
                    }
                )
                connection = onboarding.add_connection(
                    store,
                    verify,
                    request,
                    utcnow(),
                    AuditTrail(client, Keys(DEMO_NAMESPACE)),
                    "demo",
                )
                details = onboarding.setup_details(connection, settings.public_url)
                timeline.say(
                    f"connection {connection.id} added; its Halaxy key's permissions checked"
                )

                def step(event: str, write_method: str, what: str) -> None:
                    """Send one webhook, wait for its platform write, print each hop in order."""
                    body = orjson.dumps(
                        notification(connection.halaxy_base_url, "Patient", [PATIENT_ID])
                    )
                    sent = time.monotonic()
                    response = http.post(
                        details["webhook_urls"][event],
                        content=body,
                        headers={
                            "Authorization": details["halaxy_auth_header"],
                            "Content-Type": "application/json",
                        },
                    )
                    answered = time.monotonic()
                    if response.status_code != 202:
                        raise click.ClickException(
                            f"the receiver answered {response.status_code}: {response.text}"
                        )
                    write = wait_for(
                        lambda: [r for r in physitrack.requests if r["method"] == write_method],
                        what=lambda: (
                            f"a {write_method} to Physitrack; so far queued={len(queued)}, "
                            f"Halaxy requests={[(r.path, r.status) for r in halaxy.requests]}, "
                            "Physitrack requests="
                            f"{[(r['method'], r['status']) for r in physitrack.requests]}"
                        ),
                    )[-1]
                    read = [r for r in halaxy.requests if r.path.endswith(PATIENT_ID)][-1]
                    at, job = queued.pop()
                    hops = [
                        (sent, f"Halaxy posts the {event} webhook"),
                        (at, f"receiver queued {job.actor}(patient {job.kwargs['resource_id']})"),
                        (answered, f"receiver answered {response.status_code} {response.text}"),
                        (read.received_at, f"worker fetched Patient/{PATIENT_ID} from Halaxy"),
                        (
                            write["received_at"],
                            f"worker {what} the client in Physitrack "
                            f"({write_method} {write['path']} -> {write['status']})",
                        ),
                    ]
                    for moment, text in sorted(hops, key=lambda hop: hop[0]):
                        timeline.say(text, moment)

                halaxy.patients[PATIENT_ID] = patient_resource(PATIENT_ID)
                step("patient-created", "POST", "created")
                halaxy.patients[PATIENT_ID] = patient_resource(
                    PATIENT_ID, email="jane.new@example.com"
                )
                step("patient-updated", "PUT", "updated")
                worker.join()
                [stored] = physitrack.by_external_id(PATIENT_ID)
                changed = stored["email"] == "jane.new@example.com"
                writes = [r["method"] for r in physitrack.writes()]
                timeline.say(
                    f"Physitrack holds 1 client for patient {PATIENT_ID}, writes {writes}, "
                    f"email updated: {changed}"
                )
                second = practitioners_step(
                    timeline, http, halaxy, physitrack, store, connection, details, settings
                )
                note = program_step(
                    timeline, http, halaxy, physitrack, receiver.url, second, queued
                )
                ok = (
                    changed
                    and writes == ["POST", "PUT"]
                    and note is not None
                    and note["author"][0]["reference"].endswith(SECOND_PRACTITIONER)
                )
                if serve:
                    from services.sandbox.pdfs import make_pdf

                    pdf_url = physitrack_server.url + physitrack.publish_pdf(
                        make_pdf("Ankle Program")
                    )
                    click.echo("\nServing; post your own webhooks. Setup values:\n")
                    click.echo(onboarding.setup_steps(details))
                    click.echo(
                        serving_help(
                            receiver.url,
                            details,
                            settings.admin_token,
                            pdf_url,
                            list(halaxy.patients),
                            where,
                        )
                    )
                    _wait_forever()
    finally:
        worker.stop()  # and closes the runtime it built
        if where.startswith("the Redis"):
            for key in client.scan_iter(match=f"{DEMO_NAMESPACE}*"):
                client.delete(key)
        client.close()
    click.echo("demo: ok" if ok else "demo: FAILED")
    raise SystemExit(0 if ok else 1)


def practitioners_step(
    timeline: Timeline,
    http: Any,
    halaxy: Any,
    physitrack: Any,
    store: Any,
    connection: Any,
    details: dict[str, Any],
    settings: Any,
) -> Any:
    """Two Physitrack practitioners join the clinic, each with a key of their own; Halaxy books
    the patient with the second, who then has the patient in their own account."""
    import orjson

    from services.sandbox.halaxy import appointment_resource
    from services.sandbox.samples import notification
    from shared.connections import roster
    from shared.infra import AuditTrail, Keys, utcnow
    from shared.platforms import Physitrack

    def check_key(account: Any) -> None:
        Physitrack(account, http, settings.user_agent).verify()

    fakes = []
    for role, default in ((FIRST_PRACTITIONER, True), (SECOND_PRACTITIONER, False)):
        fake = physitrack.add_practitioner()
        request = roster.parse_practitioner(
            {
                "token": fake.token,
                "halaxy_practitioner": role,
                "api_key": fake.api_key,
                "default": default,
            }
        )
        connection = roster.add_practitioner(
            store,
            check_key,
            store.get(connection.id),
            request,
            utcnow(),
            AuditTrail(store.redis, Keys(DEMO_NAMESPACE)),
            "demo",
        )
        fakes.append(fake)
    timeline.say(
        f"practitioners {FIRST_PRACTITIONER} (default) and {SECOND_PRACTITIONER} added, each "
        "with a Physitrack key of their own (checked against Physitrack)"
    )
    first, second = fakes
    halaxy.appointments["A1"] = appointment_resource(
        "A1", PATIENT_ID, practitioner=SECOND_PRACTITIONER
    )
    response = http.post(
        details["webhook_urls"]["appointment-created"],
        content=orjson.dumps(notification(connection.halaxy_base_url, "Appointment", ["A1"])),
        headers={
            "Authorization": details["halaxy_auth_header"],
            "Content-Type": "application/json",
        },
    )
    if response.status_code != 202:
        raise click.ClickException(f"the receiver answered {response.status_code}: {response.text}")
    wait_for(
        lambda: physitrack.by_external_id(PATIENT_ID, second.api_key),
        what=lambda: f"patient {PATIENT_ID} in {SECOND_PRACTITIONER}'s Physitrack account",
    )
    timeline.say(
        f"Halaxy books patient {PATIENT_ID} with {SECOND_PRACTITIONER}: the worker created the "
        f"client in {SECOND_PRACTITIONER}'s own Physitrack account; "
        f"{FIRST_PRACTITIONER}'s account has "
        f"{len(physitrack.by_external_id(PATIENT_ID, first.api_key))} client for the patient"
    )
    return second


def program_step(
    timeline: Timeline,
    http: Any,
    halaxy: Any,
    physitrack: Any,
    receiver_url: str,
    practitioner: Any,
    queued: list[Any],
) -> dict[str, Any] | None:
    """The practitioner assigns a program: Physitrack posts to the deployment's one endpoint
    (naming the practitioner by token), the bridge fetches the PDF and writes the note in
    Halaxy, authored by that practitioner."""
    sent = time.monotonic()
    assigned = physitrack.assign(
        practitioner,
        PATIENT_ID,
        name="Knee Rehab Program",
        deliver_to=f"{receiver_url}/webhooks/physitrack/programs",
        http=http,
    )
    response = assigned.callback
    answered = time.monotonic()
    if response is None or response.status_code != 200:
        detail = "nothing" if response is None else f"{response.status_code}: {response.text}"
        raise click.ClickException(f"the receiver answered {detail}")
    note = wait_for(
        lambda: halaxy.notes[-1] if halaxy.notes else None,
        what=lambda: f"the note in Halaxy; PDF requests={len(physitrack.file_requests)}",
    )
    post = [r for r in halaxy.requests if r.path.endswith("DocumentReference")][-1]
    at, job = queued.pop()
    author = note["author"][0]["reference"].rsplit("/", 1)[-1]
    hops = [
        (
            sent,
            "Physitrack posts the program-assigned callback (Knee Rehab Program) to "
            "/webhooks/physitrack/programs",
        ),
        (at, f"receiver recorded the note and queued {job.actor}"),
        (answered, f"receiver answered {response.status_code} (empty body)"),
        (
            physitrack.file_requests[-1]["received_at"],
            "worker fetched the program PDF",
        ),
        (
            post.received_at,
            f"worker posted the note to Halaxy: {note['id']} '{note['description']}', "
            f"{note['docStatus']}, PDF attached, authored by {author}",
        ),
    ]
    for moment, text in sorted(hops, key=lambda hop: hop[0]):
        timeline.say(text, moment)
    return dict(note)


def serving_help(
    receiver_url: str,
    details: dict[str, Any],
    admin_token: Any,
    pdf_url: str,
    patients: list[str],
    where: str,
) -> str:
    """What a newcomer needs to poke at the running demo: where its state is, how to see it,
    and the values the README's curl commands read from the environment."""
    token = admin_token.get_secret_value()
    exports = {
        "HB": receiver_url,
        "HB_CONNECTION": details["id"],
        "HB_AUTH": details["halaxy_auth_header"],
        "HB_PROGRAM_KEY": details["program_api_key"],
        "HB_PDF_URL": pdf_url,
        "HB_ADMIN_TOKEN": token,
    }
    export_line = " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items())
    return "\n".join(
        [
            "",
            f"Redis namespace: {DEMO_NAMESPACE} (every key removed when the demo stops)",
            f"Queues and store: {where}",
            f"Admin token:     {token}",
            f"Ops page:        {receiver_url}/ops  (a browser: any user name, the token as "
            "password)",
            f"Ops status:      curl -H 'Authorization: Bearer {token}' {receiver_url}/ops/status",
            f"Sandbox patients: {', '.join(patients)}",
            "",
            "Post a sample webhook or program callback: paste this line, then the curl commands",
            "of README.md (Quick start, 'Poke at the running demo'):",
            "",
            f"export {export_line}",
            "",
            "Ctrl-C (or SIGTERM) stops the demo.",
        ]
    )


def _redis_and_broker(settings: Any, worker_broker: Any) -> tuple[Any, Any, Any, str]:
    """The Redis at REDIS_URL (a client and an async client) and the workers' broker, else
    in-process stand-ins: fakeredis, with Dramatiq's Redis broker on it."""
    import redis

    from services.workers.messaging import build_broker
    from shared.infra import async_redis_client, redis_client

    client = redis_client(settings)  # REDIS_URL, or the sentinels' master
    try:
        client.ping()
        where = f"the Redis at REDIS_URL (namespace {DEMO_NAMESPACE})"
        return client, async_redis_client(settings), worker_broker, where
    except redis.exceptions.ConnectionError:
        import fakeredis
        import fakeredis.aioredis

        server = fakeredis.FakeServer()
        fake = fakeredis.FakeRedis(server=server)
        broker = build_broker(settings, fake)
        for name in worker_broker.get_declared_actors():
            broker.declare_actor(worker_broker.get_actor(name))
        stand_in = "an in-process stand-in (no Redis answered)"
        return fake, fakeredis.aioredis.FakeRedis(server=server), broker, stand_in


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass

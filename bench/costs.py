"""`python -m bench.costs`: what each step of a webhook and of a patient sync costs.

One step at a time on one thread, wall time per call, against the Redis at REDIS_URL (under a
namespace of its own) and the sandbox served in this process. It explains the profiles: the
receiver and the worker are CPU-bound, and their time is mostly these steps. Not a benchmark
with a floor; run it before and after changing one of them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from bench.common import prepare_environment


def timed(label: str, step: Callable[[], Any], calls: int = 500) -> None:
    step()
    started = time.perf_counter()
    for _ in range(calls):
        step()
    micros = (time.perf_counter() - started) / calls * 1e6
    print(f"  {label:<62}{micros:>9.1f} µs", flush=True)


async def timed_async(label: str, step: Callable[[], Any], calls: int = 500) -> None:
    """`timed` for a coroutine function."""
    await step()
    started = time.perf_counter()
    for _ in range(calls):
        await step()
    micros = (time.perf_counter() - started) / calls * 1e6
    print(f"  {label:<62}{micros:>9.1f} µs", flush=True)


def main() -> None:
    prepare_environment()
    os.environ["LOG_LEVEL"] = "INFO"  # the log line is one of the steps
    import httpx
    import orjson
    import structlog
    from starlette.concurrency import run_in_threadpool

    from bench.common import namespace
    from bench.sandbox import add_clinics, add_patients, running_sandbox, webhook
    from services.sandbox.samples import notification
    from services.webhook_receiver.known_connections import KnownConnections
    from services.workers.messaging import DramatiqEventIntake
    from services.workers.runtime import WorkerRuntime
    from shared.connections.store import ConnectionStore
    from shared.halaxy.events import HALAXY_EVENTS
    from shared.halaxy.notifications import parse_notification
    from shared.infra.clock import utcnow
    from shared.infra.logs import configure_logging
    from shared.infra.store import Keys, as_bytes, async_redis_client, redis_client
    from shared.patients.mapping import map_patient

    with namespace("costs") as settings, running_sandbox() as sandbox:
        receiver_clinic, worker_clinic = add_clinics(settings, sandbox, 2, "Costs clinic")
        client = redis_client(settings)
        keys = Keys(settings.redis_namespace)
        store = ConnectionStore(client, keys, settings.fernet)
        event = HALAXY_EVENTS["patient-created"]
        base = receiver_clinic.halaxy_base_url
        numbers = itertools.count()

        def fresh_events() -> Any:
            body = notification(base, "Patient", ["1001"], event_ids=[f"e{next(numbers)}"])
            return parse_notification(orjson.dumps(body), "Patient", base)

        print("receiver, per webhook:")
        timed("Redis PING (one round trip)", client.ping)
        hook = webhook(receiver_clinic, "1001")
        timed("parse_notification", lambda: parse_notification(hook.body, "Patient", base))
        timed("(making a fresh notification, to subtract below)", fresh_events)
        record = as_bytes(client.get(keys.connection(receiver_clinic.id)) or b"")
        timed(
            "decrypt + validate a connection record (5 Fernet decrypts)",
            lambda: store._decrypt_record(record),
        )

        async def async_steps() -> None:
            async_client = async_redis_client(settings)
            known = KnownConnections(async_client, store)
            intake = DramatiqEventIntake(async_client, keys)
            await timed_async("async Redis PING (one round trip)", async_client.ping)
            await timed_async(
                "KnownConnections.read (GET; decrypted once, then memoised)",
                lambda: known.read(receiver_clinic.id),
            )
            await timed_async(
                "DramatiqEventIntake.accept, one fresh event (one script call)",
                lambda: intake.accept(record, receiver_clinic.id, event, fresh_events()),
            )
            await async_client.aclose()

        asyncio.run(async_steps())
        configure_logging(settings)
        with open(os.devnull, "w") as devnull:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setStream(devnull)
            log = structlog.get_logger("halaxy_bridge.receiver").bind(
                connection_id=receiver_clinic.id, halaxy_event=event.name
            )
            timed(
                "one JSON log line (structlog, redaction)",
                lambda: log.info("webhook.accepted", event_ids=["e1"], duplicate_event_ids=[]),
            )

            async def hops() -> None:
                for _ in range(500):
                    await run_in_threadpool(lambda: None)

            started = time.perf_counter()
            asyncio.run(hops())
            micros = (time.perf_counter() - started) / 500 * 1e6
            print(f"  {'run_in_threadpool round trip (idle loop)':<62}{micros:>9.1f} µs")

            print("worker, per patient sync:")
            runtime = WorkerRuntime(settings)
            try:
                services = runtime.services(worker_clinic.id)
                add_patients(sandbox, ["p1"])
                timed(
                    "WorkerRuntime.services (connection GET, decrypts)",
                    lambda: runtime.services(worker_clinic.id),
                )

                def lease() -> None:
                    with services.links.locked("p1"):
                        pass

                timed("PatientLinks.locked, enter + exit (lease + renewal thread)", lease)
                timed("PatientLinks.get (HGET)", lambda: services.links.get("p1"))
                timed(
                    "token from the cache (GET + Fernet decrypt)",
                    lambda: services.halaxy._token(),
                    200,
                )
                timed(
                    "HalaxyClient.read Patient (sandbox, budget, token, JSON)",
                    lambda: services.halaxy.read("Patient/p1"),
                    150,
                )
                token = services.halaxy._token()
                with httpx.Client() as http:
                    timed(
                        "  bare httpx GET of the same URL (sandbox)",
                        lambda: http.get(
                            f"{sandbox.halaxy_url}/Patient/p1",
                            headers={"Authorization": f"Bearer {token}", "User-Agent": "bench"},
                        ),
                        150,
                    )
                patient = services.halaxy.read("Patient/p1")
                timed("map_patient", lambda: map_patient(patient, utcnow()))
                details = map_patient(patient, utcnow())
                timed(
                    "platform upsert, create (sandbox)",
                    lambda: services.platform.upsert_patient(details, None),
                    150,
                )
            finally:
                runtime.close()
        client.close()


if __name__ == "__main__":
    main()

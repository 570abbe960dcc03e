"""P3: webhook -> platform latency at 20 events/s (p50, p99).

The real receiver process and one worker process (the Procfile's lines) on the real Redis,
the sandbox answering at once; patient-created webhooks for fresh patients of five clinics are
sent open loop at 20 a second, and each patient's latency runs from the moment its webhook is
sent to the moment the sandbox Physitrack has created the client. One event per clinic is sent
first and left out (tokens fetched, pools open: the steady state). Floor: what the trip cannot
go below, measured alone in the same run: a Redis round trip (PING) plus the two sandbox calls
a sync makes (GET the Patient from Halaxy, POST the client to Physitrack) on a pooled client,
one after the other.
"""

from __future__ import annotations

import time

from bench.common import Context, Row, fmt, namespace, percentile
from bench.latency import trip_latencies, warm_up
from bench.loadgen import send_paced
from bench.procs import receiver, workers
from bench.sandbox import add_clinics, add_patients, running_sandbox, spread, timed
from services.sandbox.halaxy import patient_resource
from shared.halaxy.auth import FHIR_JSON, fetch_token
from shared.halaxy.client import new_http_client
from shared.infra.config import Settings
from shared.infra.store import redis_client
from tests.workers import Sandbox

ID = "P3"
RATE = 20.0
CLINICS = 5
P50_TARGET_MS = 50.0
P99_TARGET_MS = 250.0


def floor_trips(settings: Settings, sandbox: Sandbox, samples: int) -> list[float]:
    """Seconds for PING + GET Patient + POST client, `samples` times (a key of its own)."""
    client_id, _, secret = sandbox.halaxy.add_key().partition(":")
    platform_key = sandbox.physitrack.add_key()
    sandbox.halaxy.patients["p3-floor"] = patient_resource("p3-floor")
    redis = redis_client(settings)
    http = new_http_client()
    try:
        token = fetch_token(http, sandbox.halaxy_url, client_id, secret, settings.user_agent)
        halaxy_headers = {
            "Authorization": f"Bearer {token.access_token}",
            "Accept": FHIR_JSON,
            "User-Agent": settings.user_agent,
        }
        platform_headers = {"X-Api-Key": platform_key, "User-Agent": settings.user_agent}
        trips = []
        for number in range(samples):
            started = time.monotonic()
            redis.ping()
            read = http.get(f"{sandbox.halaxy_url}/Patient/p3-floor", headers=halaxy_headers)
            created = http.post(
                f"{sandbox.physitrack_url}/clients",
                json={
                    "external_id": f"p3-floor-{number}",
                    "first_name": "Jane",
                    "last_name": "Citizen",
                    "gender": "f",
                    "year_of_birth": 1984,
                },
                headers=platform_headers,
            )
            trips.append(time.monotonic() - started)
            if read.status_code != 200 or created.status_code != 201:
                raise RuntimeError(
                    f"floor calls answered {read.status_code}, {created.status_code}"
                )
        return trips
    finally:
        http.close()
        redis.close()


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    events = max(10, round(RATE * size.p3_seconds))
    with namespace("p3") as settings, running_sandbox() as sandbox:
        floor = floor_trips(settings, sandbox, size.p3_floor_samples)
        clinics = add_clinics(settings, sandbox, CLINICS, "P3 clinic")
        warm_ids = [f"p3-warm-{n}" for n in range(CLINICS)]
        patient_ids = [f"p3-{n}" for n in range(events)]
        add_patients(sandbox, warm_ids + patient_ids)
        with (
            receiver(settings, ctx.path("p3-receiver.log")) as web,
            workers(settings, ctx.path("p3-worker.log"), processes=1) as running,
        ):
            warm_up(web.url, sandbox, spread(clinics, warm_ids))
            hooks = spread(clinics, patient_ids)
            sent = send_paced(web.url, hooks, RATE)
            trips = trip_latencies(sandbox, hooks, sent)
            command = running.command
        # Where the time goes: until the worker reads the Patient from Halaxy (receiver, queue,
        # the worker's poll), then the sync itself (Halaxy read -> platform create).
        read_at: dict[str, float] = {}
        for request in sandbox.halaxy.requests:
            read_at.setdefault(request.path.rsplit("/", 1)[-1], request.received_at)
        written = timed(sandbox).written_at
        pickup = [(read_at[p] - sent[p]) * 1000 for p in patient_ids]
        syncing = [(written[p] - read_at[p]) * 1000 for p in patient_ids]
    ms = [t * 1000 for t in trips]
    floor_ms = [t * 1000 for t in floor]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    notes = [
        f"{events} events at {RATE:.0f}/s over {CLINICS} clinics; receiver and `{command}`",
        f"p90 {fmt(percentile(ms, 90))} ms, max {fmt(max(ms))} ms; floor over {len(floor)} trips",
        f"split at p50 / p99: webhook sent -> worker reads the Patient "
        f"{fmt(percentile(pickup, 50))} / {fmt(percentile(pickup, 99))} ms (receiver, queue, "
        f"the worker's idle poll), then the sync {fmt(percentile(syncing, 50))} / "
        f"{fmt(percentile(syncing, 99))} ms",
    ]
    return [
        Row(
            id=ID,
            what="webhook → platform p50 at 20 events/s",
            figure=p50,
            floor=percentile(floor_ms, 50),
            unit="ms",
            floor_what="Redis PING + 2 sandbox calls, p50",
            target=f"≤ {P50_TARGET_MS:.0f} ms",
            passed=p50 <= P50_TARGET_MS,
            notes=notes,
        ),
        Row(
            id=ID,
            what="webhook → platform p99 at 20 events/s",
            figure=p99,
            floor=percentile(floor_ms, 99),
            unit="ms",
            floor_what="Redis PING + 2 sandbox calls, p99",
            target=f"≤ {P99_TARGET_MS:.0f} ms",
            passed=p99 <= P99_TARGET_MS,
        ),
    ]

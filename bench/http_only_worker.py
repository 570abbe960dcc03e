"""P2's ceiling: `dramatiq bench.http_only_worker`, the floor's broker, middleware and actor
(`bench.floor_actor`) with the body a patient sync cannot do without: its two HTTP requests.

It reads the Patient from a Halaxy-shaped route and creates the client on a Physitrack-shaped
one (`bench.sandbox.bare_upstream`, at the base URL in `BENCH_UPSTREAM_URL`), with the
product's headers and JSON library, over one pooled `httpx.Client` per process, and does
nothing else: no Redis, no token, no rate limit, no mapping, no log line. A patient sync on
this worker cannot go faster than this actor does.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import orjson

from bench.floor_actor import UPSTREAM_URL, broker, declare

# What the Physitrack adapter sends for the sandbox's sample patient.
CLIENT = {
    "first_name": "Janie",
    "last_name": "Citizen",
    "year_of_birth": 1984,
    "email": "jane.citizen@example.com",
    "mobile_phone": "+61412345678",
    "gender": "f",
}

_http = httpx.Client(base_url=os.environ[UPSTREAM_URL])


def bench_http_only(resource_id: str, **kwargs: Any) -> None:
    """GET the Patient, POST the client: each answer checked and its JSON parsed."""
    patient = _http.get(
        f"/Patient/{resource_id}",
        headers={"Authorization": "Bearer bench", "Accept": "application/fhir+json"},
    )
    patient.raise_for_status()
    resource = orjson.loads(patient.content)
    created = _http.post(
        "/clients",
        content=orjson.dumps({**CLIENT, "external_id": resource["id"]}),
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            "X-Api-Key": "bench",
        },
    )
    created.raise_for_status()
    orjson.loads(created.content)


declare(bench_http_only)

__all__ = ["broker"]

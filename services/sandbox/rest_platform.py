"""A fake therapy platform implementing the bridge's REST contract (docs/rest-platform.yaml).

`PUT /patients/{external_id}` with `Authorization: Bearer <key>` and the patient JSON:
201 when created, 200 when updated, `{"id", "external_id"}` back; 401 for a wrong key; 422
`{"errors": [...]}` for an invalid body. Records every request; `faults` injects failures.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.faults import Faults

REQUIRED = ("external_id", "first_name", "last_name", "birth_year", "gender")
GENDERS = ("male", "female", "other", "unknown")


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@dataclass
class FakeRestPlatform:
    api_keys: set[str] = field(default_factory=set)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)

    def add_key(self) -> str:
        key = "rest-" + secrets.token_urlsafe(20)
        self.api_keys.add(key)
        return key

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] in (200, 201)]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/patients/{external_id}", self._put, methods=["PUT"])])

    async def _put(self, request: Request) -> Response:
        record = {"method": "PUT", "path": request.url.path, "status": 0}
        self.requests.append(record)
        response = await self._respond(request)
        record["status"] = response.status_code
        return response

    async def _respond(self, request: Request) -> Response:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key not in self.api_keys:
            return _json({"errors": ["invalid API key"]}, 401)
        fault = await self.faults.apply(b'{"errors":["unavailable"]}', "application/json")
        if fault is not None:
            return fault
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"errors": ["body is not JSON"]}, 400)
        external_id = request.path_params["external_id"]
        problems = [f"{name} is required" for name in REQUIRED if not data.get(name)]
        if data.get("external_id") not in (None, external_id):
            problems.append("external_id must match the path")
        if data.get("gender") and data["gender"] not in GENDERS:
            problems.append("gender must be one of: " + ", ".join(GENDERS))
        if problems:
            return _json({"errors": problems}, 422)
        created = external_id not in self.patients
        platform_id = "p-" + secrets.token_hex(4) if created else self.patients[external_id]["id"]
        self.patients[external_id] = {**data, "id": platform_id}
        return _json({"id": platform_id, "external_id": external_id}, 201 if created else 200)

"""A fake Physitrack API v2, faithful to therapy-platforms.md section 1.

Also the PDF side (section 2.1): program PDFs served at `/files/{name}` (what `file_url`
points at), and `assign_program()` posting the PMS "PDF download" callback to the bridge.

`X-Api-Key` auth (401 `{"errors":["Practitioner was not found"]}`); a key made for a
practitioner without PT Direct (`add_key(pms=...)`) also needs `X-Api-PMS-Name` and
`X-Api-PMS-Key`, compared case-sensitively (section 1.3; what Physitrack answers when they are
wrong is not documented: the sandbox gives the same 401). `POST /api/v2/clients`
(201), `PUT /api/v2/clients/{id}` with the full object (200; an empty body gets the same
"is missing" list as create), `GET /api/v2/clients/{id}` (404 `Client with given id does not
exist`), `GET /api/v2/clients?page=N` (200 a page). Validation as recorded in 2018: required
`external_id`, `first_name`, `last_name`, `gender`, `year_of_birth`, and `gender must be one of:
m, f`. Errors are `{"errors": [...]}`. Every request is recorded; `faults` injects failures.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.faults import Faults
from shared.infra import utcnow

REQUIRED = ("external_id", "first_name", "last_name", "gender", "year_of_birth")
CLIENT_FIELDS = (
    "external_id",
    "first_name",
    "last_name",
    "year_of_birth",
    "gender",
    "email",
    "mobile_phone",
)
PAGE_SIZE = 200


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _errors(status: int, *messages: str) -> Response:
    return _json({"errors": list(messages)}, status)


@dataclass
class FakePhysitrack:
    api_keys: set[str] = field(default_factory=set)
    pms_credentials: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> name, key
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    files: dict[str, bytes] = field(default_factory=dict)
    file_faults: Faults = field(default_factory=Faults)
    file_requests: list[dict[str, Any]] = field(default_factory=list)
    reject_with: list[str] | None = None  # answer every create/update 422 with these errors
    _next_id: int = 7961

    def add_key(self, pms: tuple[str, str] | None = None) -> str:
        """A practitioner's API key; with `pms` (PMS name, PMS key), one of a practitioner
        without PT Direct, whose calls must carry both PMS headers too."""
        key = "pt-" + secrets.token_urlsafe(20)
        self.api_keys.add(key)
        if pms is not None:
            self.pms_credentials[key] = pms
        return key

    def _authenticated(self, request: Request) -> bool:
        key = request.headers.get("x-api-key")
        if key not in self.api_keys:
            return False
        pms = self.pms_credentials.get(key)
        return pms is None or pms == (
            request.headers.get("x-api-pms-name"),
            request.headers.get("x-api-pms-key"),
        )

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] in {"POST", "PUT"} and r["status"] < 300]

    def by_external_id(self, external_id: str) -> list[dict[str, Any]]:
        return [c for c in self.clients.values() if c["external_id"] == external_id]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v2/clients", self._list, methods=["GET"]),
                Route("/api/v2/clients", self._create, methods=["POST"]),
                Route("/api/v2/clients/", self._create, methods=["POST"]),
                Route("/api/v2/clients/{id:int}", self._get, methods=["GET"]),
                Route("/api/v2/clients/{id:int}", self._update, methods=["PUT"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    def publish_pdf(self, pdf: bytes, name: str | None = None) -> str:
        """Serve `pdf`; returns its path (join it to this server's URL for `file_url`)."""
        name = name or f"{secrets.token_hex(12)}.pdf"
        self.files[name] = pdf
        return f"/files/{name}"

    def assign_program(
        self, callback_url: str, headers: dict[str, str] | None = None, **fields: Any
    ) -> httpx.Response:
        """POST the PMS PDF-download callback to the bridge (fields: see `program_callback`)."""
        return httpx.post(
            callback_url,
            content=orjson.dumps(program_callback(**fields)),
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=10,
        )

    async def _file(self, request: Request) -> Response:
        self.file_requests.append({"path": request.url.path, "received_at": time.monotonic()})
        fault = await self.file_faults.apply(b"unavailable", "text/plain")
        if fault is not None:
            return fault
        pdf = self.files.get(request.path_params["name"])
        if pdf is None:
            return Response(b"<Error>NoSuchKey</Error>", status_code=404, media_type="text/xml")
        return Response(pdf, media_type="application/pdf")

    async def _handle(self, request: Request, action: Any) -> Response:
        body = await request.body()
        record = {
            "method": request.method,
            "path": request.url.path,
            "status": 0,
            "received_at": time.monotonic(),
        }
        self.requests.append(record)
        response = await self._respond(request, body, action)
        record["status"] = response.status_code
        return response

    async def _respond(self, request: Request, body: bytes, action: Any) -> Response:
        if not self._authenticated(request):
            return _errors(401, "Practitioner was not found")
        fault = await self.faults.apply(b'{"errors":["Service unavailable"]}', "application/json")
        if fault is not None:
            return fault
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _errors(400, "Invalid JSON")
        return action(request, data if isinstance(data, dict) else {})  # type: ignore[no-any-return]

    async def _list(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            page = max(1, int(request.query_params.get("page", "1") or 1))
            ordered = [self.clients[i] for i in sorted(self.clients)]
            return _json({"clients": ordered[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]})

        return await self._handle(request, action)

    async def _get(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            client = self.clients.get(request.path_params["id"])
            if client is None:
                return _errors(404, "Client with given id does not exist")
            return _json(client)

        return await self._handle(request, action)

    async def _create(self, request: Request) -> Response:
        def action(request: Request, data: dict[str, Any]) -> Response:
            problems = self.reject_with or _validate(data)
            if problems:
                return _errors(422, *problems)
            client_id = self._next_id
            self._next_id += 1
            self.clients[client_id] = _client(client_id, data)
            return _json(self.clients[client_id], 201)

        return await self._handle(request, action)

    async def _update(self, request: Request) -> Response:
        def action(request: Request, data: dict[str, Any]) -> Response:
            client_id = request.path_params["id"]
            if client_id not in self.clients:
                return _errors(404, "Client with given id does not exist")
            problems = _validate(data)
            if problems:
                return _errors(422, *problems)
            self.clients[client_id] = _client(client_id, data)
            return _json(self.clients[client_id])

        return await self._handle(request, action)


def _validate(data: dict[str, Any]) -> list[str]:
    problems = [f"{name} is missing" for name in REQUIRED if data.get(name) in (None, "")]
    if data.get("gender") not in (None, "") and data.get("gender") not in ("m", "f"):
        problems.append("gender must be one of: m, f")
    year = data.get("year_of_birth")
    if year not in (None, "") and not isinstance(year, int):
        problems.append("year_of_birth must be an integer")
    return problems


def _client(client_id: int, data: dict[str, Any]) -> dict[str, Any]:
    client: dict[str, Any] = {"id": client_id}
    client.update({name: data.get(name) for name in CLIENT_FIELDS})
    client.update({"last_seen": None, "current_access_code": None, "program_end_date": None})
    return client


def program_callback(
    *,
    api_key: str,
    file_url: str,
    patient_id: str,
    name: str = "Knee Rehab Program",
    token: str = "practitioner-token-1",  # noqa: S107  (a sandbox practitioner id)
    updated: bool = False,
    when: datetime | None = None,
) -> dict[str, Any]:
    """The PMS PDF-download callback body, in Physitrack's documented shape (section 2.1)."""
    moment = when or utcnow()
    return {
        "api_key": api_key,
        "token": token,
        "patient_id": patient_id,
        "file_url": file_url,
        "name": name,
        "date": moment.date().isoformat(),
        "date_iso": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "updated": updated,
    }

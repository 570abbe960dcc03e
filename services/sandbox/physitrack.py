"""A fake Physitrack API v2, faithful to therapy-platforms.md sections 1 and 2.

Each quirk, and where the reference says so:
- Auth per practitioner (1.3): `X-Api-Key`, 401 `{"errors":["Practitioner was not found"]}`.
  A practitioner without PT Direct (`add_practitioner(pms=(name, key))`) must also send
  `X-Api-PMS-Name` and `X-Api-PMS-Key`, compared case-sensitively (what Physitrack answers
  when they are wrong is not documented: the sandbox gives the same 401).
- Clients belong to the practitioner whose key created them (1.3 [I], 1.7): list, get, update
  and programs see only that practitioner's clients; another's id answers 404 `Client with
  given id does not exist` (1.4).
- `POST /api/v2/clients` (201), `PUT /api/v2/clients/{id}` with the full object (200; an empty
  body gets the same "is missing" list as create), `GET /api/v2/clients/{id}`,
  `GET /api/v2/clients?page=N` (200 to a page), as recorded in 2018 (1.4). Validation:
  required `external_id`, `first_name`, `last_name`, `gender`, `year_of_birth`, and `gender
  must be one of: m, f`. Errors are `{"errors": [...]}` (1.5).
- Events (2.2): `GET /api/v2/events?page=N` answers `{"events": [...]}`, 200 to a page, only
  the calling practitioner's, **oldest first** as the 2018 recording lists them
  (`newest_first=True` serves the other order); ids rise across all practitioners, so one
  practitioner's ids have gaps. Items are `{"id", "type", "created", "data",
  "practitioner_id", "url"}`: `new_client_created` (data: the client) on every create,
  `new_program_assigned` / `program_updated` (data: the program) from `assign()`, and any
  item at all from `add_raw_event()`. `GET /api/v2/events/{id}` answers one.
- The PDF endpoint (1.4, 2.3): `GET /api/v2/clients/{id}/programs/{access_code}/exercises
  ?format=pdf` answers 202 `{"url": ".../files/<hash>.pdf"}` with a new file each call; an
  unknown access code answers 404 `Program with given access code does not exist`. Without
  `format=pdf` it answers the recorded JSON shape with no exercises.
- Files (2.1, 2.3): a file answers 404 like S3 (`NoSuchKey`) the first `pdf_ready_after_polls`
  times when made by the PDF endpoint (2.3 [I]: "404/403 before the file exists"), and again
  from 24 hours after it was made, by the product clock (2.1: "deleted 24 hours after
  generation").
- The PDF callback (2.1): `assign(..., deliver_to=url)` posts `{"api_key", "token",
  "patient_id", "file_url", "name", "date", "date_iso", "updated"}` with the one
  deployment-wide `webhook_api_key` and the practitioner's `token`; `date_iso` is the event's
  `created`, to the second.

Every API request is recorded in `requests` and every file request in `file_requests`;
`faults` and `file_faults` inject failures.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.faults import Faults
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack_pdfs import PdfFiles
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
PROGRAM_WEEKS = 4
NO_SUCH_CLIENT = "Client with given id does not exist"
NO_SUCH_PROGRAM = "Program with given access code does not exist"

Action = Callable[[Request, dict[str, Any]], Response]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _errors(status: int, *messages: str) -> Response:
    return _json({"errors": list(messages)}, status)


def iso_z(moment: datetime) -> str:
    """A time as Physitrack writes it: whole seconds, UTC, `Z`."""
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FakePractitioner:
    """A Physitrack practitioner: the key the bridge calls with, the `token` the PDF callback
    carries, the `practitioner_id` events carry, and the PMS pair of mode 2 if any (1.3)."""

    api_key: str
    token: str
    practitioner_id: int
    pms: tuple[str, str] | None = None

    def headers(self) -> dict[str, str]:
        """What this practitioner's API calls carry."""
        sent = {"X-Api-Key": self.api_key}
        if self.pms is not None:
            sent |= {"X-Api-PMS-Name": self.pms[0], "X-Api-PMS-Key": self.pms[1]}
        return sent


@dataclass(frozen=True)
class AssignedProgram:
    """What `assign()` did: the program, its event, its file, and the callback's answer (None
    when no callback was posted)."""

    client_id: int
    access_code: str
    event_id: int
    created: datetime
    file_url: str
    callback: httpx.Response | None


@dataclass
class FakeProgram:
    """A program: its client, its object as the API shows it, and how often it changed."""

    client_id: int
    body: dict[str, Any]
    version: int = 1


@dataclass
class StoredEvent:
    """An event item and whose it is; `seq` orders the events (it is the item's id, unless
    the item came whole from `add_raw_event`)."""

    seq: int
    api_key: str
    item: Any


@dataclass
class FakePhysitrack(PdfFiles):
    api_keys: set[str] = field(default_factory=set)
    pms_credentials: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> name, key
    practitioners: dict[str, FakePractitioner] = field(default_factory=dict)  # by API key
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # client id -> its practitioner's key
    programs: dict[str, FakeProgram] = field(default_factory=dict)  # by access code
    events: list[StoredEvent] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    reject_with: list[str] | None = None  # answer every create/update 422 with these errors
    webhook_api_key: str = field(default_factory=lambda: "pt-hook-" + secrets.token_urlsafe(20))
    public_url: str = "http://testserver"  # where this fake is served: `file_url`s start so
    pdf_ready_after_polls: int = 0
    newest_first: bool = False
    _next_id: int = 7961
    _next_event_id: int = 2329
    _next_practitioner_id: int = 7960
    _next_program_id: int = 7530

    def add_practitioner(self, pms: tuple[str, str] | None = None) -> FakePractitioner:
        """A practitioner and its API key; with `pms` (PMS name, PMS key), one without PT
        Direct, whose calls must carry both PMS headers too."""
        key = "pt-" + secrets.token_urlsafe(20)
        self.api_keys.add(key)
        if pms is not None:
            self.pms_credentials[key] = pms
        return self.practitioner(key)

    def add_key(self, pms: tuple[str, str] | None = None) -> str:
        """A new practitioner's API key (see `add_practitioner`)."""
        return self.add_practitioner(pms).api_key

    def practitioner(self, api_key: str) -> FakePractitioner:
        """The practitioner of a key, made on first use for a key put in `api_keys` directly."""
        if api_key not in self.practitioners:
            self.practitioners[api_key] = FakePractitioner(
                api_key=api_key,
                token="ptt-" + secrets.token_urlsafe(16),
                practitioner_id=self._next_practitioner_id,
                pms=self.pms_credentials.get(api_key),
            )
            self._next_practitioner_id += 1
        return self.practitioners[api_key]

    def clients_of(self, api_key: str) -> list[dict[str, Any]]:
        return [self.clients[i] for i in sorted(self.clients) if self.owners.get(i) == api_key]

    def by_external_id(self, external_id: str, api_key: str | None = None) -> list[dict[str, Any]]:
        return [
            client
            for client_id, client in self.clients.items()
            if client["external_id"] == external_id
            and (api_key is None or self.owners.get(client_id) == api_key)
        ]

    def add_client(self, api_key: str, /, **fields: Any) -> dict[str, Any]:
        """A client of this key's practitioner, as if created through the API (no checks)."""
        client_id = self._next_id
        self._next_id += 1
        self.clients[client_id] = _client(client_id, fields)
        self.owners[client_id] = api_key
        self._record(
            api_key, "new_client_created", self.clients[client_id], f"/api/v2/clients/{client_id}"
        )
        return self.clients[client_id]

    def add_raw_event(self, practitioner: FakePractitioner, item: Any) -> int:
        """Put `item`, whatever it is, in the practitioner's events as the newest one; returns
        its place in the order (the id the fake would have given it)."""
        seq = self._take_event_id()
        self.events.append(StoredEvent(seq, practitioner.api_key, item))
        return seq

    def events_of(self, api_key: str) -> list[Any]:
        """The practitioner's event items, in the order the API lists them."""
        mine = [e for e in self.events if e.api_key == api_key]
        mine.sort(key=lambda e: e.seq, reverse=self.newest_first)
        return [e.item for e in mine]

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] in {"POST", "PUT"} and r["status"] < 300]

    def app(self) -> Starlette:
        program = "/api/v2/clients/{id:int}/programs/{access_code}"
        return Starlette(
            routes=[
                Route("/api/v2/clients", self._list, methods=["GET"]),
                Route("/api/v2/clients", self._create, methods=["POST"]),
                Route("/api/v2/clients/", self._create, methods=["POST"]),
                Route("/api/v2/clients/{id:int}", self._get, methods=["GET"]),
                Route("/api/v2/clients/{id:int}", self._update, methods=["PUT"]),
                Route("/api/v2/clients/{id:int}/programs", self._programs, methods=["GET"]),
                Route(f"{program}/exercises", self._exercises, methods=["GET"]),
                Route("/api/v2/events", self._events, methods=["GET"]),
                Route("/api/v2/events/{id:int}", self._event, methods=["GET"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    # Programs and their PDFs

    def assign(
        self,
        practitioner: FakePractitioner,
        external_id: str,
        name: str | None = None,
        updated: bool = False,
        deliver_to: str | None = None,
        drop: bool = False,
        http: httpx.Client | None = None,
    ) -> AssignedProgram:
        """The practitioner assigns a program (`name`, default "Knee Rehab Program") to their
        client with this external id, or with `updated` changes the client's current one
        (renamed when `name` is given): the program, its event, its PDF file and, unless `drop`
        or no `deliver_to`, the PDF callback posted there (through `http` when given)."""
        clients = self.by_external_id(external_id, practitioner.api_key)
        if not clients:
            raise LookupError(f"the practitioner has no client with external id {external_id}")
        client = clients[0]
        created = utcnow().replace(microsecond=0)
        program = self._program_for(client, name, updated, created)
        kind = "program_updated" if updated else "new_program_assigned"
        url = f"/api/v2/clients/{client['id']}/programs/{program.body['access_code']}"
        event_id = self._record(practitioner.api_key, kind, program.body, url, created)
        path = self.publish_pdf(program_pdf(program), when=created)
        file_url = self.public_url.rstrip("/") + path
        callback = None
        if deliver_to is not None and not drop:
            body = program_callback(
                api_key=self.webhook_api_key,
                token=practitioner.token,
                patient_id=external_id,
                file_url=file_url,
                name=program.body["name"],
                updated=updated,
                when=created,
            )
            callback = post_json(deliver_to, body, http)
        return AssignedProgram(
            client["id"], program.body["access_code"], event_id, created, file_url, callback
        )

    def assign_program(
        self, callback_url: str, headers: dict[str, str] | None = None, **fields: Any
    ) -> httpx.Response:
        """POST the PMS PDF-download callback to the bridge (fields: see `program_callback`)."""
        return post_json(callback_url, program_callback(**fields), None, headers)

    def _program_for(
        self, client: dict[str, Any], name: str | None, updated: bool, now: datetime
    ) -> FakeProgram:
        current = self.programs.get(client.get("current_access_code") or "")
        if updated and current is not None:
            current.body["name"] = name or current.body["name"]
            current.version += 1
            return current
        code = self._new_access_code()
        start = now.date()
        body = {
            "id": self._next_program_id,
            "external_id": None,
            "template_id": 1180,
            "author": "Sandbox Practitioner",
            "author_email": "practitioner@example.com",
            "name": name or "Knee Rehab Program",
            "access_code": code,
            "start_date": f"{start.isoformat()}T00:00:00Z",
            "end_date": f"{(start + timedelta(weeks=PROGRAM_WEEKS)).isoformat()}T00:00:00Z",
            "track_adherence": True,
            "track_pain_levels": True,
            "access_code_sent_date": None,
            "access_code_sent_via": None,
            "last_access_date": None,
            "avg_adherence": None,
        }
        self._next_program_id += 1
        self.programs[code] = FakeProgram(client["id"], body)
        client["current_access_code"] = code
        client["program_end_date"] = body["end_date"]
        return self.programs[code]

    def _new_access_code(self) -> str:
        while True:
            code = "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))
            if code not in self.programs:
                return code

    def _record(
        self,
        api_key: str,
        kind: str,
        data: dict[str, Any],
        url: str,
        created: datetime | None = None,
    ) -> int:
        seq = self._take_event_id()
        item = {
            "id": seq,
            "type": kind,
            "created": iso_z(created or utcnow()),
            "data": dict(data),
            "practitioner_id": self.practitioner(api_key).practitioner_id,
            "url": url,
        }
        self.events.append(StoredEvent(seq, api_key, item))
        return seq

    def _take_event_id(self) -> int:
        self._next_event_id += 1
        return self._next_event_id - 1

    # The HTTP side

    def _authenticated(self, request: Request) -> bool:
        key = request.headers.get("x-api-key")
        if key not in self.api_keys:
            return False
        pms = self.pms_credentials.get(key)
        return pms is None or pms == (
            request.headers.get("x-api-pms-name"),
            request.headers.get("x-api-pms-key"),
        )

    async def _handle(self, request: Request, action: Action) -> Response:
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

    async def _respond(self, request: Request, body: bytes, action: Action) -> Response:
        if not self._authenticated(request):
            return _errors(401, "Practitioner was not found")
        fault = await self.faults.apply(b'{"errors":["Service unavailable"]}', "application/json")
        if fault is not None:
            return fault
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _errors(400, "Invalid JSON")
        return action(request, data if isinstance(data, dict) else {})

    def _own_client(self, request: Request) -> dict[str, Any] | None:
        client_id = request.path_params["id"]
        if self.owners.get(client_id) != _caller(request):
            return None
        return self.clients.get(client_id)

    async def _list(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            return _json({"clients": _page(request, self.clients_of(_caller(request)))})

        return await self._handle(request, action)

    async def _get(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            client = self._own_client(request)
            return _errors(404, NO_SUCH_CLIENT) if client is None else _json(client)

        return await self._handle(request, action)

    async def _create(self, request: Request) -> Response:
        def action(request: Request, data: dict[str, Any]) -> Response:
            problems = self.reject_with or _validate(data)
            if problems:
                return _errors(422, *problems)
            return _json(self.add_client(_caller(request), **data), 201)

        return await self._handle(request, action)

    async def _update(self, request: Request) -> Response:
        def action(request: Request, data: dict[str, Any]) -> Response:
            client = self._own_client(request)
            if client is None:
                return _errors(404, NO_SUCH_CLIENT)
            problems = _validate(data)
            if problems:
                return _errors(422, *problems)
            client.update({name: data.get(name) for name in CLIENT_FIELDS})
            return _json(client)

        return await self._handle(request, action)

    async def _programs(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            client = self._own_client(request)
            if client is None:
                return _errors(404, NO_SUCH_CLIENT)
            mine = [p.body for p in self.programs.values() if p.client_id == client["id"]]
            return _json({"programs": _page(request, mine)})

        return await self._handle(request, action)

    async def _exercises(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            client = self._own_client(request)
            if client is None:
                return _errors(404, NO_SUCH_CLIENT)
            program = self.programs.get(request.path_params["access_code"])
            if program is None or program.client_id != client["id"]:
                return _errors(404, NO_SUCH_PROGRAM)
            if request.query_params.get("format") != "pdf":
                return _json({"schedule_type": "weekly", "weeks": []})
            path = self.publish_pdf(
                program_pdf(program), polls_before_ready=self.pdf_ready_after_polls
            )
            return _json({"url": str(request.base_url).rstrip("/") + path}, 202)

        return await self._handle(request, action)

    async def _events(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            return _json({"events": _page(request, self.events_of(_caller(request)))})

        return await self._handle(request, action)

    async def _event(self, request: Request) -> Response:
        def action(request: Request, _: dict[str, Any]) -> Response:
            wanted, caller = request.path_params["id"], _caller(request)
            for event in self.events:
                if event.seq == wanted and event.api_key == caller:
                    return _json(event.item)
            return _errors(404, "Event with given id does not exist")

        return await self._handle(request, action)


def _caller(request: Request) -> str:
    return request.headers["x-api-key"]  # present: every action runs after `_authenticated`


def _page(request: Request, items: list[Any]) -> list[Any]:
    try:
        page = max(1, int(request.query_params.get("page") or 1))
    except ValueError:
        page = 1
    return items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]


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


def program_pdf(program: FakeProgram) -> bytes:
    """The program's PDF: the same bytes for the same program version, whichever way it is
    fetched (callback or PDF endpoint)."""
    body = program.body
    return make_pdf(f"{body['name']} ({body['access_code']}, version {program.version})")


def post_json(
    url: str,
    body: dict[str, Any],
    http: httpx.Client | None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `body` as JSON to `url`, through `http` when given (an in-process app)."""
    content = orjson.dumps(body)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if http is not None:
        return http.post(url, content=content, headers=sent)
    return httpx.post(url, content=content, headers=sent, timeout=10)


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
        "date_iso": iso_z(moment),
        "updated": updated,
    }

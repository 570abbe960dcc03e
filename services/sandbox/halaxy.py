"""A fake Halaxy API, faithful to halaxy-api.md where the bridge depends on it.

- Token endpoint (`/main/oauth/token`): JSON body only; 403 without `User-Agent` (Halaxy's
  gateway does that, section 2); answers `expires_in: 3600` although its tokens stop working
  after 15 minutes (the documented contradiction).
- `GET /main/Patient/{id}`, `/main/Appointment/{id}`, and the searches `/main/Patient?...` and
  `/main/Appointment?...` (`_count`, `page`; `_lastUpdated` for patients, `patient=Patient/{id}`
  for appointments, a bare id answered 422 as section 4 reports): searchset Bundles with
  `total` and `link[]` `self`, `next` while there are more and `last` (section 7), absolute
  references, a given-only `usual` name before the `official` one, the `patient-status`
  extension; 401 for an expired token, 404 OperationOutcome when unknown, 400 for a search
  parameter it cannot read.
- Key permissions (section 2): a key made with `add_key(withheld=...)` lacks those of
  `PERMISSIONS`; a request that needs one is answered 403 with a `forbidden` OperationOutcome
  naming it, before its body is looked at.
- `POST /main/DocumentReference`: validated as section 6 describes (`docStatus`, a Patient
  `subject` it knows, absolute or relative as `/main/Patient/123` (section 3), `description`,
  `content` in text/html only, `attachments` with an allowed `contentType`, base64 `data` of at
  most 20 MB and a `title`; `author` an array of at most one PractitionerRole reference, and a
  role other than a practice role PR-... gets 404 "Author not found"); kept in `notes`;
  `note_faults` can make it answer 429 or 503 before storing, or store and then time out or
  answer 500 (the ambiguous ends a retried POST would duplicate).
- A sliding-window limit of 500 requests a minute per key, with `x-ratelimit-limit` and
  `x-ratelimit-remaining`, and 429 with `retry-after` beyond it (section 7).
- Every request is recorded (method, path, User-Agent, key) for tests to inspect; `faults`
  injects errors, 429s, timeouts and latency.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.sandbox.faults import Faults

FHIR_JSON = "application/fhir+json"
STATUS_EXTENSION = "https://terminology.halaxy.com/StructureDefinition/patient-status"
TOKEN_LIFETIME = 15 * 60
RATE_LIMIT = 500
RATE_WINDOW = 60.0
MAX_COUNT = 100

# The labels of the key's permission toggles (halaxy-api.md section 2). Which one allows
# creating clinical notes is unknown (section 9.6): the fake calls it "Clinical Notes ->
# Create", after the pattern of the others.
PATIENTS_RETRIEVE = "Patients -> Retrieve"
APPOINTMENTS_RETRIEVE = "Appointments -> Retrieve"
CLINICAL_NOTES_CREATE = "Clinical Notes -> Create"
PERMISSIONS = frozenset({PATIENTS_RETRIEVE, APPOINTMENTS_RETRIEVE, CLINICAL_NOTES_CREATE})
NEEDED = {
    ("GET", "Patient"): PATIENTS_RETRIEVE,
    ("GET", "Appointment"): APPOINTMENTS_RETRIEVE,
    ("POST", "DocumentReference"): CLINICAL_NOTES_CREATE,
}


def operation_outcome(status: int, code: str, diagnostics: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def fhir(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def patient_resource(
    patient_id: str,
    *,
    given: str = "Jane",
    family: str = "Citizen",
    preferred: str | None = "Janie",
    email: str | None = "jane.citizen@example.com",
    mobile: str | None = "+61412345678",
    birth_date: str | None = "1984-07-21",
    gender: str = "female",
    status: str = "current",
    last_updated: str | None = None,
    died: str | None = None,
) -> dict[str, Any]:
    """A Patient as Halaxy returns it, with the given-only `usual` name listed first. `died`
    (a FHIR dateTime) gives it a `deceasedDateTime` in place of `deceasedBoolean`, whatever
    `status` says (deceased[x] is one element: one form at a time)."""
    names: list[dict[str, Any]] = []
    if preferred:
        names.append({"use": "usual", "given": [preferred]})
    names.append({"use": "official", "given": [given, "Marie"], "family": family})
    telecom = [{"system": "phone", "use": "home", "value": "+61299998888"}]
    if mobile:
        telecom.append({"system": "sms", "use": "mobile", "value": mobile})
    if email:
        telecom.append({"system": "email", "value": email})
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "extension": [{"url": STATUS_EXTENSION, "valueString": status}],
        "active": status in {"current", "contact", "claimant"},
        "name": names,
        "telecom": telecom,
        "gender": gender,
    }
    if died is None:
        resource["deceasedBoolean"] = status == "deceased"
    else:
        resource["deceasedDateTime"] = died
    if birth_date:
        resource["birthDate"] = birth_date
    if last_updated:
        resource["meta"] = {"lastUpdated": last_updated}
    return resource


def appointment_resource(
    appointment_id: str, patient_id: str, practitioner: str = "PR-1001"
) -> dict[str, Any]:
    """An Appointment with a practitioner and a patient participant ({base} filled on GET)."""
    return {
        "resourceType": "Appointment",
        "id": appointment_id,
        "status": "booked",
        "start": "2026-11-21T09:00:00+10:00",
        "end": "2026-11-21T09:30:00+10:00",
        "participant": [
            {
                "actor": {
                    "reference": f"{{base}}/PractitionerRole/{practitioner}",
                    "type": "PractitionerRole",
                }
            },
            {"actor": {"reference": f"{{base}}/Patient/{patient_id}", "type": "Patient"}},
        ],
    }


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    user_agent: str | None
    client_id: str | None
    status: int = 0
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class IssuedToken:
    client_id: str
    issued_at: float


@dataclass
class FakeHalaxy:
    """State of the fake: keys, tokens, resources, and every request it saw."""

    keys: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.monotonic
    rate_limit: int = RATE_LIMIT
    page_size: int = 50
    notes: list[dict[str, Any]] = field(default_factory=list)
    note_faults: list[str] = field(default_factory=list)
    hang_seconds: float = 30.0
    # Each DocumentReference POST body as received, when asked for (a conformance check reads
    # them; they hold whole PDFs, so they are not kept by default).
    keep_note_bodies: bool = False
    note_bodies: list[bytes] = field(default_factory=list)
    # Per client id, the permissions its key was made without.
    withheld: dict[str, frozenset[str]] = field(default_factory=dict)
    _windows: dict[str, deque[float]] = field(default_factory=dict)

    def add_key(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        withheld: Iterable[str] = (),
    ) -> str:
        """Register an API key with every permission of `PERMISSIONS` but those `withheld`;
        returns it as the `CLIENT_ID:CLIENT_SECRET` string."""
        lacking = frozenset(withheld)
        if unknown := lacking - PERMISSIONS:
            raise ValueError(f"unknown permissions {sorted(unknown)}: not in {sorted(PERMISSIONS)}")
        client_id = client_id or "cid-" + secrets.token_hex(6)
        client_secret = client_secret or secrets.token_urlsafe(24)
        self.keys[client_id] = client_secret
        self.withheld[client_id] = lacking
        return f"{client_id}:{client_secret}"

    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/oauth/token")]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/main/oauth/token", self._token, methods=["POST"]),
                Route("/main/Patient", self._search_patients, methods=["GET"]),
                Route("/main/Patient/{id}", self._read, methods=["GET"]),
                Route("/main/Appointment", self._search_appointments, methods=["GET"]),
                Route("/main/Appointment/{id}", self._read, methods=["GET"]),
                Route("/main/DocumentReference", self._create_note, methods=["POST"]),
            ]
        )

    def _record(self, request: Request, client_id: str | None) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            user_agent=request.headers.get("user-agent"),
            client_id=client_id,
        )
        self.requests.append(record)
        return record

    async def _token(self, request: Request) -> Response:
        record = self._record(request, None)
        response = await self._token_response(request, record)
        record.status = response.status_code
        return response

    async def _token_response(self, request: Request, record: RecordedRequest) -> Response:
        if not request.headers.get("user-agent"):
            return Response(b"Forbidden", status_code=403)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return operation_outcome(400, "invalid", "body must be JSON")
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            return operation_outcome(400, "invalid", "grant_type must be client_credentials")
        client_id = str(body.get("client_id", ""))
        record.client_id = client_id
        expected = self.keys.get(client_id)
        if expected is None or not secrets.compare_digest(
            expected, str(body.get("client_secret", ""))
        ):
            return operation_outcome(401, "login", "invalid client credentials")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = IssuedToken(client_id, self.clock())
        return fhir({"token_type": "Bearer", "expires_in": 3600, "access_token": token})

    async def _read(self, request: Request) -> Response:
        return await self._api(request, self._read_resource)

    async def _create_note(self, request: Request) -> Response:
        record = self._record(request, None)
        body = await request.body()
        response = await self._api_response(request, record, lambda r, base: Response())
        if response.status_code == 200:
            response = await self._note(body, f"{request.url.scheme}://{request.url.netloc}/main")
        record.status = response.status_code
        return response

    async def _note(self, body: bytes, base: str) -> Response:
        if self.keep_note_bodies:
            self.note_bodies.append(body)
        fault = self.note_faults.pop(0) if self.note_faults else None
        if fault in ("429", "503"):
            headers = {"retry-after": "1"} if fault == "429" else None
            return Response(b"", status_code=int(fault), headers=headers)
        try:
            note = orjson.loads(body)
        except orjson.JSONDecodeError:
            return operation_outcome(400, "invalid", "body must be JSON")
        problem = _note_problem(note, base, self.patients)
        if problem is not None:
            return problem
        stored = _stored_note(note, len(self.notes) + 1)
        self.notes.append(stored)
        if fault == "timeout_after_store":
            await asyncio.sleep(self.hang_seconds)
        if fault == "500_after_store":
            return operation_outcome(500, "exception", "internal error")
        return fhir({"resourceType": "DocumentReference", "id": stored["id"]}, 201)

    async def _search_patients(self, request: Request) -> Response:
        return await self._api(request, self._patient_page)

    async def _search_appointments(self, request: Request) -> Response:
        return await self._api(request, self._appointment_page)

    async def _api(self, request: Request, handler: Callable[[Request, str], Response]) -> Response:
        record = self._record(request, None)
        response = await self._api_response(request, record, handler)
        record.status = response.status_code
        return response

    async def _api_response(
        self,
        request: Request,
        record: RecordedRequest,
        handler: Callable[[Request, str], Response],
    ) -> Response:
        if not request.headers.get("user-agent"):
            return Response(b"Forbidden", status_code=403)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        issued = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if issued is None:
            return operation_outcome(401, "login", "invalid access token")
        record.client_id = issued.client_id
        if self.clock() - issued.issued_at >= TOKEN_LIFETIME:
            return operation_outcome(401, "expired", "access token expired")
        remaining = self._take_from_window(issued.client_id)
        if remaining < 0:
            return Response(
                orjson.dumps({"resourceType": "OperationOutcome", "issue": []}),
                status_code=429,
                media_type=FHIR_JSON,
                headers={"retry-after": "60", **self._limit_headers(0)},
            )
        fault = await self.faults.apply(
            orjson.dumps({"resourceType": "OperationOutcome", "issue": []}), FHIR_JSON
        )
        if fault is not None:
            return fault
        needed = NEEDED.get((request.method, request.url.path.split("/")[2]))
        if needed in self.withheld.get(issued.client_id, frozenset()):
            return operation_outcome(
                403, "forbidden", f"this API key does not have the permission {needed}"
            )
        base = f"{request.url.scheme}://{request.url.netloc}/main"
        response = handler(request, base)
        response.headers.update(self._limit_headers(remaining))
        return response

    def forget_requests(self) -> None:
        """Start afresh: no request recorded, none counted in any key's rate window."""
        self.requests.clear()
        self._windows.clear()

    def _take_from_window(self, client_id: str) -> int:
        now = self.clock()
        window = self._windows.setdefault(client_id, deque())
        while window and now - window[0] >= RATE_WINDOW:
            window.popleft()
        if len(window) >= self.rate_limit:
            return -1
        window.append(now)
        return self.rate_limit - len(window)

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        return {"x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-remaining": str(remaining)}

    def _read_resource(self, request: Request, base: str) -> Response:
        resource_type = request.url.path.split("/")[2]
        store = self.patients if resource_type == "Patient" else self.appointments
        resource = store.get(request.path_params["id"])
        if resource is None:
            return operation_outcome(404, "not-found", f"{resource_type} not found")
        return fhir(_absolute(resource, base))

    def _patient_page(self, request: Request, base: str) -> Response:
        """A searchset page; `_lastUpdated=gt<time>` (or `ge`) filters on meta.lastUpdated."""
        since = request.query_params.get("_lastUpdated", "")
        try:
            after = _moment(since) if since else None
        except ValueError:
            return operation_outcome(400, "invalid", "_lastUpdated must be gt or ge a time")
        ids = [i for i in _in_order(self.patients) if _updated_after(self.patients[i], after)]
        extra = f"&_lastUpdated={quote(since)}" if since else ""
        wanted = request.query_params.get("_id")  # FHIR R4 search: `_id`, on every resource
        if wanted is not None:
            ids = [i for i in ids if i == wanted]
            extra += f"&_id={quote(wanted)}"
        return self._page(request, base, "Patient", self.patients, ids, extra)

    def _appointment_page(self, request: Request, base: str) -> Response:
        """A searchset page; `patient=Patient/{id}` keeps that patient's appointments. A bare
        id is answered 422: reference parameters need the `Type/id` form (section 4)."""
        patient = request.query_params.get("patient")
        ids = _in_order(self.appointments)
        extra = ""
        if patient is not None:
            kind, _, patient_id = patient.partition("/")
            if kind != "Patient" or not patient_id or "/" in patient_id:
                return operation_outcome(422, "invalid", "patient must be Patient/{id}")
            ids = [i for i in ids if _has_patient(self.appointments[i], patient_id)]
            extra = f"&patient={quote(patient, safe='')}"
        return self._page(request, base, "Appointment", self.appointments, ids, extra)

    def _page(
        self,
        request: Request,
        base: str,
        resource_type: str,
        store: dict[str, dict[str, Any]],
        ids: list[str],
        extra: str,
    ) -> Response:
        """One page of `ids` with `total` and the `self`, `next` and `last` links (section 7)."""
        try:
            count = min(int(request.query_params.get("_count", self.page_size)), MAX_COUNT)
            page = int(request.query_params.get("page", "1") or 1)
        except ValueError:
            return operation_outcome(400, "invalid", "_count and page must be whole numbers")
        if count < 1 or page < 1:
            return operation_outcome(400, "invalid", "_count and page must be at least 1")
        last = max(1, math.ceil(len(ids) / count))
        chunk = ids[(page - 1) * count : page * count]
        search = f"{base}/{resource_type}?_count={count}{extra}&page="
        links = [{"relation": "self", "url": f"{search}{page}"}]
        if page < last:
            links.append({"relation": "next", "url": f"{search}{page + 1}"})
        links.append({"relation": "last", "url": f"{search}{last}"})
        return fhir(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(ids),
                "link": links,
                "entry": [
                    {
                        "fullUrl": f"{base}/{resource_type}/{i}",
                        "resource": _absolute(store[i], base),
                    }
                    for i in chunk
                ],
            }
        )


def _in_order(store: dict[str, Any]) -> list[str]:
    return sorted(store, key=lambda i: (len(i), i))


def _has_patient(appointment: dict[str, Any], patient_id: str) -> bool:
    return any(
        str((p.get("actor") or {}).get("reference", "")).endswith(f"/Patient/{patient_id}")
        for p in appointment.get("participant") or []
    )


def _moment(since: str) -> tuple[str, datetime]:
    """`gt` or `ge` and a time with its offset, from a `_lastUpdated` value; else ValueError."""
    prefix, moment = since[:2], datetime.fromisoformat(since[2:].replace("Z", "+00:00"))
    if prefix not in ("gt", "ge") or moment.tzinfo is None:
        raise ValueError(since)
    return prefix, moment


def _updated_after(resource: dict[str, Any], after: tuple[str, datetime] | None) -> bool:
    stamp = (resource.get("meta") or {}).get("lastUpdated")
    if after is None or stamp is None:
        return True
    prefix, moment = after
    updated = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return updated > moment if prefix == "gt" else updated >= moment


ATTACHMENT_TYPES = {
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "image/jpeg",
    "image/png",
}
MAX_ATTACHMENT = 20 * 1024 * 1024


def _note_problem(note: Any, base: str, patients: dict[str, Any]) -> Response | None:
    if not isinstance(note, dict):
        return operation_outcome(422, "invalid", "body must be a DocumentReference")
    if note.get("docStatus") not in ("preliminary", "final"):
        return operation_outcome(422, "required", "docStatus must be preliminary or final")
    if not isinstance(note.get("description"), str) or not note["description"].strip():
        return operation_outcome(422, "required", "description is required")
    patient = _referenced(note.get("subject"), base, "Patient")
    if patient is None:
        return operation_outcome(422, "required", "subject must reference a Patient")
    if patient not in patients:
        return operation_outcome(404, "not-found", "Patient not found")
    authors = [] if note.get("author") is None else note["author"]
    # Halaxy documents one author; the live API took it as an array of one (section 6).
    if not isinstance(authors, list) or len(authors) > 1:
        return operation_outcome(422, "invalid", "author takes one PractitionerRole reference")
    for author in authors:
        role = _referenced(author, base, "PractitionerRole")
        if role is None:
            return operation_outcome(422, "invalid", "author must reference a PractitionerRole")
        if not role.startswith("PR-"):
            return operation_outcome(404, "not-found", "Author not found")
    for item in note.get("content") or []:
        attachment = item.get("attachment") if isinstance(item, dict) else None
        if not isinstance(attachment, dict) or attachment.get("contentType") != "text/html":
            return operation_outcome(422, "invalid", "content supports only text/html")
    for attachment in note.get("attachments") or []:
        if not isinstance(attachment, dict):
            return operation_outcome(422, "invalid", "attachments must be objects")
        if attachment.get("contentType") not in ATTACHMENT_TYPES:
            return operation_outcome(422, "invalid", "attachment contentType not allowed")
        if not attachment.get("title"):
            return operation_outcome(422, "required", "attachment title is required")
        try:
            data = base64.b64decode(attachment.get("data", ""), validate=True)
        except (binascii.Error, ValueError):
            return operation_outcome(422, "invalid", "attachment data must be base64")
        if not data or len(data) > MAX_ATTACHMENT:
            return operation_outcome(422, "too-costly", "attachment data must be 1 byte to 20 MB")
    return None


def _referenced(value: Any, base: str, resource_type: str) -> str | None:
    """The id a Reference names on this server, absolute or as `/main/Type/id`: the docs
    write the relative form, real responses carry the absolute one (section 3)."""
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return None
    for prefix in (f"{base}/{resource_type}/", f"{urlsplit(base).path}/{resource_type}/"):
        found = reference.removeprefix(prefix)
        if found != reference and found and "/" not in found:
            return found
    return None


def _stored_note(note: dict[str, Any], number: int) -> dict[str, Any]:
    """The note as kept for inspection: attachments by size and digest, not their bytes."""
    attachments = [
        {
            "contentType": a["contentType"],
            "title": a["title"],
            "size": len(base64.b64decode(a["data"])),
            "sha256": hashlib.sha256(base64.b64decode(a["data"])).hexdigest(),
            "head": base64.b64decode(a["data"])[:8],
        }
        for a in note.get("attachments") or []
    ]
    return {**note, "id": f"DR-{number}", "attachments": attachments}


def _absolute(resource: dict[str, Any], base: str) -> dict[str, Any]:
    """Resources are stored with `{base}` placeholders; serve them with this server's base."""
    filled: dict[str, Any] = orjson.loads(orjson.dumps(resource).replace(b"{base}", base.encode()))
    return filled

"""The onboarding check of a Halaxy API key: may it do what the bridge needs?

The bridge reads Patients and Appointments and writes clinical notes. Each API key has a
permission toggle per resource (halaxy-api.md section 2), so a key that gets a token may still
be refused every sync or every note. When a connection is added, or its Halaxy key rotated, the
check makes four requests with the key:

1. `POST oauth/token`: a fresh token of its own (never the shared cache: a cached token of the
   same client id may predate a new secret, or permissions just turned on). A refused key stops
   here.
2. `GET Patient?_count=1`: reads at most one patient, kept in memory only and never logged.
3. `GET Appointment?_count=1`: the same for appointments.
4. `POST DocumentReference` with the body `{"resourceType": "DocumentReference"}`: one
   deliberately invalid note. It has no `docStatus`, `subject` or `description`, all required
   (section 6), so Halaxy cannot store it: a 400 or 422 proves the key got past authorization
   to validation, so it may write notes, and nothing was written. A 2xx would mean Halaxy
   stored an empty note: the key may write notes, and the check logs a warning with the note's
   id, to be removed in Halaxy's UI (nothing can be deleted through the API, section 7).

That a validation answer proves the permission rests on Halaxy authorizing a request before it
validates the body: the usual order, but not documented (section 9.6 does not even name the
notes permission). Which answer means what is `reading`, a pure function; `verdict` turns the
readings into the refusal. The check runs outside the key's shared rate limit (four requests,
once) and outside the auth-failure metrics: a key refused at onboarding is no connection's
failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlencode

import httpx
import orjson
import structlog

from shared.halaxy.auth import FHIR_JSON, HalaxyAccount, fetch_token
from shared.infra.errors import BridgeError, InvalidInput, Transient
from shared.infra.logs import remote_text

# The labels of the key's permission toggles (section 2). The one that allows creating
# clinical notes is unknown (section 9.6): named here after the pattern of the others.
PATIENTS_RETRIEVE = "Patients -> Retrieve"
APPOINTMENTS_RETRIEVE = "Appointments -> Retrieve"
CLINICAL_NOTES_CREATE = "Clinical Notes -> Create"

log = structlog.get_logger("halaxy_bridge.halaxy")


@dataclass(frozen=True)
class Probe:
    """One request of the check and the permission it needs."""

    permission: str
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}" + (f"?{urlencode(self.params)}" if self.params else "")


PROBES = (
    Probe(PATIENTS_RETRIEVE, "GET", "Patient", {"_count": "1"}),
    Probe(APPOINTMENTS_RETRIEVE, "GET", "Appointment", {"_count": "1"}),
    Probe(
        CLINICAL_NOTES_CREATE,
        "POST",
        "DocumentReference",
        body=orjson.dumps({"resourceType": "DocumentReference"}),
    ),
)


class Reading(Enum):
    """What one answer proves about the permission its request needs."""

    GRANTED = "granted"
    MISSING = "missing"
    UNCONFIRMED = "unconfirmed"  # an answer that proves neither
    UNAVAILABLE = "unavailable"  # Halaxy cannot answer now: ask again later


def reading(probe: Probe, status: int) -> Reading:
    if status in (408, 429) or status >= 500:
        return Reading.UNAVAILABLE
    # The token is seconds old, so a 401 is no expiry: "a missing permission gives 401/403"
    # (section 2).
    if status in (401, 403):
        return Reading.MISSING
    if 200 <= status < 300:
        return Reading.GRANTED
    if probe.body is not None and status in (400, 422):
        return Reading.GRANTED  # refused for its body, so past authorization
    return Reading.UNCONFIRMED


def verdict(answers: Sequence[tuple[Probe, int]]) -> BridgeError | None:
    """What to refuse the key with, given each probe's answer status; None if it may do all.

    `Transient` when Halaxy could not answer one; else `InvalidInput` naming each permission
    missing (and each not confirmed), one problem per permission."""
    read = [(probe, status, reading(probe, status)) for probe, status in answers]
    for probe, status, found in read:
        if found is Reading.UNAVAILABLE:
            return Transient(f"Halaxy answered {status} to {probe}")
    missing = [(probe, status) for probe, status, found in read if found is Reading.MISSING]
    unsure = [(probe, status) for probe, status, found in read if found is Reading.UNCONFIRMED]
    if not missing and not unsure:
        return None
    problems = [
        f"{probe.permission}: Halaxy answered {status} to {probe}" for probe, status in missing
    ]
    problems += [
        f"{probe.permission} not confirmed: Halaxy answered {status} to {probe}"
        for probe, status in unsure
    ]
    if missing:
        names = ", ".join(probe.permission for probe, _ in missing)
        return InvalidInput(f"the Halaxy key lacks: {names}", problems)
    return InvalidInput("the Halaxy key's permissions could not be confirmed", problems)


def check_key(http: httpx.Client, account: HalaxyAccount, user_agent: str) -> None:
    """Run the check the module describes. Raises `Permanent` if the token is refused,
    `Transient` if Halaxy cannot be reached or answer now, and `InvalidInput` naming each
    permission the key lacks."""
    token = fetch_token(
        http,
        account.base_url,
        account.client_id,
        account.client_secret.get_secret_value(),
        user_agent,
    ).access_token
    answers = []
    for probe in PROBES:
        response = _send(http, account.base_url, probe, token, user_agent)
        if probe.body is not None and response.is_success:
            log.warning(
                "halaxy.key_check_stored_a_note",
                connection_id=account.connection_id,
                document_reference_id=_id_of(response),
                detail="remove this empty note in Halaxy's UI: the API cannot delete it",
            )
        answers.append((probe, response.status_code))
    refusal = verdict(answers)
    if refusal is not None:
        raise refusal


def key_verifier(http: httpx.Client, user_agent: str) -> Callable[[HalaxyAccount], None]:
    """`check_key` over this HTTP client, as onboarding's `KeyVerifier`."""

    def verify(account: HalaxyAccount) -> None:
        check_key(http, account, user_agent)

    return verify


def _send(
    http: httpx.Client, base_url: str, probe: Probe, token: str, user_agent: str
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, "User-Agent": user_agent}
    if probe.body is not None:
        headers["Content-Type"] = FHIR_JSON
    try:
        return http.request(
            probe.method,
            f"{base_url.rstrip('/')}/{probe.path}",
            params=probe.params,
            content=probe.body,
            headers=headers,
        )
    except httpx.TransportError as exc:
        raise Transient(f"Halaxy {probe} failed ({type(exc).__name__})") from exc


def _id_of(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "unknown"
    found = body.get("id") if isinstance(body, dict) else None
    return remote_text(str(found), 64) if found else "unknown"

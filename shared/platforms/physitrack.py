"""Physitrack API v2 (therapy-platforms.md section 1.4).

`X-Api-Key` auth, with `X-Api-PMS-Name` and `X-Api-PMS-Key` for a practitioner without PT
Direct (section 1.3); each key sees only its own practitioner's clients. `POST {base}/clients`
creates with `external_id` = the Halaxy patient id; `PUT {base}/clients/{id}` replaces the
whole object (an empty PUT gets the create errors, so every field is sent each time). There is
no documented search by `external_id`, so the bridge keeps its own mapping and only pages
through `GET {base}/clients` to recover from a crash between a create and recording its id.

Programs back without the callback (sections 2.2, 2.3): `events_page` reads the practitioner's
`GET {base}/events?page=N` (parsed in `physitrack_events.py`), `client_external_id` turns the
event's client into the Halaxy patient id, and `program_pdf_url` asks
`GET {base}/clients/{id}/programs/{access_code}/exercises?format=pdf` for the PDF (202 and a
URL where the file may not exist yet). `verify` checks a practitioner's credentials.

Gender: the rule Physitrack applies today is unknown; in 2018 gender was required and only `m`
or `f` (section 1.4 [I]). `male` is sent as `m` and `female` as `f`; for any other gender
(Halaxy records `other`, `unknown` and custom genders, halaxy-api.md section 4) nothing is
sent, because sending a sex the record does not say would be wrong in a clinical record. If
Physitrack then refuses the patient for its gender (422 naming `gender`), the adapter raises
`GenderRefused`, so the sync can count the patient as one the platform cannot take rather than
retry it or dead-letter it as a fault.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from shared.infra.errors import Permanent, Transient
from shared.platforms.base import PlatformAccount, PlatformPatient
from shared.platforms.details import Gender, PatientDetails
from shared.platforms.http import (
    GenderRefused,
    PlatformNotFound,
    error_messages,
    json_body,
    json_object,
    raise_for_status,
    send,
)
from shared.platforms.physitrack_events import EventsPage, parse_events_page

GENDERS = {Gender.MALE: "m", Gender.FEMALE: "f"}
PAGE_SIZE = 200  # the Ruby client treats 200 clients as a full page
MAX_PAGES = 500


class Physitrack:
    kind = "physitrack"

    def __init__(self, account: PlatformAccount, http: httpx.Client, user_agent: str) -> None:
        self._http = http
        self._base = account.base_url.rstrip("/")
        self._headers = {
            "X-Api-Key": account.api_key.get_secret_value(),
            "User-Agent": user_agent,
        }
        if account.pms_name and account.pms_key:
            # A practitioner without PT Direct (therapy-platforms.md 1.3, mode 2).
            self._headers["X-Api-PMS-Name"] = account.pms_name
            self._headers["X-Api-PMS-Key"] = account.pms_key.get_secret_value()
        self._pms = "X-Api-PMS-Key" in self._headers

    def payload(self, details: PatientDetails) -> dict[str, Any]:
        body: dict[str, Any] = {
            "external_id": details.halaxy_id,
            "first_name": details.first_name,
            "last_name": details.last_name,
            "year_of_birth": details.birth_year,
            "email": details.email,
            "mobile_phone": details.mobile,
        }
        if details.gender in GENDERS:
            body["gender"] = GENDERS[details.gender]
        return body

    def upsert_patient(self, details: PatientDetails, platform_id: str | None) -> PlatformPatient:
        body = self.payload(details)
        if platform_id is not None:
            try:
                self._send("PUT", f"/clients/{platform_id}", body)
                return PlatformPatient(platform_id=platform_id, created=False)
            except PlatformNotFound:
                pass  # deleted in Physitrack since: create it again
        response = self._send("POST", "/clients", body)
        return PlatformPatient(platform_id=_client_id(response), created=True)

    def find_patient(self, external_id: str) -> str | None:
        for page in range(1, MAX_PAGES + 1):
            response = self._send("GET", "/clients", params={"page": str(page)})
            clients = json_object("Physitrack", response).get("clients") or []
            for client in clients:
                if isinstance(client, dict) and str(client.get("external_id")) == external_id:
                    return str(client["id"])
            if len(clients) < PAGE_SIZE:
                return None
        raise Transient("Physitrack client list ran past the page limit")

    def events_page(self, page: int) -> EventsPage:
        """Page `page` (from 1) of this practitioner's events."""
        response = self._send("GET", "/events", params={"page": str(page)})
        parsed = parse_events_page(json_body("Physitrack", response))
        if parsed is None:
            raise Transient("Physitrack answered the events page without a list of events")
        return parsed

    def client_external_id(self, client_id: str) -> str | None:
        """The `external_id` the bridge gave this client (the Halaxy patient id); None when
        this practitioner has no such client or it has none."""
        try:
            response = self._send("GET", f"/clients/{quote(client_id, safe='')}")
        except PlatformNotFound:
            return None
        external_id = json_object("Physitrack", response).get("external_id")
        return None if external_id in (None, "") else str(external_id)

    def program_pdf_url(self, client_id: str, access_code: str) -> str:
        """Where the program's PDF will be (202 and a URL, sections 1.4 and 2.3): the file may
        answer 404 or 403 until Physitrack has made it."""
        path = f"/clients/{quote(client_id, safe='')}/programs/{quote(access_code, safe='')}"
        response = self._send("GET", f"{path}/exercises", params={"format": "pdf"})
        url = json_object("Physitrack", response).get("url")
        if not isinstance(url, str) or not url:
            raise Transient("Physitrack accepted the PDF request but its answer has no url")
        return url

    def verify(self) -> None:
        """Check the credentials with the cheapest authenticated call (one page of clients)."""
        response = self._send("GET", "/clients", params={"page": "1"}, check=False)
        if response.status_code in (401, 403):
            sent = "API key, PMS name and PMS key" if self._pms else "API key"
            said = "; ".join(error_messages(response)) or "no reason given"
            raise Permanent(
                f"Physitrack refused the practitioner's {sent} ({response.status_code}: {said})"
            )
        raise_for_status("Physitrack", response)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        check: bool = True,
    ) -> httpx.Response:
        url = self._base + path
        response = send(self._http, "Physitrack", method, url, self._headers, body, params, False)
        if not check:
            return response
        messages = error_messages(response) if response.status_code == 422 else []
        if any("gender" in message.lower() for message in messages):
            raise GenderRefused(f"Physitrack refused the patient's gender: {'; '.join(messages)}")
        raise_for_status("Physitrack", response)
        return response


def _client_id(response: httpx.Response) -> str:
    client_id = json_object("Physitrack", response).get("id")
    if client_id in (None, ""):
        raise Transient("Physitrack created a client but its answer has no id")
    return str(client_id)

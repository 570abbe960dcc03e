"""Physitrack API v2 (therapy-platforms.md section 1.4).

`X-Api-Key` auth, with `X-Api-PMS-Name` and `X-Api-PMS-Key` for a practitioner without PT
Direct (section 1.3); `POST {base}/clients` creates with `external_id` = the Halaxy patient id;
`PUT {base}/clients/{id}` replaces the whole object (an empty PUT gets the create errors, so
every field is sent each time). There is no documented search by `external_id`, so the bridge
keeps its own mapping and only pages through `GET {base}/clients` to recover from a crash
between a create and recording its id.

Gender: the 2018 API accepts only `m` or `f`. For other or unknown genders no gender is sent
rather than a wrong one; if Physitrack still requires it, its 422 ("gender is missing") ends
the event in the dead letters with that reason for a person to resolve.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.infra.errors import Transient
from shared.platforms.base import PlatformAccount, PlatformPatient
from shared.platforms.details import Gender, PatientDetails
from shared.platforms.http import PlatformNotFound, json_object, send

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
                send(
                    self._http,
                    "Physitrack",
                    "PUT",
                    f"{self._base}/clients/{platform_id}",
                    self._headers,
                    body,
                )
                return PlatformPatient(platform_id=platform_id, created=False)
            except PlatformNotFound:
                pass  # deleted in Physitrack since: create it again
        response = send(
            self._http, "Physitrack", "POST", f"{self._base}/clients", self._headers, body
        )
        return PlatformPatient(platform_id=_client_id(response), created=True)

    def verify(self) -> None:
        """Check the credentials with an authenticated read of one page of clients: a 401
        is `Permanent` (refused), no answer, a 5xx or a 429 `Transient`."""
        send(
            self._http,
            "Physitrack",
            "GET",
            f"{self._base}/clients",
            self._headers,
            params={"page": "1"},
        )

    def find_patient(self, external_id: str) -> str | None:
        for page in range(1, MAX_PAGES + 1):
            response = send(
                self._http,
                "Physitrack",
                "GET",
                f"{self._base}/clients",
                self._headers,
                params={"page": str(page)},
            )
            clients = json_object("Physitrack", response).get("clients") or []
            for client in clients:
                if isinstance(client, dict) and str(client.get("external_id")) == external_id:
                    return str(client["id"])
            if len(clients) < PAGE_SIZE:
                return None
        raise Transient("Physitrack client list ran past the page limit")


def _client_id(response: httpx.Response) -> str:
    client_id = json_object("Physitrack", response).get("id")
    if client_id in (None, ""):
        raise Transient("Physitrack created a client but its answer has no id")
    return str(client_id)

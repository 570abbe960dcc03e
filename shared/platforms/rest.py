"""The bridge's own REST contract for platforms with an idempotent upsert (Theratrak-like).

`PUT {base}/patients/{external_id}` with `Authorization: Bearer <key>` and the JSON body
below; `200`/`201` with `{"id": ...}`. The contract is `docs/rest-platform.yaml`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from shared.infra.errors import Transient
from shared.platforms.base import PlatformAccount, PlatformPatient
from shared.platforms.details import PatientDetails
from shared.platforms.http import json_object, send


class RestPlatform:
    kind = "rest"

    def __init__(self, account: PlatformAccount, http: httpx.Client, user_agent: str) -> None:
        self._http = http
        self._base = account.base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {account.api_key.get_secret_value()}",
            "User-Agent": user_agent,
        }

    def payload(self, details: PatientDetails) -> dict[str, Any]:
        return {
            "external_id": details.halaxy_id,
            "first_name": details.first_name,
            "last_name": details.last_name,
            "birth_year": details.birth_year,
            "birth_date": details.birth_date.isoformat() if details.birth_date else None,
            "gender": details.gender.value,
            "email": details.email,
            "mobile_phone": details.mobile,
            "status": details.status,
        }

    def upsert_patient(self, details: PatientDetails, platform_id: str | None) -> PlatformPatient:
        url = f"{self._base}/patients/{quote(details.halaxy_id, safe='')}"
        response = send(
            self._http, "The platform", "PUT", url, self._headers, self.payload(details)
        )
        new_id = json_object("The platform", response).get("id")
        if new_id in (None, ""):
            raise Transient("the platform accepted the patient but its answer has no id")
        return PlatformPatient(platform_id=str(new_id), created=response.status_code == 201)

    def find_patient(self, external_id: str) -> str | None:
        return None  # the upsert is keyed by external id: a repeat PUT cannot duplicate

"""The interface every therapy-platform adapter offers, and what it is built from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson
from pydantic import SecretStr

from shared.platforms.details import PatientDetails


class PlatformKind(StrEnum):
    PHYSITRACK = "physitrack"
    REST = "rest"


@dataclass(frozen=True)
class PlatformAccount:
    """The clinic's account on its platform: what an adapter needs of a connection, and no
    more. `Connection.platform_account` makes one."""

    kind: PlatformKind
    base_url: str
    api_key: SecretStr
    # Physitrack's second auth mode (therapy-platforms.md 1.3): a practitioner without PT
    # Direct sends X-Api-PMS-Name and X-Api-PMS-Key besides X-Api-Key.
    pms_name: str | None = None
    pms_key: SecretStr | None = None


@dataclass(frozen=True)
class PlatformPatient:
    platform_id: str
    created: bool


class TherapyPlatform(Protocol):
    kind: str

    def payload(self, details: PatientDetails) -> dict[str, Any]:
        """What the platform stores for this patient (the body of the write)."""
        ...

    def upsert_patient(self, details: PatientDetails, platform_id: str | None) -> PlatformPatient:
        """Create the patient, or update the one with `platform_id`; full object each time."""
        ...

    def find_patient(self, external_id: str) -> str | None:
        """The platform id of the patient created with this external id, if any."""
        ...


def fingerprint(platform: TherapyPlatform, details: PatientDetails) -> str:
    """A digest of what the platform stores: equal digests mean nothing to write."""
    canonical = orjson.dumps(
        {"kind": platform.kind, "payload": platform.payload(details)}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()

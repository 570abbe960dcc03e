"""Therapy-platform adapters behind one small Protocol, and the factory that picks one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from shared.connections.model import Connection, PlatformKind
from shared.patients.mapping import PatientDetails


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


def platform_for(connection: Connection, http: httpx.Client, user_agent: str) -> TherapyPlatform:
    from shared.platforms.physitrack import Physitrack
    from shared.platforms.rest import RestPlatform

    if connection.platform is PlatformKind.PHYSITRACK:
        return Physitrack(connection, http, user_agent)
    return RestPlatform(connection, http, user_agent)

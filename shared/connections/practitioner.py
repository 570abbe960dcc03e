"""A Physitrack practitioner of a connection, and the platform account a patient goes to. Pure.

Physitrack authenticates per practitioner (therapy-platforms.md 1.3): each key sees only that
practitioner's clients, so a clinic is one set of credentials per practitioner, in either of
the two modes (own `X-Api-Key`; or key + `X-Api-PMS-Name` + `X-Api-PMS-Key`). Each one also
carries the practitioner's Physitrack `token`, which every PDF-webhook post names (2.1), and the
Halaxy `PR-` id that both books their appointments (halaxy-api.md 5: `participant[].actor` is
`PractitionerRole/PR-…`) and authors their notes (6).

Which account a patient goes to (issue 19, item 3), in order:
1. the practitioner of the patient's appointment: an appointment with X makes sure the patient
   exists in X's account, so X can assign a program;
2. else the practitioners the Patient's `generalPractitioner` names (halaxy-api.md 4:
   references to `Practitioner/PR-…`; FHIR R4 Patient.generalPractitioner, "patient's nominated
   care provider");
3. else the connection's default practitioner, else the connection's own platform account.
A patient already in an account stays there and is updated on every Patient change.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, SecretStr

from shared.platforms import PlatformAccount, PlatformKind

# The connection's own platform account (the key given at `connections add`): its links are
# kept under the bare Halaxy patient id, as before practitioners had accounts of their own.
CONNECTION_ACCOUNT: str | None = None


class Practitioner(BaseModel):
    """One Physitrack practitioner of a connection; every secret sealed at rest."""

    model_config = ConfigDict(frozen=True)

    halaxy_practitioner: str  # PR-…: books their appointments, authors their notes
    token: SecretStr  # the practitioner's Physitrack token, named by every program post
    api_key: SecretStr
    pms_name: str | None = None
    pms_key: SecretStr | None = None
    default: bool = False
    added_at: datetime
    rotated_at: datetime | None = None


@dataclass(frozen=True)
class PlatformSeat:
    """A platform account a patient can be created in: a practitioner's, or the
    connection's own (`practitioner` is `CONNECTION_ACCOUNT`)."""

    practitioner: str | None
    account: PlatformAccount


def practitioner_account(
    practitioner: Practitioner, kind: PlatformKind, base_url: str
) -> PlatformAccount:
    return PlatformAccount(
        kind=kind,
        base_url=base_url,
        api_key=practitioner.api_key,
        pms_name=practitioner.pms_name,
        pms_key=practitioner.pms_key,
    )


def token_matches(practitioner: Practitioner, token: str) -> bool:
    return secrets.compare_digest(practitioner.token.get_secret_value().encode(), token.encode())


def referenced_practitioners(references: Iterable[str]) -> list[str]:
    """The `PR-…` ids in FHIR references (absolute or relative, `Practitioner/` or
    `PractitionerRole/`), in order, once each. Halaxy writes a reference's id as its last path
    segment (halaxy-api.md 3)."""
    found: list[str] = []
    for reference in references:
        kind, _, rest = reference.rstrip("/").rpartition("/")
        if kind.rsplit("/", 1)[-1] not in {"Practitioner", "PractitionerRole"}:
            continue
        if rest.startswith("PR-") and rest not in found:
            found.append(rest)
    return found

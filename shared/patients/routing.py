"""Which platform accounts a patient is written to. Pure.

The rule (issue 19, item 3; `shared.connections.practitioner` says why):
1. every account the patient is in already: they stay, and are updated on every change;
2. the account of the practitioner the patient was just booked with (an appointment);
3. the accounts of the practitioners the Patient's `generalPractitioner` names (FHIR R4
   https://hl7.org/fhir/R4/patient-definitions.html#Patient.generalPractitioner, "Patient's
   nominated care provider"; Halaxy lists `Practitioner/PR-…` there, halaxy-api.md 4);
4. when none of these gives an account: the connection's default.
Only accounts the connection has are chosen: a PR- id with no practitioner record is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.connections.practitioner import referenced_practitioners


def accounts_for(
    patient: dict[str, Any],
    linked: Sequence[str | None],
    seats: Mapping[str, str | None],
    default: str | None,
    booked_with: str | None = None,
) -> list[str | None]:
    """The accounts to write `patient` to, in order, each once: seat keys, a practitioner's PR-
    id or None for the connection's own. `linked`: the seats the patient is in already;
    `seats`: each practitioner's PR- id to their seat (a practitioner whose account is the
    connection's own has that seat); `booked_with`: the PR- id of the practitioner an
    appointment just booked the patient with."""
    known = {None, *seats.values()}
    chosen: list[str | None] = [seat for seat in linked if seat in known]
    if booked_with is not None and booked_with in seats:
        chosen.append(seats[booked_with])
    chosen.extend(seats[pr] for pr in general_practitioners(patient) if pr in seats)
    if not chosen:
        chosen.append(default if default in known else None)
    return list(dict.fromkeys(chosen))


def general_practitioners(patient: dict[str, Any]) -> list[str]:
    """The PR- ids the Patient's `generalPractitioner` references name (Organization
    references, the clinics, are not practitioners and are passed over)."""
    references = patient.get("generalPractitioner")
    if not isinstance(references, list):
        return []
    return referenced_practitioners(
        element["reference"]
        for element in references
        if isinstance(element, dict) and isinstance(element.get("reference"), str)
    )

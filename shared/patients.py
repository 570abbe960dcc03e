"""FHIR Patient (as Halaxy returns it) to the details a therapy platform stores. Pure.

Rules from halaxy-api.md section 4: a given-only `usual` name may come before the `official`
one, so the `official` name wins, then `usual`, then the first; email is `telecom[system=email]`;
a mobile is `system=sms` or `use=mobile`, in E.164; the `patient-status` extension says more
than `active` (which is true for `contact` too). A missing first name, last name or birth year
is a typed problem, never a default: Physitrack silently uses 1960 for a missing birth year and
the patient then cannot log in (therapy-platforms.md section 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from shared.errors import Permanent

STATUS_EXTENSION = "https://terminology.halaxy.com/StructureDefinition/patient-status"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
BIRTH_DATE = re.compile(r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2}))?)?$")
NAME_PREFERENCE = ("official", "usual")
# Statuses that must not create a patient in the platform (archived, blocked, deceased) plus
# Halaxy's soft-delete status, which precedes a permanent deletion.
INACTIVE_STATUSES = frozenset({"archived", "blocked", "deceased", "deleted"})


class Gender(StrEnum):
    MALE = "male"
    FEMALE = "female"
    OTHER = "other"
    UNKNOWN = "unknown"


class PatientNotUsable(Permanent):
    """The Patient lacks what the platform needs; `problems` names the fields, not values."""

    def __init__(self, patient_id: str, problems: list[str]) -> None:
        super().__init__(f"Patient {patient_id} cannot be synced: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PatientDetails:
    halaxy_id: str
    first_name: str
    last_name: str
    birth_year: int
    birth_date: date | None
    gender: Gender
    email: str | None
    mobile: str | None
    status: str
    dropped: tuple[str, ...] = field(default=())
    """Fields Halaxy had that were unusable (e.g. a phone not in E.164), by name only."""

    @property
    def inactive(self) -> bool:
        return self.status in INACTIVE_STATUSES


def map_patient(resource: dict[str, Any], today: date | None = None) -> PatientDetails:
    """The platform-relevant details of a Halaxy Patient; raise `PatientNotUsable` if lacking."""
    patient_id = str(resource.get("id") or "")
    problems: list[str] = []
    if resource.get("resourceType") != "Patient" or not patient_id:
        raise PatientNotUsable(patient_id or "?", ["the resource is not a Patient with an id"])
    first, last = _name(resource.get("name"))
    if not first:
        problems.append("first name (name.given) is missing")
    if not last:
        problems.append("last name (name.family) is missing")
    birth_year, birth_date = _birth(resource.get("birthDate"), today or date.today())
    if birth_year is None:
        problems.append("birth year (birthDate) is missing or invalid")
    if problems or first is None or last is None or birth_year is None:
        raise PatientNotUsable(patient_id, problems)
    dropped: list[str] = []
    email = _telecom(resource, lambda t: t.get("system") == "email")
    if email is not None and not EMAIL.fullmatch(email):
        email, dropped = None, [*dropped, "email"]
    mobile = _telecom(resource, lambda t: t.get("system") == "sms") or _telecom(
        resource, lambda t: t.get("use") == "mobile" and t.get("system") in (None, "phone")
    )
    if mobile is not None:
        mobile = re.sub(r"[\s()-]", "", mobile)
        if not E164.fullmatch(mobile):
            mobile, dropped = None, [*dropped, "mobile"]
    return PatientDetails(
        halaxy_id=patient_id,
        first_name=first,
        last_name=last,
        birth_year=birth_year,
        birth_date=birth_date,
        gender=_gender(resource.get("gender")),
        email=email,
        mobile=mobile,
        status=_status(resource),
        dropped=tuple(dropped),
    )


def _name(names: Any) -> tuple[str | None, str | None]:
    if not isinstance(names, list):
        return None, None
    entries = [n for n in names if isinstance(n, dict)]
    for use in NAME_PREFERENCE:
        for entry in entries:
            if entry.get("use") == use:
                return _given(entry), _text(entry.get("family"))
    return (_given(entries[0]), _text(entries[0].get("family"))) if entries else (None, None)


def _given(entry: dict[str, Any]) -> str | None:
    given = entry.get("given")
    if isinstance(given, list) and given:
        return _text(given[0])
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def _birth(value: Any, today: date) -> tuple[int | None, date | None]:
    if not isinstance(value, str):
        return None, None
    match = BIRTH_DATE.fullmatch(value.strip())
    if match is None:
        return None, None
    year = int(match.group("year"))
    if not 1900 <= year <= today.year:
        return None, None
    if match.group("day") is None:
        return year, None
    try:
        born = date(year, int(match.group("month")), int(match.group("day")))
    except ValueError:
        return None, None
    return (year, born) if born <= today else (None, None)


def _telecom(resource: dict[str, Any], wanted: Any) -> str | None:
    telecom = resource.get("telecom")
    if not isinstance(telecom, list):
        return None
    for entry in telecom:
        if isinstance(entry, dict) and wanted(entry):
            value = _text(entry.get("value"))
            if value:
                return value
    return None


def _gender(value: Any) -> Gender:
    if value in ("male", "female", "other"):
        return Gender(value)
    if isinstance(value, str) and value.strip():
        return Gender.OTHER  # Halaxy allows custom genders
    return Gender.UNKNOWN


def _status(resource: dict[str, Any]) -> str:
    if resource.get("deceasedBoolean") is True:
        return "deceased"
    extensions = resource.get("extension")
    if isinstance(extensions, list):
        for extension in extensions:
            if isinstance(extension, dict) and extension.get("url") == STATUS_EXTENSION:
                value = _text(extension.get("valueString"))
                if value:
                    return value.lower()
    active = resource.get("active")
    return "archived" if active is False else "current"

"""What a therapy platform stores of a patient: the adapters' input, built by the patient
mapping (`shared.patients.mapping.map_patient`). Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum


class Gender(StrEnum):
    MALE = "male"
    FEMALE = "female"
    OTHER = "other"
    UNKNOWN = "unknown"


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

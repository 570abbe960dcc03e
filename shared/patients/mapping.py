"""FHIR Patient (as Halaxy returns it) to the details a therapy platform stores. Pure.

Every element is read by what the FHIR R4 specification says it means, never by its position
(the rules, with links to the spec, are in docs/field-mapping.md):

- `standing`: deceased from either `deceased[x]` form or the Halaxy `patient-status`
  extension; then that extension (halaxy-api.md section 4: `active` is true for `contact`
  too), then `active`. Only a patient in good standing is mapped.
- the name: only names in effect (`period` not ended); `official`, then `usual`, then no
  `use`, then the rest; `maiden`, `old` and `nickname` only when there is no other.
- email and mobile: never `use: old` or an ended `period`; the lowest `rank`, then document
  order. A mobile is `system: sms` or a `use: mobile` phone, in E.164.
- birth year from a full or partial `birthDate`.

A missing or malformed essential is a `PatientNotUsable` naming its reason (a `Refusal`),
never a default and never a value: Physitrack silently uses 1960 for a missing birth year and
the patient then cannot log in (therapy-platforms.md section 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from shared.halaxy.fhir import Unreadable, in_effect, is_resource_id, partial_date
from shared.infra.errors import Permanent
from shared.platforms import Gender, PatientDetails

STATUS_EXTENSION = "https://terminology.halaxy.com/StructureDefinition/patient-status"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# https://hl7.org/fhir/R4/datatypes.html#HumanName (use: https://hl7.org/fhir/R4/valueset-name-use.html)
NAME_PREFERENCE = {"official": 0, "usual": 1, None: 2}  # any other use ranks 3
NAMES_OF_LAST_RESORT = frozenset({"maiden", "old", "nickname"})
# Statuses that must not create a patient in the platform (archived, blocked), plus Halaxy's
# soft-delete status, which precedes a permanent deletion.
INACTIVE_STATUSES = frozenset({"archived", "blocked", "deleted"})
ENQUIRY_STATUSES = frozenset({"contact"})  # a Halaxy enquiry, not (yet) a patient
EARLIEST_BIRTH_YEAR = 1900


class Standing(StrEnum):
    """What the bridge may do with a patient, from their status alone."""

    SYNC = "sync"
    INACTIVE = "inactive"  # archived, blocked or deleted in Halaxy
    DECEASED = "deceased"
    ENQUIRY = "enquiry"  # Halaxy's `contact` status


class Refusal(StrEnum):
    """Why a Patient cannot be synced: a machine code, counted per connection."""

    NOT_A_PATIENT = "not_a_patient"
    BAD_ID = "bad_id"
    ID_MISMATCH = "id_mismatch"
    DECEASED_UNREADABLE = "deceased_unreadable"
    NO_NAME = "no_name"
    NO_CURRENT_NAME = "no_current_name"
    NAME_TEXT_ONLY = "name_text_only"
    FIRST_NAME_MISSING = "first_name_missing"
    LAST_NAME_MISSING = "last_name_missing"
    BIRTH_DATE_MISSING = "birth_date_missing"
    BIRTH_DATE_MALFORMED = "birth_date_malformed"
    BIRTH_DATE_OUT_OF_RANGE = "birth_date_out_of_range"


EXPLANATIONS = {
    Refusal.NOT_A_PATIENT: "the resource is not a Patient",
    Refusal.BAD_ID: "the Patient id is missing or not a usable FHIR id",
    Refusal.ID_MISMATCH: "Halaxy answered with another Patient than the one asked for",
    Refusal.DECEASED_UNREADABLE: "deceasedBoolean is not a boolean",
    Refusal.NO_NAME: "the Patient has no name",
    Refusal.NO_CURRENT_NAME: "every name's period has ended (or cannot be read)",
    Refusal.NAME_TEXT_ONLY: "the name has only text, no given or family part",
    Refusal.FIRST_NAME_MISSING: "first name (name.given) is missing",
    Refusal.LAST_NAME_MISSING: "last name (name.family) is missing",
    Refusal.BIRTH_DATE_MISSING: "birth year (birthDate) is missing",
    Refusal.BIRTH_DATE_MALFORMED: "birth year (birthDate) is not a FHIR date",
    Refusal.BIRTH_DATE_OUT_OF_RANGE: "birth year (birthDate) is before 1900 or in the future",
}


class PatientNotUsable(Permanent):
    """The Patient lacks what the platform needs. `reasons` are `Refusal` codes, `problems`
    their explanations: field names, never values."""

    def __init__(self, patient_id: str, reasons: Sequence[Refusal]) -> None:
        self.reasons = tuple(reasons)
        self.problems = [f"{EXPLANATIONS[r]} ({r.value})" for r in self.reasons]
        super().__init__(f"Patient {patient_id} cannot be synced: " + "; ".join(self.problems))

    @property
    def reason(self) -> Refusal:
        """The first reason: the one a refusal is counted under."""
        return self.reasons[0]


def checked_id(resource: Any, expected_id: str | None = None) -> str:
    """The id of a Patient resource, refusing anything else: another resource type, a
    missing or unsafe id, or (with `expected_id`) another patient than the one asked for."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise PatientNotUsable(expected_id or "?", [Refusal.NOT_A_PATIENT])
    patient_id = resource.get("id")
    if not is_resource_id(patient_id):
        raise PatientNotUsable(expected_id or "?", [Refusal.BAD_ID])
    if expected_id is not None and patient_id != expected_id:
        raise PatientNotUsable(expected_id, [Refusal.ID_MISMATCH])
    return patient_id


def patient_status(resource: dict[str, Any]) -> str:
    """`deceased`, else the Halaxy status extension's value, else from `active`."""
    if is_deceased(resource):
        return "deceased"
    extensions = resource.get("extension")
    if isinstance(extensions, list):
        for extension in extensions:
            if isinstance(extension, dict) and extension.get("url") == STATUS_EXTENSION:
                value = _text(extension.get("valueString"))
                if value:
                    return value.lower()
    return "archived" if resource.get("active") is False else "current"


def is_deceased(resource: dict[str, Any]) -> bool:
    """https://hl7.org/fhir/R4/patient-definitions.html#Patient.deceased_x_: a
    `deceasedDateTime` says the patient died (when), whatever the date: a future or malformed
    one is a data error in a record that still says "deceased", so it counts as deceased."""
    if resource.get("deceasedDateTime") is not None:
        return True
    flag = resource.get("deceasedBoolean")
    if flag is None or isinstance(flag, bool):
        return flag is True
    raise PatientNotUsable(str(resource.get("id") or "?"), [Refusal.DECEASED_UNREADABLE])


def standing_of(status: str) -> Standing:
    if status == "deceased":
        return Standing.DECEASED
    if status in INACTIVE_STATUSES:
        return Standing.INACTIVE
    if status in ENQUIRY_STATUSES:
        return Standing.ENQUIRY
    return Standing.SYNC


def assess(
    resource: Any, now: datetime, expected_id: str | None = None
) -> PatientDetails | Standing:
    """What to write for the Patient `expected_id`: its details when it is in good standing,
    else its `Standing` (never `SYNC`): a deceased, inactive or enquiry patient is not mapped
    for creation. Raises `PatientNotUsable` with its reasons."""
    checked_id(resource, expected_id)
    standing = standing_of(patient_status(resource))
    if standing is not Standing.SYNC:
        return standing
    return map_patient(resource, now)


def map_patient(resource: dict[str, Any], now: datetime) -> PatientDetails:
    """The platform-relevant details of a Halaxy Patient, as they are at `now` (an aware
    datetime from `shared.infra.clock`); raise `PatientNotUsable` naming every reason it lacks."""
    patient_id = checked_id(resource)
    status = patient_status(resource)
    reasons: list[Refusal] = []
    first = last = None
    try:
        first, last = _name(resource.get("name"), now)
    except _Refused as exc:
        reasons += exc.reasons
    birth_year, birth_date = None, None
    try:
        birth_year, birth_date = birth(resource.get("birthDate"), now.date())
    except _Refused as exc:
        reasons += exc.reasons
    if reasons or first is None or last is None or birth_year is None:
        raise PatientNotUsable(patient_id, reasons)
    dropped: list[str] = []
    email = best_telecom(resource.get("telecom"), now, _is_email)
    if email is not None and not EMAIL.fullmatch(email):
        email, dropped = None, [*dropped, "email"]
    mobile = best_telecom(resource.get("telecom"), now, _is_mobile)
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
        status=status,
        dropped=tuple(dropped),
    )


class _Refused(Exception):
    def __init__(self, *reasons: Refusal) -> None:
        self.reasons = reasons


def current_name(names: Any, now: datetime) -> dict[str, Any] | None:
    """The name FHIR says to use at `now` (https://hl7.org/fhir/R4/datatypes.html#HumanName):
    among names whose `period` has not ended, `official`, then `usual`, then one without a
    `use`, then any other; `maiden`, `old` and `nickname` only when no other is in effect.
    Ties go to document order."""
    entries = [n for n in names if isinstance(n, dict)] if isinstance(names, list) else []
    current = [n for n in entries if in_effect(n.get("period"), now)]
    preferred = [n for n in current if _use(n) not in NAMES_OF_LAST_RESORT] or current
    ranked = sorted(
        enumerate(preferred), key=lambda item: (NAME_PREFERENCE.get(_use(item[1]), 3), item[0])
    )
    return ranked[0][1] if ranked else None


def _use(name: dict[str, Any]) -> str | None:
    """A name's `use`; one that is not a code (a list, an object) ranks as an unknown use."""
    use = name.get("use")
    return use if use is None or isinstance(use, str) else "(not a code)"


def _name(names: Any, now: datetime) -> tuple[str, str]:
    if not isinstance(names, list) or not any(isinstance(n, dict) for n in names):
        raise _Refused(Refusal.NO_NAME)
    chosen = current_name(names, now)
    if chosen is None:
        raise _Refused(Refusal.NO_CURRENT_NAME)
    first, last = _given(chosen), _text(chosen.get("family"))
    if first is None and last is None and _text(chosen.get("text")):
        # A text-only name is refused, not split: "Jane Marie Citizen" has no reliable family
        # part (family-first names, multi-word surnames), and a wrong surname on a clinical
        # record is worse than a patient the clinic is asked to complete in Halaxy.
        raise _Refused(Refusal.NAME_TEXT_ONLY)
    missing = [Refusal.FIRST_NAME_MISSING] if first is None else []
    missing += [Refusal.LAST_NAME_MISSING] if last is None else []
    if first is None or last is None:
        raise _Refused(*missing)
    return first, last


def _given(entry: dict[str, Any]) -> str | None:
    given = entry.get("given")
    if isinstance(given, list) and given:
        return _text(given[0])  # given names are in presentation order: the first is first
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def birth(value: Any, today: date) -> tuple[int, date | None]:
    """The birth year (and the full date when there is one) from a FHIR `date`
    (https://hl7.org/fhir/R4/datatypes.html#date): YYYY, YYYY-MM and YYYY-MM-DD all give
    the year. It must be 1900 or later, and not after `today`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Refused(Refusal.BIRTH_DATE_MISSING)
    try:
        first, last = partial_date(value)
    except Unreadable:
        raise _Refused(Refusal.BIRTH_DATE_MALFORMED) from None
    if first.year < EARLIEST_BIRTH_YEAR or first > today:
        raise _Refused(Refusal.BIRTH_DATE_OUT_OF_RANGE)
    return first.year, (first if first == last else None)


def telecom_candidates(
    telecom: Any, now: datetime, wanted: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The wanted contact points with a value, in the order FHIR says to prefer them
    (https://hl7.org/fhir/R4/datatypes.html#ContactPoint): never `use: old` or an ended
    `period`; the lowest `rank` first (1 is the most preferred; no rank after every rank),
    then document order."""
    entries: Iterable[Any] = telecom if isinstance(telecom, list) else []
    usable = [
        (index, entry)
        for index, entry in enumerate(entries)
        if isinstance(entry, dict)
        and wanted(entry)
        and _text(entry.get("value"))
        and entry.get("use") != "old"
        and in_effect(entry.get("period"), now)
    ]
    return [entry for _, entry in sorted(usable, key=lambda item: (_rank(item[1]), item[0]))]


def best_telecom(
    telecom: Any, now: datetime, wanted: Callable[[dict[str, Any]], bool]
) -> str | None:
    candidates = telecom_candidates(telecom, now, wanted)
    return _text(candidates[0].get("value")) if candidates else None


def _rank(entry: dict[str, Any]) -> float:
    rank = entry.get("rank")
    if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1:
        return rank
    return float("inf")


def _is_email(entry: dict[str, Any]) -> bool:
    return entry.get("system") == "email"


def _is_mobile(entry: dict[str, Any]) -> bool:
    # Halaxy writes mobiles as `system: sms, use: mobile` (halaxy-api.md section 4).
    system = entry.get("system")
    return system == "sms" or (system in (None, "phone") and entry.get("use") == "mobile")


def _gender(value: Any) -> Gender:
    if value in ("male", "female", "other"):
        return Gender(value)
    if isinstance(value, str) and value.strip():
        return Gender.OTHER  # Halaxy allows custom genders
    return Gender.UNKNOWN

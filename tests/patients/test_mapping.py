"""map_patient: Halaxy's Patient to the platform's fields, on the documented quirks and on
what the FHIR R4 spec says each element means. Dates are derived from the product's clock."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sandbox.halaxy import patient_resource
from shared.infra.clock import utcnow
from shared.patients.mapping import (
    PatientNotUsable,
    Refusal,
    Standing,
    assess,
    map_patient,
    patient_status,
    standing_of,
)
from shared.platforms import Gender, PatientDetails

NOW = utcnow()
YEAR = NOW.year


def test_official_name_wins_over_a_leading_usual_one() -> None:
    details = map_patient(patient_resource("42", given="Jane", preferred="Janie"), NOW)
    assert (details.first_name, details.last_name) == ("Jane", "Citizen")


def test_usual_name_then_first_name_as_fallbacks() -> None:
    resource = patient_resource("42")
    resource["name"] = [
        {"use": "nickname", "given": ["JJ"], "family": "C"},
        {"use": "usual", "given": ["Janie"], "family": "Citizen"},
    ]
    assert map_patient(resource, NOW).first_name == "Janie"
    resource["name"] = [{"given": ["Jo"], "family": "Bloggs"}]
    assert (map_patient(resource, NOW).first_name, map_patient(resource, NOW).last_name) == (
        "Jo",
        "Bloggs",
    )


def test_contact_fields_status_and_birth() -> None:
    details = map_patient(patient_resource("42"), NOW)
    assert details.email == "jane.citizen@example.com"
    assert details.mobile == "+61412345678"  # the sms entry, not the landline
    assert (details.birth_year, details.birth_date) == (1984, date(1984, 7, 21))
    assert details.gender is Gender.FEMALE
    assert details.status == "current"
    assert standing_of(details.status) is Standing.SYNC


def test_mobile_by_use_when_no_sms_entry_and_spaces_removed() -> None:
    resource = patient_resource("42", mobile=None)
    resource["telecom"].append({"system": "phone", "use": "mobile", "value": "+61 400 111 222"})
    assert map_patient(resource, NOW).mobile == "+61400111222"


def test_unusable_phone_and_email_are_dropped_by_name() -> None:
    resource = patient_resource("42", mobile="0400 111 222", email="not-an-email")
    details = map_patient(resource, NOW)
    assert (details.mobile, details.email) == (None, None)
    assert details.dropped == ("email", "mobile")


@pytest.mark.parametrize(
    ("status", "standing"),
    [
        ("archived", Standing.INACTIVE),
        ("blocked", Standing.INACTIVE),
        ("deleted", Standing.INACTIVE),
        ("deceased", Standing.DECEASED),
        ("contact", Standing.ENQUIRY),
    ],
)
def test_statuses_that_are_not_written(status: str, standing: Standing) -> None:
    assert assess(patient_resource("42", status=status), NOW) is standing


def test_status_falls_back_to_active_and_deceased_flag() -> None:
    resource = patient_resource("42")
    del resource["extension"]
    resource["active"] = False
    assert patient_status(resource) == "archived"
    resource["active"] = True
    resource["deceasedBoolean"] = True
    assert patient_status(resource) == "deceased"


def test_birth_year_only_is_enough() -> None:
    details = map_patient(patient_resource("42", birth_date="1990"), NOW)
    assert (details.birth_year, details.birth_date) == (1990, None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"birthDate": None}, "birth year"),
        ({"birthDate": "1850-01-01"}, "birth year"),
        ({"birthDate": f"{YEAR + 1}-01-01"}, "birth year"),
        ({"birthDate": "1990-02-30"}, "birth year"),
        ({"name": [{"use": "official", "family": "Citizen"}]}, "first name"),
        ({"name": [{"use": "official", "given": ["Jane"]}]}, "last name"),
        ({"name": []}, "has no name"),
    ],
)
def test_missing_essentials_are_typed_problems_never_defaults(
    change: dict[str, Any], problem: str
) -> None:
    resource = {**patient_resource("42"), **change}
    with pytest.raises(PatientNotUsable) as caught:
        map_patient(resource, NOW)
    assert any(problem in p for p in caught.value.problems)
    assert "Jane" not in str(caught.value)
    assert "Citizen" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "gender"),
    [
        ("male", Gender.MALE),
        ("Non-binary", Gender.OTHER),
        (None, Gender.UNKNOWN),
        ("other", Gender.OTHER),
    ],
)
def test_gender(value: str | None, gender: Gender) -> None:
    assert map_patient({**patient_resource("42"), "gender": value}, NOW).gender is gender


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=15,
)


@given(
    field=st.sampled_from(["name", "telecom", "birthDate", "gender", "extension", "active", "id"]),
    value=json_values,
)
def test_any_field_value_maps_or_is_a_typed_problem(field: str, value: Any) -> None:
    resource = {**patient_resource("42"), field: value}
    try:
        details = map_patient(resource, NOW)
    except PatientNotUsable as exc:
        assert exc.problems
    else:
        assert details.first_name
        assert details.last_name
        assert 1900 <= details.birth_year <= YEAR
        assert details.mobile is None or details.mobile.startswith("+")


# --- Rules from the FHIR R4 specification (docs/field-mapping.md) ---------------------------


def with_names(*names: dict[str, Any]) -> dict[str, Any]:
    return {**patient_resource("42"), "name": list(names)}


def with_telecom(*telecom: dict[str, Any]) -> dict[str, Any]:
    return {**patient_resource("42"), "telecom": list(telecom)}


def names_of(resource: dict[str, Any]) -> tuple[str, str]:
    details = map_patient(resource, NOW)
    return details.first_name, details.last_name


def refusal(resource: dict[str, Any]) -> tuple[Refusal, ...]:
    with pytest.raises(PatientNotUsable) as caught:
        assess(resource, NOW, "42")
    return caught.value.reasons


@pytest.mark.parametrize(
    "deceased",
    [
        {"deceasedDateTime": f"{YEAR - 2}-03-04"},
        {"deceasedDateTime": f"{YEAR - 1}-03-04T10:00:00+10:00"},
        {"deceasedDateTime": f"{YEAR - 5}"},
        {"deceasedDateTime": f"{YEAR + 1}-01-01"},  # in the future: still says "deceased"
        {"deceasedBoolean": True},
    ],
)
def test_either_deceased_form_means_deceased_even_when_the_status_says_current(
    deceased: dict[str, Any],
) -> None:
    resource = patient_resource("42")  # status `current`, deceasedBoolean false
    del resource["deceasedBoolean"]  # deceased[x] is one element: one form at a time
    resource.update(deceased)  # both forms here, the sandbox's `died` only the dateTime
    assert patient_status(resource) == "deceased"
    assert assess(resource, NOW, "42") is Standing.DECEASED


def test_deceased_boolean_false_is_alive() -> None:
    resource = {**patient_resource("42"), "deceasedBoolean": False}
    assert isinstance(assess(resource, NOW, "42"), PatientDetails)


def test_a_deceased_flag_that_is_not_a_boolean_is_a_named_refusal() -> None:
    assert refusal({**patient_resource("42"), "deceasedBoolean": "yes"}) == (
        Refusal.DECEASED_UNREADABLE,
    )


def test_an_ended_official_name_gives_way_to_the_current_one() -> None:
    resource = with_names(
        {"use": "official", "given": ["Jane"], "family": "Old", "period": {"end": f"{YEAR - 3}"}},
        {"use": "official", "given": ["Jane"], "family": "Citizen"},
    )
    assert names_of(resource) == ("Jane", "Citizen")


def test_a_name_ending_this_year_or_later_is_still_current() -> None:
    resource = with_names(
        {"use": "usual", "given": ["Janie"], "family": "Later"},
        {"use": "official", "given": ["Jane"], "family": "Now", "period": {"end": f"{YEAR}"}},
    )
    assert names_of(resource) == ("Jane", "Now")


def test_a_name_that_has_not_started_yet_is_not_current() -> None:
    resource = with_names(
        {
            "use": "official",
            "given": ["Jane"],
            "family": "Next",
            "period": {"start": f"{YEAR + 1}"},
        },
        {"use": "usual", "given": ["Jane"], "family": "Citizen"},
    )
    assert names_of(resource) == ("Jane", "Citizen")


def test_without_official_or_usual_a_name_without_use_beats_maiden_and_old() -> None:
    resource = with_names(
        {"use": "maiden", "given": ["Jane"], "family": "Maiden"},
        {"use": "old", "given": ["Jane"], "family": "Former"},
        {"use": "temp", "given": ["Jane"], "family": "Temp"},
        {"given": ["Jane"], "family": "Plain"},
    )
    assert names_of(resource) == ("Jane", "Plain")


def test_maiden_old_and_nickname_only_when_nothing_else_exists() -> None:
    resource = with_names(
        {"use": "nickname", "given": ["JJ"], "family": "C"},
        {"use": "temp", "given": ["Jane"], "family": "Temp"},
    )
    assert names_of(resource) == ("Jane", "Temp")
    assert names_of(with_names({"use": "maiden", "given": ["Jane"], "family": "Maiden"})) == (
        "Jane",
        "Maiden",
    )


def test_only_ended_names_is_a_named_refusal() -> None:
    ended = {"use": "official", "given": ["J"], "family": "C", "period": {"end": f"{YEAR - 1}"}}
    assert refusal(with_names(ended)) == (Refusal.NO_CURRENT_NAME,)


def test_a_text_only_name_is_refused_not_split() -> None:
    assert refusal(with_names({"use": "official", "text": "Jane Marie Citizen"})) == (
        Refusal.NAME_TEXT_ONLY,
    )


def test_an_empty_name_list_is_a_named_refusal() -> None:
    assert refusal(with_names()) == (Refusal.NO_NAME,)


def test_email_and_mobile_by_rank_not_position() -> None:
    resource = with_telecom(
        {"system": "email", "value": "second@example.com", "rank": 2},
        {"system": "sms", "use": "mobile", "value": "+61400000002", "rank": 2},
        {"system": "email", "value": "first@example.com", "rank": 1},
        {"system": "sms", "use": "mobile", "value": "+61400000001", "rank": 1},
        {"system": "email", "value": "unranked@example.com"},
    )
    details = map_patient(resource, NOW)
    assert (details.email, details.mobile) == ("first@example.com", "+61400000001")


def test_old_and_ended_contact_points_are_never_sent() -> None:
    resource = with_telecom(
        {"system": "email", "value": "ended@example.com", "period": {"end": f"{YEAR - 6}-05"}},
        {"system": "email", "use": "old", "value": "old@example.com", "rank": 1},
        {"system": "sms", "value": "+61400000009", "period": {"end": f"{YEAR - 6}-05-01"}},
        {"system": "phone", "use": "old", "value": "+61400000008"},
        {"system": "email", "value": "now@example.com", "rank": 3},
        {"system": "phone", "use": "mobile", "value": "+61400000001"},
    )
    details = map_patient(resource, NOW)
    assert (details.email, details.mobile) == ("now@example.com", "+61400000001")


def test_a_landline_is_never_the_mobile() -> None:
    resource = with_telecom({"system": "phone", "use": "home", "value": "+61299998888", "rank": 1})
    assert map_patient(resource, NOW).mobile is None


@pytest.mark.parametrize(
    ("value", "year", "full"),
    [
        ("1974-05-06", 1974, date(1974, 5, 6)),
        ("1974-05", 1974, None),
        ("1974", 1974, None),
    ],
)
def test_full_and_partial_birth_dates_give_the_year(
    value: str, year: int, full: date | None
) -> None:
    details = map_patient(patient_resource("42", birth_date=value), NOW)
    assert (details.birth_year, details.birth_date) == (year, full)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1974-13", Refusal.BIRTH_DATE_MALFORMED),
        ("19x4", Refusal.BIRTH_DATE_MALFORMED),
        ("1974-02-30", Refusal.BIRTH_DATE_MALFORMED),
        ("74-01-01", Refusal.BIRTH_DATE_MALFORMED),
        ("1974-01-01T00:00:00Z", Refusal.BIRTH_DATE_MALFORMED),
        ("1899-12-31", Refusal.BIRTH_DATE_OUT_OF_RANGE),
        (f"{YEAR + 1}", Refusal.BIRTH_DATE_OUT_OF_RANGE),
    ],
)
def test_malformed_birth_dates_are_named_refusals(value: str, reason: Refusal) -> None:
    assert refusal(patient_resource("42", birth_date=value)) == (reason,)


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ({"resourceType": "Appointment", "id": "42"}, Refusal.NOT_A_PATIENT),
        ({**patient_resource("42"), "id": None}, Refusal.BAD_ID),
        ({**patient_resource("42"), "id": ".."}, Refusal.BAD_ID),
        ({**patient_resource("42"), "id": "9" * 65}, Refusal.BAD_ID),
        (patient_resource("43"), Refusal.ID_MISMATCH),
    ],
)
def test_what_is_not_the_patient_asked_for_is_a_named_refusal(
    resource: dict[str, Any], reason: Refusal
) -> None:
    assert refusal(resource) == (reason,)


def test_a_refusal_names_every_reason_and_no_value() -> None:
    resource = {**with_names({"use": "official", "given": ["Jane"]}), "birthDate": "1974-13"}
    with pytest.raises(PatientNotUsable) as caught:
        map_patient(resource, NOW)
    assert caught.value.reasons == (Refusal.LAST_NAME_MISSING, Refusal.BIRTH_DATE_MALFORMED)
    assert "Jane" not in str(caught.value)
    assert "1974" not in str(caught.value)


@pytest.mark.parametrize("use", [["official"], {"code": "official"}, 7])
def test_a_name_use_that_is_not_a_code_ranks_as_an_unknown_use_never_a_crash(use: Any) -> None:
    resource = with_names(
        {"use": use, "given": ["Odd"], "family": "Shape"},
        {"given": ["Plain"], "family": "Name"},  # no use: ranks before an unknown one
    )
    assert names_of(resource) == ("Plain", "Name")

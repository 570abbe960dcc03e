"""map_patient: Halaxy's Patient to the platform's fields, on the documented quirks."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sandbox.halaxy import patient_resource
from shared.patients import Gender, PatientNotUsable, map_patient

TODAY = date(2026, 11, 21)


def test_official_name_wins_over_a_leading_usual_one() -> None:
    details = map_patient(patient_resource("42", given="Jane", preferred="Janie"), TODAY)
    assert (details.first_name, details.last_name) == ("Jane", "Citizen")


def test_usual_name_then_first_name_as_fallbacks() -> None:
    resource = patient_resource("42")
    resource["name"] = [
        {"use": "nickname", "given": ["JJ"], "family": "C"},
        {"use": "usual", "given": ["Janie"], "family": "Citizen"},
    ]
    assert map_patient(resource, TODAY).first_name == "Janie"
    resource["name"] = [{"given": ["Jo"], "family": "Bloggs"}]
    assert (map_patient(resource, TODAY).first_name, map_patient(resource, TODAY).last_name) == (
        "Jo",
        "Bloggs",
    )


def test_contact_fields_status_and_birth() -> None:
    details = map_patient(patient_resource("42"), TODAY)
    assert details.email == "jane.citizen@example.com"
    assert details.mobile == "+61412345678"  # the sms entry, not the landline
    assert (details.birth_year, details.birth_date) == (1984, date(1984, 7, 21))
    assert details.gender is Gender.FEMALE
    assert details.status == "current"
    assert not details.inactive


def test_mobile_by_use_when_no_sms_entry_and_spaces_removed() -> None:
    resource = patient_resource("42", mobile=None)
    resource["telecom"].append({"system": "phone", "use": "mobile", "value": "+61 400 111 222"})
    assert map_patient(resource, TODAY).mobile == "+61400111222"


def test_unusable_phone_and_email_are_dropped_by_name() -> None:
    resource = patient_resource("42", mobile="0400 111 222", email="not-an-email")
    details = map_patient(resource, TODAY)
    assert (details.mobile, details.email) == (None, None)
    assert details.dropped == ("email", "mobile")


@pytest.mark.parametrize("status", ["archived", "blocked", "deceased", "deleted"])
def test_inactive_statuses(status: str) -> None:
    assert map_patient(patient_resource("42", status=status), TODAY).inactive


def test_status_falls_back_to_active_and_deceased_flag() -> None:
    resource = patient_resource("42")
    del resource["extension"]
    resource["active"] = False
    assert map_patient(resource, TODAY).status == "archived"
    resource["active"] = True
    resource["deceasedBoolean"] = True
    assert map_patient(resource, TODAY).status == "deceased"


def test_birth_year_only_is_enough() -> None:
    details = map_patient(patient_resource("42", birth_date="1990"), TODAY)
    assert (details.birth_year, details.birth_date) == (1990, None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"birthDate": None}, "birth year"),
        ({"birthDate": "1850-01-01"}, "birth year"),
        ({"birthDate": "2030-01-01"}, "birth year"),
        ({"birthDate": "1990-02-30"}, "birth year"),
        ({"name": [{"use": "official", "family": "Citizen"}]}, "first name"),
        ({"name": [{"use": "official", "given": ["Jane"]}]}, "last name"),
        ({"name": []}, "first name"),
    ],
)
def test_missing_essentials_are_typed_problems_never_defaults(
    change: dict[str, Any], problem: str
) -> None:
    resource = {**patient_resource("42"), **change}
    with pytest.raises(PatientNotUsable) as caught:
        map_patient(resource, TODAY)
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
    assert map_patient({**patient_resource("42"), "gender": value}, TODAY).gender is gender


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
        details = map_patient(resource, TODAY)
    except PatientNotUsable as exc:
        assert exc.problems
    else:
        assert details.first_name
        assert details.last_name
        assert 1900 <= details.birth_year <= TODAY.year
        assert details.mobile is None or details.mobile.startswith("+")

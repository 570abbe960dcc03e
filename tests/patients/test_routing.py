"""Which platform accounts a patient goes to (shared/patients/routing.py): the rule, and that
no input can make it choose an account the connection does not have."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.patients.routing import accounts_for, general_practitioners

SEATS: dict[str, str | None] = {"PR-1": "PR-1", "PR-2": "PR-2", "PR-3": "PR-3"}
KNOWN: set[str | None] = {None, *SEATS.values()}


def patient(*references: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "generalPractitioner": [{"reference": r} for r in references],
    }


def test_an_appointment_puts_the_patient_in_its_practitioners_account() -> None:
    assert accounts_for(patient(), [], SEATS, None, booked_with="PR-2") == ["PR-2"]


def test_accounts_the_patient_is_in_already_stay_and_a_new_booking_adds_one() -> None:
    assert accounts_for(patient(), ["PR-1"], SEATS, None, booked_with="PR-2") == ["PR-1", "PR-2"]


def test_without_a_booking_the_general_practitioner_chooses() -> None:
    chosen = accounts_for(
        patient(
            "https://au-api.halaxy.com/main/Organization/CL-9",  # a clinic: not a practitioner
            "https://au-api.halaxy.com/main/Practitioner/PR-3",
        ),
        [],
        SEATS,
        "PR-1",
    )
    assert chosen == ["PR-3"]


def test_with_nothing_else_the_default_practitioner_then_the_connection_account() -> None:
    assert accounts_for(patient(), [], SEATS, "PR-1") == ["PR-1"]
    assert accounts_for(patient(), [], SEATS, None) == [None]


def test_a_practitioner_the_connection_does_not_have_is_passed_over() -> None:
    chosen = accounts_for(patient("/main/Practitioner/PR-77"), [], SEATS, None, "PR-88")
    assert chosen == [None]


def test_a_practitioner_whose_account_is_the_connections_own_takes_its_seat() -> None:
    """Their key is the connection's own: their patients are the connection account's."""
    seats = {**SEATS, "PR-4": None}
    assert accounts_for(patient(), [None], seats, None, booked_with="PR-4") == [None]
    assert accounts_for(patient("/main/Practitioner/PR-4"), [], seats, "PR-1") == [None]


def test_general_practitioners_read_relative_and_absolute_references() -> None:
    assert general_practitioners(
        patient("/main/Practitioner/PR-1", "https://x/main/PractitionerRole/PR-2", "Patient/PR-3")
    ) == ["PR-1", "PR-2"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
seats = st.sampled_from([None, "PR-1", "PR-2", "PR-3", "PR-9", "EP-1"])


@given(
    gp=json_values,
    linked=st.lists(seats, max_size=4),
    default=seats,
    booked=st.none() | seats,
)
def test_any_patient_gets_at_least_one_known_account_each_once(
    gp: Any, linked: list[str | None], default: str | None, booked: str | None
) -> None:
    chosen = accounts_for({"generalPractitioner": gp}, linked, SEATS, default, booked)
    assert chosen
    assert len(chosen) == len(set(chosen))
    assert all(seat in KNOWN for seat in chosen)
    assert all(seat in chosen for seat in linked if seat in KNOWN)

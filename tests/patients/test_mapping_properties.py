"""Generated FHIR Patients (tests/fhir_strategies.py) drive the mapping: whatever comes, it
maps by the rules of docs/field-mapping.md or refuses with a named reason, nothing else.

The expected choices are computed here independently of shared/patients/mapping.py, from how the
strategy built each period (a year or more from now), not by calling the code under test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import time_machine
from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.infra.clock import utcnow
from shared.patients.mapping import (
    E164,
    EMAIL,
    EXPLANATIONS,
    PatientNotUsable,
    Refusal,
    Standing,
    assess,
    map_patient,
)
from shared.platforms import PatientDetails
from tests.fhir_strategies import ordinary_patients, patients

NOW = utcnow()
LAST_RESORT = {"maiden", "old", "nickname"}
NAME_RANK = {"official": 0, "usual": 1, None: 2}


def in_effect(period: Any) -> bool:
    """The strategy's periods: None, or bounds a year or more away from NOW."""
    if period is None:
        return True
    if not isinstance(period, dict):
        return False
    try:
        start = int(period["start"][:4]) if "start" in period else None
        end = int(period["end"][:4]) if "end" in period else None
    except ValueError:
        return False
    return (start is None or start < NOW.year) and (end is None or end > NOW.year)


def expected_name(names: Any) -> dict[str, Any] | None:
    entries = [n for n in names if isinstance(n, dict)] if isinstance(names, list) else []
    current = [n for n in entries if in_effect(n.get("period"))]
    usual = [n for n in current if n.get("use") not in LAST_RESORT]
    pool = usual or current
    best = None
    for entry in pool:  # first of the best rank, in document order
        if best is None or NAME_RANK.get(entry.get("use"), 3) < NAME_RANK.get(best.get("use"), 3):
            best = entry
    return best


def expected_telecom(telecom: Any, mobile: bool) -> str | None:
    best: tuple[float, int] | None = None
    value = None
    for index, entry in enumerate(telecom if isinstance(telecom, list) else []):
        system, use = entry.get("system"), entry.get("use")
        wanted = (
            (system == "sms" or (system in (None, "phone") and use == "mobile"))
            if mobile
            else system == "email"
        )
        text = entry.get("value")
        if not wanted or use == "old" or not in_effect(entry.get("period")):
            continue
        if not isinstance(text, str) or not text.strip():
            continue
        rank = entry.get("rank")
        key = (
            rank
            if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1
            else float("inf"),
            index,
        )
        if best is None or key < best:
            best, value = key, " ".join(text.split())
    return value


def is_deceased(resource: dict[str, Any]) -> bool:
    status = [
        e.get("valueString")
        for e in resource.get("extension", [])
        if e["url"].endswith("patient-status")
    ]
    return (
        resource.get("deceasedBoolean") is True
        or resource.get("deceasedDateTime") is not None
        or (status[:1] == ["deceased"])
    )


@settings(max_examples=400, deadline=None)
@given(resource=patients(NOW))
def test_the_mapping_follows_the_rules_or_refuses_with_a_reason(resource: dict[str, Any]) -> None:
    check_mapping(resource)


@settings(max_examples=300, deadline=None)
@given(resource=ordinary_patients(NOW))
def test_the_chosen_name_email_and_mobile_follow_the_rules(resource: dict[str, Any]) -> None:
    check_mapping(resource)


def check_mapping(resource: dict[str, Any]) -> None:
    try:
        found = assess(resource, NOW, "42")
    except PatientNotUsable as exc:
        assert exc.reasons
        assert all(isinstance(r, Refusal) for r in exc.reasons)
        # The message is made of the reasons' explanations alone: no value from the record.
        assert str(exc) == "Patient 42 cannot be synced: " + "; ".join(
            f"{EXPLANATIONS[r]} ({r.value})" for r in exc.reasons
        )
        chosen = expected_name(resource.get("name"))
        if Refusal.NO_CURRENT_NAME in exc.reasons:
            assert chosen is None
        if Refusal.FIRST_NAME_MISSING in exc.reasons:
            assert chosen is not None
            assert not any(isinstance(g, str) and g.strip() for g in chosen.get("given", [])[:1])
        if Refusal.LAST_NAME_MISSING in exc.reasons:
            assert chosen is not None
            assert not (isinstance(chosen.get("family"), str) and chosen["family"].strip())
        event(f"refused: {exc.reason.value}")
        return
    if is_deceased(resource):
        assert found is Standing.DECEASED  # never mapped for creation
        event("deceased")
        return
    if isinstance(found, Standing):
        assert found is not Standing.SYNC
        event(f"not written: {found.value}")
        return
    assert isinstance(found, PatientDetails)
    name = expected_name(resource.get("name"))
    assert name is not None
    assert found.first_name == " ".join(name["given"][0].split())
    assert found.last_name == " ".join(name["family"].split())
    assert 1900 <= found.birth_year <= NOW.year
    email = expected_telecom(resource.get("telecom"), mobile=False)
    assert found.email == (email if email and EMAIL.fullmatch(email) else None)
    mobile = expected_telecom(resource.get("telecom"), mobile=True)
    mobile = re.sub(r"[\s()-]", "", mobile) if mobile else None
    assert found.mobile == (mobile if mobile and E164.fullmatch(mobile) else None)
    event("mapped")


@settings(max_examples=200, deadline=None)
@given(resource=patients(NOW))
def test_map_patient_never_raises_anything_but_a_refusal(resource: dict[str, Any]) -> None:
    try:
        map_patient(resource, NOW)
    except PatientNotUsable as exc:
        assert exc.reasons


@given(year_end=st.sampled_from(["", "-12", "-12-31", "-12-31T23:59:59+00:00"]))
def test_a_name_is_current_until_its_end_is_over_on_the_products_clock(year_end: str) -> None:
    year = NOW.year + 2
    resource = {
        "resourceType": "Patient",
        "id": "42",
        "birthDate": "1980",
        "name": [
            {
                "use": "official",
                "given": ["A"],
                "family": "Ended",
                "period": {"end": f"{year}{year_end}"},
            },
            {"use": "usual", "given": ["A"], "family": "Later"},
        ],
    }
    with time_machine.travel(datetime(year, 12, 31, 23, 59, 0, tzinfo=UTC), tick=False):
        assert map_patient(resource, utcnow()).last_name == "Ended"
    with time_machine.travel(datetime(year + 1, 1, 1, 0, 0, 1, tzinfo=UTC), tick=False):
        assert map_patient(resource, utcnow()).last_name == "Later"

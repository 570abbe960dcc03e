"""The mapping over HL7's own published FHIR R4 example Patients (hl7.fhir.r4.examples 4.0.1,
the npm package the FHIR package registry also serves; `scripts/ensure_tools.sh` fetches its
Patient files into .cache/). Records we did not write: a deceased patient by `deceasedDateTime`
(pat3), names with `maiden` and ended periods, contact points with ranks and an ended one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.infra.clock import utcnow
from shared.patients.mapping import PatientDetails, PatientNotUsable, Refusal, Standing, assess

EXAMPLES = Path(__file__).parents[2] / ".cache" / "hl7.fhir.r4.examples-4.0.1" / "package"
FILES = sorted(EXAMPLES.glob("Patient-*.json")) if EXAMPLES.is_dir() else []

pytestmark = pytest.mark.skipif(
    not FILES,
    reason=f"HL7's example Patients are not in {EXAMPLES} (scripts/ensure_tools.sh fetches them)",
)


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"Patient-{name}.json").read_text())
    return loaded


def test_the_package_holds_the_published_patients() -> None:
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_published_patient_is_mapped_skipped_or_refused_by_name(path: Path) -> None:
    resource = json.loads(path.read_text())
    try:
        outcome = assess(resource, utcnow(), expected_id=resource["id"])
    except PatientNotUsable as refused:
        assert refused.reasons
        assert all(isinstance(reason, Refusal) for reason in refused.reasons)
        return
    died = resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource
    if died:
        assert outcome is Standing.DECEASED
    if isinstance(outcome, PatientDetails):
        assert not died
        assert outcome.halaxy_id == resource["id"]


def test_a_patient_published_with_a_deceased_date_time_is_never_mapped_for_creation() -> None:
    assert assess(example("pat3"), utcnow()) is Standing.DECEASED  # deceasedDateTime 2015
    assert assess(example("pat4"), utcnow()) is Standing.DECEASED  # deceasedBoolean true


def test_the_official_name_wins_over_usual_and_maiden_and_rank_picks_the_phone() -> None:
    details = assess(example("example"), utcnow())
    assert isinstance(details, PatientDetails)
    assert (details.first_name, details.last_name, details.birth_year) == (
        "Peter",
        "Chalmers",
        1974,
    )
    # The only mobile is "(03) 3410 5613", national form: not E.164, so dropped by name.
    assert details.mobile is None
    assert "mobile" in details.dropped


def test_a_married_name_is_taken_over_the_maiden_one() -> None:
    details = assess(example("infant-mom"), utcnow())
    assert isinstance(details, PatientDetails)
    assert (details.first_name, details.last_name) == ("Leia", "Solo")


def test_a_usual_name_and_home_email_are_used_when_there_is_no_official_one() -> None:
    details = assess(example("f001"), utcnow())
    assert isinstance(details, PatientDetails)
    assert (details.first_name, details.last_name) == ("Pieter", "van de Heuvel")
    assert details.email == "p.heuvel@gmail.com"


def test_a_published_patient_without_a_name_is_refused_naming_why() -> None:
    with pytest.raises(PatientNotUsable) as refused:
        assess(example("newborn"), utcnow())
    assert Refusal.NO_NAME in refused.value.reasons

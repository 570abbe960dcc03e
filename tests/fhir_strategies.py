"""Hypothesis strategies for FHIR R4 Patients as practices hold them, and worse.

Names with every `use` and periods ended, ongoing, not yet started or unreadable; telecoms
with systems, uses, ranks and periods; both `deceased[x]` forms; full, partial and malformed
birth dates; unicode and very long names; extensions; contained resources. Periods are built
a year or more away from `now`, so a test can tell by the year alone whether one is in effect
(the boundaries themselves have their own tests).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from shared.patients.mapping import STATUS_EXTENSION

NAME_USES = ["usual", "official", "temp", "nickname", "anonymous", "old", "maiden", None]
SYSTEMS = ["phone", "fax", "email", "pager", "url", "sms", "other", None]
TELECOM_USES = ["home", "work", "temp", "old", "mobile", None]
STATUSES = ["current", "contact", "claimant", "archived", "blocked", "deceased", "deleted"]
MALFORMED_DATES = ["1974-13", "19x4", "1974-02-30", "74", "1974-1-1", "", "1974-01-01T10:00"]

names_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
) | st.text(min_size=200, max_size=400)  # very long names (and blank ones)


def year_strings(years: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """A FHIR date or dateTime of that year, at year, month, day or second precision."""
    return st.tuples(years, st.integers(1, 12), st.integers(1, 28), st.sampled_from("YMDT")).map(
        lambda t: {
            "Y": f"{t[0]:04d}",
            "M": f"{t[0]:04d}-{t[1]:02d}",
            "D": f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}",
            "T": f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T08:30:00+10:00",
        }[t[3]]
    )


def periods(now: datetime) -> st.SearchStrategy[Any]:
    past = year_strings(st.integers(1950, now.year - 1))
    future = year_strings(st.integers(now.year + 1, now.year + 30))
    return st.one_of(
        st.none(),  # no period: in effect
        st.fixed_dictionaries({"end": past}),  # ended
        st.fixed_dictionaries({"start": past}),  # ongoing
        st.fixed_dictionaries({"start": past, "end": future}),  # ongoing
        st.fixed_dictionaries({"start": future}),  # not started yet
        st.fixed_dictionaries({"end": st.sampled_from(MALFORMED_DATES)}),  # unreadable
        st.just("2001"),  # not even an object
    )


def optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), values.map(lambda value: {key: value}))


def rarely(values: st.SearchStrategy[Any], otherwise: Any) -> st.SearchStrategy[Any]:
    """A value from `values` about one time in four, else `otherwise` (Hypothesis has no
    weights, and a branch of one_of that is a constant is drawn seldom)."""
    return st.tuples(st.booleans(), st.booleans(), values).map(
        lambda t: t[2] if t[0] and t[1] else otherwise
    )


def likely(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Present about three times in four: most records are ordinary."""
    return st.tuples(st.booleans(), st.booleans(), values).map(
        lambda t: {} if t[0] and t[1] else {key: t[2]}
    )


def human_names(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda use, given, family, text, period: {**use, **given, **family, **text, **period},
        optional("use", st.sampled_from(NAME_USES)),
        likely("given", st.lists(names_text, min_size=1, max_size=3)),
        likely("family", names_text),
        optional("text", names_text),
        optional("period", periods(now)),
    )


def contact_points(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    values = st.one_of(
        st.from_regex(r"\+61[45]\d{8}", fullmatch=True),
        st.from_regex(r"[a-z]{1,8}@example\.(com|org)", fullmatch=True),
        st.text(max_size=20),
    )
    return st.builds(
        lambda system, use, rank, value, period: {**system, **use, **rank, **value, **period},
        optional("system", st.sampled_from(SYSTEMS)),
        optional("use", st.sampled_from(TELECOM_USES)),
        optional("rank", st.integers(-1, 5) | st.just("1")),
        optional("value", values),
        optional("period", periods(now)),
    )


def birth_dates(now: datetime) -> st.SearchStrategy[Any]:
    return st.one_of(
        year_strings(st.integers(1890, now.year + 2)).map(lambda v: v.partition("T")[0]),
        year_strings(st.integers(1900, now.year - 1)).map(lambda v: v.partition("T")[0]),
        st.sampled_from(MALFORMED_DATES),
        st.none(),
        st.integers(1900, 2000),
    )


def deceased(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    return rarely(
        st.one_of(
            st.booleans().map(lambda flag: {"deceasedBoolean": flag}),
            year_strings(st.integers(1950, now.year + 5)).map(lambda v: {"deceasedDateTime": v}),
            st.sampled_from(MALFORMED_DATES).map(lambda v: {"deceasedDateTime": v}),
        ),
        {},
    )


extensions = st.lists(
    st.one_of(
        st.sampled_from(["current"] * 6 + STATUSES).map(
            lambda s: {"url": STATUS_EXTENSION, "valueString": s}
        ),
        st.builds(lambda v: {"url": "https://example.org/x", "valueString": v}, st.text()),
    ),
    max_size=3,
)
contained = st.lists(
    st.fixed_dictionaries(
        {
            "resourceType": st.sampled_from(["Patient", "RelatedPerson", "Organization"]),
            "id": st.from_regex(r"c[0-9]{1,3}", fullmatch=True),
            "name": st.just([{"use": "official", "given": ["Contained"], "family": "Person"}]),
        }
    ),
    max_size=2,
)


def name_elements(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    """A list of names three times in four; else no `name`, or an empty list."""
    return st.tuples(
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.lists(human_names(now), min_size=1, max_size=4),
    ).map(lambda t: ({} if t[2] else {"name": []}) if t[0] and t[1] else {"name": t[3]})


def patients(now: datetime, patient_id: str = "42") -> st.SearchStrategy[dict[str, Any]]:
    """A Patient with the given id; every element optional, any of them odd."""
    return st.builds(
        lambda names, telecom, birth, dead, ext, inner, active, gender: {
            "resourceType": "Patient",
            "id": patient_id,
            **names,
            **telecom,
            **birth,
            **dead,
            **ext,
            **inner,
            **active,
            **gender,
        },
        name_elements(now),
        optional("telecom", st.lists(contact_points(now), max_size=6)),
        likely("birthDate", birth_dates(now)),
        deceased(now),
        optional("extension", extensions),
        optional("contained", contained),
        rarely(st.booleans().map(lambda active: {"active": active}), {}),
        optional("gender", st.sampled_from(["male", "female", "other", "unknown", "Non-binary"])),
    )


def ordinary_patients(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    """Alive, current, born in a plain year, with at least one name and contact point: the
    records whose name, email and mobile are chosen (rather than refused outright)."""
    return st.builds(
        lambda names, telecom, born: {
            "resourceType": "Patient",
            "id": "42",
            "name": names,
            "telecom": telecom,
            "birthDate": born,
        },
        st.lists(human_names(now), min_size=1, max_size=5),
        st.lists(contact_points(now), min_size=1, max_size=8),
        st.integers(1900, now.year - 1).map(str),
    )

"""FHIR R4 datatypes read by what the specification says they mean. Pure.

Only what the bridge needs: resource ids, (partial) dates and dateTimes, and whether a
`Period` is in effect at a given moment. Every function takes the moment it compares with as
an argument (from `shared.infra.clock`), so it can be tested at any date.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeGuard

# https://hl7.org/fhir/R4/datatypes.html#id: 1 to 64 of A-Z a-z 0-9 - and '.'.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# https://hl7.org/fhir/R4/datatypes.html#date: YYYY, YYYY-MM or YYYY-MM-DD, no time zone.
DATE = re.compile(r"(?P<y>[0-9]{4})(-(?P<m>0[1-9]|1[0-2])(-(?P<d>0[1-9]|[12][0-9]|3[01]))?)?")
# https://hl7.org/fhir/R4/datatypes.html#dateTime: a date, or a full date and time that
# then SHALL carry a time zone.
DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?)"
    r"(?P<time>T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
    r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?"
)


class Unreadable(ValueError):
    """A value that does not follow its FHIR datatype's grammar."""


def is_resource_id(value: object) -> TypeGuard[str]:
    """A FHIR id that is safe as a URL path segment: FHIR's grammar allows '.' and '..',
    which a URL library resolves as dot segments (RFC 3986 section 5.2.4), so those and
    other dots-only ids are refused."""
    return (
        isinstance(value, str) and FHIR_ID.fullmatch(value) is not None and value.strip(".") != ""
    )


def partial_date(value: object) -> tuple[date, date]:
    """The first and last day a FHIR `date` (YYYY, YYYY-MM or YYYY-MM-DD) covers; a day that
    does not exist (1990-02-30) is `Unreadable` like any other malformed value."""
    if not isinstance(value, str):
        raise Unreadable("not a string")
    match = DATE.fullmatch(value)
    if match is None:
        raise Unreadable("not a FHIR date")
    return _span(int(match["y"]), match["m"], match["d"])


def _span(year: int, month: str | None, day: str | None) -> tuple[date, date]:
    try:
        if month is None:
            return date(year, 1, 1), date(year, 12, 31)
        if day is None:
            first = date(year, int(month), 1)
            following = date(year + (first.month == 12), first.month % 12 + 1, 1)
            return first, following - timedelta(days=1)
        exact = date(year, int(month), int(day))
    except ValueError:
        raise Unreadable("no such day") from None
    return exact, exact


def date_time_bounds(value: object) -> tuple[datetime, datetime]:
    """The first and last instant (UTC) a FHIR `dateTime` covers. A value with no time
    covers whole days, taken in UTC (the spec leaves their zone open)."""
    if not isinstance(value, str):
        raise Unreadable("not a string")
    match = DATE_TIME.fullmatch(value)
    if match is None:
        raise Unreadable("not a FHIR dateTime")
    if match["time"] is not None:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(":60", ":59"))
        except ValueError:
            raise Unreadable("no such moment") from None
        return moment.astimezone(UTC), moment.astimezone(UTC)
    first, last = partial_date(match["date"])
    return (
        datetime.combine(first, time.min, UTC),
        datetime.combine(last, time.max, UTC),
    )


def in_effect(period: Any, now: datetime) -> bool:
    """Whether an element with this `period` applies at `now`
    (https://hl7.org/fhir/R4/datatypes.html#Period).

    No period, or one without bounds, applies always; a missing end means "ongoing"; the end
    includes the whole of its (partial) value, so an end of 2012 is over only once 2012 is. A
    period that has not started yet does not apply either. A period that cannot be read is
    taken as not in effect: the bridge never sends a detail it cannot tell is current.
    """
    if period is None:
        return True
    if not isinstance(period, dict):
        return False
    try:
        if period.get("start") is not None and date_time_bounds(period["start"])[0] > now:
            return False
        if period.get("end") is not None and date_time_bounds(period["end"])[1] < now:
            return False
    except Unreadable:
        return False
    return True


def last_updated(resource: Any) -> datetime | None:
    """When this version of the resource last changed: `meta.lastUpdated`, an `instant`
    (https://hl7.org/fhir/R4/resource.html#Meta). `meta.versionId` is opaque (it changes
    with each version but does not order them), so versions are ordered by this alone; None
    when the resource does not say or says it unreadably."""
    meta = resource.get("meta") if isinstance(resource, dict) else None
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        return date_time_bounds(value)[0]
    except Unreadable:
        return None

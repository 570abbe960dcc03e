"""One note id per Physitrack program, however and whenever it arrives (shared/notes/claims.py),
against the real Redis."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.infra.clock import utcnow
from shared.infra.store import Keys
from shared.notes.claims import WINDOW, ProgramClaims

EXAMPLES = itertools.count()


def claim(
    claims: ProgramClaims, moment: datetime, updated: bool = False, name: str = "Knee"
) -> str:
    return claims.note_id("cn_claims", "PR-1", "1001", name, moment, updated)


def test_arrivals_near_one_moment_share_a_note_and_one_further_away_does_not(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    claims = ProgramClaims(redis_server_client, keys)
    moment = utcnow().replace(microsecond=0)
    first = claim(claims, moment)
    assert claim(claims, moment + timedelta(minutes=2)) == first  # the poll's `created`
    assert claim(claims, moment - timedelta(minutes=3)) == first
    assert claim(claims, moment + WINDOW + timedelta(seconds=1)) != first  # a later update
    assert claim(claims, moment, updated=True) != first  # an update is a note of its own
    assert claim(claims, moment, name="Shoulder") != first


def test_the_day_boundary_does_not_split_one_program(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """Just before and just after UTC midnight (10-11 am in an Australian clinic)."""
    claims = ProgramClaims(redis_server_client, keys)
    midnight = datetime.combine(utcnow().date(), datetime.min.time(), UTC)
    assert claim(claims, midnight - timedelta(seconds=20)) == claim(
        claims, midnight + timedelta(seconds=20)
    )


def test_a_webhook_and_a_poll_claiming_at_once_get_one_id(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    claims = ProgramClaims(redis_server_client, keys)
    moment = utcnow().replace(microsecond=0)
    offsets = [timedelta(seconds=n) for n in range(-60, 60, 5)]
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda offset: claim(claims, moment + offset, name="Race"), offsets))
    assert len(ids) == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(gaps=st.lists(st.integers(min_value=0, max_value=3 * 3600), min_size=1, max_size=8))
def test_moments_further_apart_than_the_window_are_notes_of_their_own(
    redis_server_client: redis.Redis, keys: Keys, gaps: list[int]
) -> None:
    claims = ProgramClaims(redis_server_client, Keys(f"{keys.namespace}-{next(EXAMPLES)}"))
    start = utcnow().replace(microsecond=0)
    moments = sorted({start + timedelta(seconds=g) for g in gaps})
    ids = [claim(claims, m) for m in moments]
    for (earlier, earlier_id), (later, later_id) in itertools.pairwise(
        zip(moments, ids, strict=True)
    ):
        if later - earlier > 2 * WINDOW:
            assert earlier_id != later_id
        if later - earlier <= WINDOW and earlier_id == ids[0] and earlier == moments[0]:
            assert later_id == earlier_id  # within the window of the first claim
    assert [claim(claims, m) for m in moments] == ids  # asked again: the same ids

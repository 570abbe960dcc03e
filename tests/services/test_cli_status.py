"""`halaxy-bridge status` as a table: it fits 120 columns and never prints `None`."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from services.cli.main import cli
from services.cli.status import WIDTH, _text
from services.sandbox.halaxy import FakeHalaxy
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.ops.queued import QueuedMessages
from shared.ops.status import iso
from shared.patients.mapping import Refusal
from shared.patients.reconcile import SweepKind
from shared.telemetry.activity import NOT_SYNCED
from tests.conftest import make_connection

# No capital N: a clinic called "Nonesuch" must not pass for a `None` the table printed.
NAMES = st.text(alphabet=string.ascii_lowercase + string.digits + " -'&.()", max_size=200)
COUNTS = st.integers(min_value=0, max_value=10**7)
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # any moment: the table reads ages against generated_at


def moments() -> st.SearchStrategy[str | None]:
    seconds_back = st.floats(min_value=0, max_value=5 * 365 * 86400, allow_nan=False)
    return st.one_of(
        st.none(), seconds_back.map(lambda s: iso((NOW - timedelta(seconds=s)).timestamp()))
    )


@st.composite
def connection_rows(draw: st.DrawFn) -> dict[str, Any]:
    sweep = draw(moments())
    return {
        "id": "cn_" + draw(st.text(alphabet=string.ascii_lowercase, min_size=12, max_size=12)),
        "name": draw(NAMES.filter(str.strip)),
        "enabled": draw(st.booleans()),
        "created_at": iso(NOW.timestamp()),
        "last_event_at": draw(moments()),
        "last_success_at": draw(moments()),
        "failures_last_hour": draw(COUNTS),
        "processed_last_hour": draw(COUNTS),
        "last_sweep": sweep,
        "last_sweep_kind": None if sweep is None else draw(st.sampled_from(SweepKind)).value,
        "dead_letters": draw(COUNTS),
        "parked_notes": draw(COUNTS),
        "failed_notes": draw(COUNTS),
        "patients_not_synced": {outcome: draw(COUNTS) for outcome in NOT_SYNCED},
        "patients_refused": draw(st.dictionaries(st.sampled_from(Refusal), COUNTS, max_size=3)),
        "queues": {
            queue: {
                "queued": draw(COUNTS),
                "delayed": draw(COUNTS),
                "oldest_age_seconds": draw(st.none() | st.floats(0, 10**8, allow_nan=False)),
            }
            for queue in ("live", "storm", "bulk")
        },
        "paused": draw(st.booleans()),
        "paused_at": draw(moments()),
        "held_messages": draw(COUNTS),
        "oldest_held_at": draw(moments()),
    }


@st.composite
def queue_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [
        {
            "queue": name,
            "depth": draw(COUNTS),
            "taken": draw(COUNTS),
            "delayed": draw(COUNTS),
            "queued": draw(COUNTS),
            "dead": draw(COUNTS),
            "oldest_age_seconds": draw(st.none() | st.floats(0, 10**8, allow_nan=False)),
            "throughput_per_minute": draw(st.floats(0, 10**5, allow_nan=False)),
        }
        for name in ("live", "storm", "bulk")
    ]


@st.composite
def liveness(draw: st.DrawFn, scheduler: bool) -> dict[str, Any]:
    seen = draw(moments())
    part: dict[str, Any] = {
        "alive": 0 if seen is None else draw(st.integers(0, 1000)),
        "last_seen_at": seen,
        "instances": [],
    }
    if scheduler:
        part["leader"] = draw(st.none() | st.text(string.hexdigits, min_size=12, max_size=12))
    return part


@given(
    connections=st.lists(connection_rows(), max_size=4),
    queues=queue_rows(),
    totals=st.tuples(COUNTS, COUNTS, COUNTS),
    warnings=st.lists(st.text(alphabet=string.ascii_lowercase + " ", max_size=400), max_size=2),
    workers=liveness(scheduler=False),
    scheduler=liveness(scheduler=True),
)
def test_the_status_table_fits_120_columns_and_never_says_none(
    connections: list[dict[str, Any]],
    queues: list[dict[str, Any]],
    totals: tuple[int, int, int],
    warnings: list[str],
    workers: dict[str, Any],
    scheduler: dict[str, Any],
) -> None:
    text = _text(
        {
            "generated_at": iso(NOW.timestamp()),
            "queues": queues,
            "connections": connections,
            "dead_letters": totals[0],
            "parked_notes": totals[1],
            "failed_notes": totals[2],
            "unrouted_programs": totals[2],
            "redis_warnings": warnings,
            "workers": workers,
            "scheduler": scheduler,
        }
    )

    assert max(len(line) for line in text.splitlines()) <= WIDTH, text
    assert "None" not in text
    for row in connections:
        assert row["id"] in text
        if row["last_event_at"] is None:
            assert "never" in text


def test_status_of_a_connection_nothing_has_happened_to_yet(
    settings: Settings, store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    long_name = "The Long Established Physiotherapy and Sports Injury Clinic of Somewhere " * 2
    connection = make_connection(store, fake_halaxy, verify_key, name=long_name)

    result = CliRunner().invoke(
        cli, ["status"], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "None" not in result.stdout
    [row] = [line for line in lines if line.startswith(connection.id)]
    assert row.count("never") == 3  # no event, no success, no sweep yet
    assert row.endswith("…")
    assert long_name[:12] in row


def test_ages_are_read_against_the_time_of_the_status(settings: Settings) -> None:
    now = utcnow().replace(microsecond=0)
    row = {
        "id": "cn_aaaaaaaaaaaa",
        "name": "Clinic",
        "enabled": True,
        "created_at": now.isoformat(),
        "last_event_at": (now - timedelta(seconds=42)).isoformat(),
        "last_success_at": (now - timedelta(hours=3, minutes=5)).isoformat(),
        "failures_last_hour": 0,
        "processed_last_hour": 0,
        "last_sweep": (now - timedelta(days=2)).isoformat(),
        "last_sweep_kind": "backfill",
        "dead_letters": 0,
        "parked_notes": 0,
        "failed_notes": 0,
        "patients_not_synced": dict.fromkeys(NOT_SYNCED, 0),
        "patients_refused": {},
        "paused": False,
        "paused_at": None,
        "held_messages": 0,
        "oldest_held_at": None,
    }
    text = _text(
        {
            "generated_at": now.isoformat(),
            "queues": [],
            "connections": [row],
            "dead_letters": 0,
            "parked_notes": 0,
            "failed_notes": 0,
            "unrouted_programs": 0,
            "redis_warnings": [],
        }
    )

    [line] = [line for line in text.splitlines() if line.startswith("cn_")]
    assert "42s ago" in line
    assert "3h ago" in line
    assert "2d ago (backfill)" in line


def liveness_lines(workers: dict[str, Any] | None, scheduler: dict[str, Any] | None) -> list[str]:
    now = utcnow().replace(microsecond=0)
    data: dict[str, Any] = {
        "generated_at": now.isoformat(),
        "queues": [],
        "connections": [],
        "dead_letters": 0,
        "parked_notes": 0,
        "failed_notes": 0,
        "unrouted_programs": 0,
        "redis_warnings": [],
    }
    if workers is not None:
        data["workers"] = workers
    if scheduler is not None:
        data["scheduler"] = scheduler
    lines = _text(data).splitlines()
    return [line for line in lines if line.startswith(("workers:", "scheduler:"))]


def test_liveness_lines_say_none_seen_none_alive_or_how_many_and_who_leads() -> None:
    now = utcnow().replace(microsecond=0)
    seen = (now - timedelta(minutes=12)).isoformat()
    never = {"alive": 0, "last_seen_at": None, "instances": []}
    assert liveness_lines(never, {**never, "leader": None}) == [
        "workers: NONE SEEN in the last day",
        "scheduler: NONE SEEN in the last day",
    ]
    dead = {"alive": 0, "last_seen_at": seen, "instances": []}
    assert liveness_lines(dead, {**dead, "leader": None}) == [
        "workers: NONE ALIVE (last heartbeat 12m ago)",
        "scheduler: NONE ALIVE (last heartbeat 12m ago)",
    ]
    fresh = (now - timedelta(seconds=3)).isoformat()
    up = {"alive": 2, "last_seen_at": fresh, "instances": []}
    assert liveness_lines(up, {**up, "alive": 1, "leader": "abc123"}) == [
        "workers: 2 alive (last heartbeat 3s ago)",
        "scheduler: 1 alive, leader abc123 (last heartbeat 3s ago)",
    ]
    assert liveness_lines(up, {**up, "alive": 1, "leader": None})[1] == (
        "scheduler: 1 alive, NO LEADER (last heartbeat 3s ago)"
    )
    # A status from before heartbeats.
    assert liveness_lines(None, None) == ["workers: not reported", "scheduler: not reported"]


def test_status_lists_the_connections_with_queued_messages(
    settings: Settings,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    busy = make_connection(store, fake_halaxy, verify_key, name="Busy")
    idle = make_connection(store, fake_halaxy, verify_key, name="Idle")
    queued = QueuedMessages(redis_server_client, keys)
    now = epoch_seconds()
    queued.add(busy.id, "live", "m-1", now - 125)
    queued.add(busy.id, "bulk.DQ", "m-2", now + 60)  # delayed: not due yet

    result = CliRunner().invoke(
        cli, ["status"], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index(
        "queued per connection (unfinished messages; oldest due: how long it has waited):"
    )
    assert lines[start + 1].split() == [
        "ID", "LIVE", "QUEUED", "LIVE", "DELAYED", "LIVE", "OLDEST", "DUE",
        "BULK", "QUEUED", "BULK", "DELAYED", "BULK", "OLDEST", "DUE",
    ]  # fmt: skip
    assert lines[start + 2].split() == [busy.id, "1", "0", "2m", "1", "1", "—"]
    assert idle.id not in "\n".join(lines[start:])
    assert "workers: NONE SEEN in the last day" in lines

"""Holding a paused connection's messages and releasing them in order (real Redis, no worker).

The worker side (a held message is skipped, not run, not counted as a failure) and the whole
pipeline are in tests/services/test_pause_pipeline.py.
"""

from __future__ import annotations

import dramatiq
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.connections import RELEASED, HeldMessage, PausedConnections
from shared.connections.pause import HELD_MESSAGE
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.store import Keys
from shared.ops import QueuedMessages
from tests.helpers import queued_messages

CONNECTION = "cn_pausedclinic1"
OTHER = "cn_runningclinic"


@pytest.fixture
def pauses(redis_server_client: redis.Redis, keys: Keys) -> PausedConnections:
    return PausedConnections(redis_server_client, keys)


def message(resource_id: str, connection_id: str = CONNECTION, **options: object) -> bytes:
    """A Dramatiq message as a worker holds it (taken off the live queue)."""
    return dramatiq.Message(
        queue_name="live",
        actor_name="sync_patient",
        args=(),
        kwargs={
            "connection_id": connection_id,
            "resource_id": resource_id,
            "event": "patient-updated",
            "event_id": f"ev-{resource_id}",
        },
        options={"redis_message_id": f"r-{resource_id}", **options},
    ).encode()


def released_ids(client: redis.Redis, keys: Keys, queue: str = "live") -> list[str]:
    return [m["kwargs"]["resource_id"] for m in queued_messages(client, keys, queue)]


def test_a_message_is_held_only_while_its_connection_is_paused(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    assert not pauses.hold(CONNECTION, "live", message("1"), released=False)
    assert pauses.pause(CONNECTION, "ops", utcnow())
    assert not pauses.pause(CONNECTION, "someone else", utcnow())  # paused already
    assert pauses.hold(CONNECTION, "live", message("2"), released=False)
    assert pauses.hold(CONNECTION, "live", message("3", **{RELEASED: True}), released=True)
    assert not pauses.hold(OTHER, "live", message("4", OTHER), released=False)

    holding = pauses.holding([CONNECTION, OTHER])
    assert holding[CONNECTION].is_paused
    assert holding[CONNECTION].paused is not None
    assert holding[CONNECTION].paused.by == "ops"
    assert holding[CONNECTION].held == 2
    assert holding[CONNECTION].oldest_held_at is not None
    assert (holding[OTHER].is_paused, holding[OTHER].held) == (False, 0)
    assert queued_messages(redis_server_client, keys) == []  # held, not queued


def test_release_puts_the_held_messages_back_in_the_order_they_were_held(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    pauses.pause(CONNECTION, "ops", utcnow())
    for n in range(7):
        pauses.hold(CONNECTION, "live", message(str(n), eta=123), released=False)
    pauses.hold(CONNECTION, "bulk.DQ", message("bulk-1"), released=False)

    assert pauses.release(CONNECTION) == 0  # still paused: nothing moves
    assert pauses.resume(CONNECTION)
    assert not pauses.resume(CONNECTION)
    assert pauses.release(CONNECTION, batch=3) == 8

    assert released_ids(redis_server_client, keys) == [str(n) for n in range(7)]
    assert released_ids(redis_server_client, keys, "bulk") == ["bulk-1"]
    queued = queued_messages(redis_server_client, keys) + queued_messages(
        redis_server_client, keys, "bulk"
    )
    for each in queued:
        assert each["options"][RELEASED] is True
        assert "eta" not in each["options"]
        # A new Redis id, the one the queue knows the message by (as RedisBroker.enqueue).
        assert each["options"]["redis_message_id"].count("-") == 4
    assert {m["queue_name"] for m in queued} == {"live", "bulk"}
    assert pauses.holding([CONNECTION])[CONNECTION].held == 0
    # Counted among the connection's queued messages, as every other enqueue is.
    counted = QueuedMessages(redis_server_client, keys).read([CONNECTION], epoch_seconds())
    assert (counted[CONNECTION]["live"].queued, counted[CONNECTION]["bulk"].queued) == (7, 1)


def test_new_messages_wait_behind_held_ones_until_they_are_released(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A resume under way: the pause is lifted, older messages are still held. A new message
    of the connection goes behind them, not ahead; a released one runs."""
    pauses.pause(CONNECTION, "ops", utcnow())
    pauses.hold(CONNECTION, "live", message("old-1"), released=False)
    pauses.hold(CONNECTION, "live", message("old-2"), released=False)
    pauses.resume(CONNECTION)

    assert pauses.hold(CONNECTION, "live", message("new"), released=False)
    assert not pauses.hold(CONNECTION, "live", message("old-1"), released=True)
    assert pauses.release(CONNECTION) == 3
    assert released_ids(redis_server_client, keys) == ["old-1", "old-2", "new"]
    assert not pauses.hold(CONNECTION, "live", message("after"), released=False)  # all out


def test_a_pause_during_the_release_stops_it_and_keeps_the_rest(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    pauses.pause(CONNECTION, "ops", utcnow())
    for n in range(6):
        pauses.hold(CONNECTION, "live", message(str(n)), released=False)
    pauses.resume(CONNECTION)
    assert pauses.release(CONNECTION, batch=2, max_batches=1) == 2
    pauses.pause(CONNECTION, "ops", utcnow())

    assert pauses.release(CONNECTION, batch=2) == 0
    assert pauses.holding([CONNECTION])[CONNECTION].held == 4
    pauses.resume(CONNECTION)
    assert pauses.release(CONNECTION, batch=2) == 4
    assert released_ids(redis_server_client, keys) == [str(n) for n in range(6)]


def test_a_resume_cut_short_is_finished_later_with_nothing_lost_or_repeated(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A resume that dies between two batches (kill -9): each batch is put on the queue and
    taken off the held list in one Lua step, so the next release (the scheduler's) goes on
    from where it stopped."""
    pauses.pause(CONNECTION, "ops", utcnow())
    for n in range(10):
        pauses.hold(CONNECTION, "live", message(str(n)), released=False)
    pauses.resume(CONNECTION)

    assert pauses.release(CONNECTION, batch=4, max_batches=1) == 4  # ...and the process dies
    assert released_ids(redis_server_client, keys) == ["0", "1", "2", "3"]
    assert pauses.release(CONNECTION, batch=4) == 6  # the scheduler's next tick

    assert released_ids(redis_server_client, keys) == [str(n) for n in range(10)]


def test_two_releases_of_one_list_at_once_move_each_message_once(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    """A release reads a batch, then moves it only if it is still the head of the list: the
    batch another process moved meanwhile (a resume and the scheduler together) is not moved
    a second time."""
    pauses.pause(CONNECTION, "ops", utcnow())
    for n in range(4):
        pauses.hold(CONNECTION, "live", message(str(n)), released=False)
    pauses.resume(CONNECTION)
    head = redis_server_client.lrange(keys.held_messages(CONNECTION), 0, 1)

    assert pauses.release(CONNECTION, batch=2, max_batches=1) == 2  # the other process
    assert pauses._release_batch(CONNECTION, [bytes(h) for h in head]) == -2  # stale: nothing

    assert released_ids(redis_server_client, keys) == ["0", "1"]
    assert pauses.release(CONNECTION) == 2
    assert released_ids(redis_server_client, keys) == ["0", "1", "2", "3"]


def test_an_unreadable_held_record_is_dropped_and_the_rest_released(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    pauses.pause(CONNECTION, "ops", utcnow())
    pauses.hold(CONNECTION, "live", message("1"), released=False)
    redis_server_client.rpush(keys.held_messages(CONNECTION), b"not a held record")
    pauses.hold(CONNECTION, "live", message("2"), released=False)
    pauses.resume(CONNECTION)

    assert pauses.release(CONNECTION) == 2
    assert released_ids(redis_server_client, keys) == ["1", "2"]
    assert pauses.holding([CONNECTION])[CONNECTION].held == 0


def test_forget_erases_the_pause_and_what_was_held(
    pauses: PausedConnections, redis_server_client: redis.Redis, keys: Keys
) -> None:
    pauses.pause(CONNECTION, "ops", utcnow())
    pauses.hold(CONNECTION, "live", message("1"), released=False)
    pauses.pause(OTHER, "ops", utcnow())

    assert pauses.forget(CONNECTION) == 1
    assert not pauses.is_paused(CONNECTION)
    assert pauses.paused_ids() == {OTHER}
    assert redis_server_client.exists(keys.held_messages(CONNECTION)) == 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.sampled_from(["hold", "hold", "hold", "pause", "resume", "release-one"]),
        min_size=1,
        max_size=25,
    )
)
def test_whatever_the_order_of_pauses_and_resumes_each_message_runs_once_in_order(
    redis_server_client: redis.Redis, keys: Keys, steps: list[str]
) -> None:
    """Messages arrive, the connection is paused and resumed, releases stop part-way: in the
    end every message has run or been queued once, in the order it arrived."""
    redis_server_client.delete(
        keys.paused_connections(),
        keys.held_messages(CONNECTION),
        keys.dramatiq_queue("live"),
        keys.dramatiq_messages("live"),
    )
    pauses = PausedConnections(redis_server_client, keys)
    ran: list[str] = []  # messages a worker ran at once (neither paused nor behind held ones)
    arrived = 0
    for step in steps:
        if step == "hold":
            arrived += 1
            if not pauses.hold(CONNECTION, "live", message(str(arrived)), released=False):
                ran.append(str(arrived))
        elif step == "pause":
            pauses.pause(CONNECTION, "ops", utcnow())
        elif step == "resume":
            pauses.resume(CONNECTION)
        else:
            pauses.release(CONNECTION, batch=1, max_batches=1)
            ran += _run_queued(redis_server_client, keys)
    pauses.resume(CONNECTION)
    pauses.release(CONNECTION)
    ran += _run_queued(redis_server_client, keys)

    assert ran == [str(n) for n in range(1, arrived + 1)]


def _run_queued(client: redis.Redis, keys: Keys) -> list[str]:
    """What a worker would run now, in queue order; the queue emptied."""
    ids = released_ids(client, keys)
    client.delete(keys.dramatiq_queue("live"), keys.dramatiq_messages("live"))
    return ids


def test_a_held_record_keeps_the_message_as_the_worker_took_it() -> None:
    raw = message("1")
    record = HeldMessage(held_at=utcnow(), queue="live", message=raw.decode())
    back = HELD_MESSAGE.decode(HELD_MESSAGE.encode(record))
    assert back == record
    assert orjson.loads(back.message) == orjson.loads(raw)

"""The intake script: dedup and queueing in one atomic step, in Dramatiq's own layout."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from services.workers.messaging import DramatiqEventIntake, DramatiqJobQueue, build_broker
from shared.connections.model import Connection
from shared.connections.store import ConnectionStore
from shared.halaxy.events import HALAXY_EVENTS
from shared.halaxy.notifications import ChangedResource
from shared.infra.config import Settings
from shared.infra.jobs import IntakeResult
from shared.infra.store import Keys, as_bytes, async_redis_client
from shared.patients.intake import ConnectionChanged, job_for_event
from tests.helpers import queued_messages

EVENT = HALAXY_EVENTS["patient-created"]
_numbers = itertools.count()


def accept(
    settings: Settings, record: bytes, connection_id: str, changed: Sequence[ChangedResource]
) -> IntakeResult:
    async def run() -> IntakeResult:
        client = async_redis_client(settings)
        try:
            intake = DramatiqEventIntake(client, Keys(settings.redis_namespace))
            return await intake.accept(record, connection_id, EVENT, changed)
        finally:
            await client.aclose()

    return asyncio.run(run())


def stored_record(store: ConnectionStore, connection: Connection) -> bytes:
    return as_bytes(store.redis.get(store.keys.connection(connection.id)) or b"")


def changed(*keys: str) -> list[ChangedResource]:
    return [ChangedResource(key, "Patient", f"p-{key}") for key in keys]


def test_messages_are_laid_out_as_dramatiqs_own_enqueue_lays_them_out(
    settings: Settings,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    """What a real worker makes of these messages: tests/test_processes.py sends a webhook
    through a receiver process to a worker process."""
    [item] = changed("e1")
    accept(settings, stored_record(store, connection), connection.id, [item])
    job = job_for_event(connection.id, EVENT, item)
    theirs = Keys(f"{keys.namespace}-broker")
    their_settings = settings.model_copy(update={"redis_namespace": theirs.namespace})
    DramatiqJobQueue(build_broker(their_settings, redis_server_client)).enqueue([job])
    [ours_message] = queued_messages(redis_server_client, keys)
    [their_message] = queued_messages(redis_server_client, theirs)
    varying = ("message_id", "message_timestamp", "options")
    assert {k: v for k, v in ours_message.items() if k not in varying} == {
        k: v for k, v in their_message.items() if k not in varying
    }
    assert set(ours_message["options"]) == set(their_message["options"]) == {"redis_message_id"}
    ids = redis_server_client.lrange(keys.dramatiq_queue("live"), 0, -1)
    assert ids == [ours_message["options"]["redis_message_id"].encode()]
    assert redis_server_client.hkeys(keys.dramatiq_messages("live")) == ids


def test_nothing_is_queued_against_a_connection_that_changed(
    settings: Settings,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    stale = stored_record(store, connection)
    store.save(connection.model_copy(update={"name": "Renamed"}))
    with pytest.raises(ConnectionChanged):
        accept(settings, stale, connection.id, changed("e1"))
    assert queued_messages(redis_server_client, keys) == []
    assert list(redis_server_client.scan_iter(match=f"{keys.namespace}:seen:*")) == []
    fresh = stored_record(store, connection)
    assert accept(settings, fresh, connection.id, changed("e1")).accepted == ["e1"]


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    earlier=st.lists(st.sampled_from("abcdef"), max_size=4),
    delivery=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8),
)
def test_each_event_is_queued_exactly_once_whatever_the_deliveries(
    settings: Settings,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    earlier: list[str],
    delivery: list[str],
) -> None:
    run = f"r{next(_numbers)}-"  # fresh event ids for every example
    record = stored_record(store, connection)
    accept(settings, record, connection.id, changed(*[run + k for k in earlier]))
    before = len(queued_messages(redis_server_client, store.keys))
    result = accept(settings, record, connection.id, changed(*[run + k for k in delivery]))
    expected_new = [run + k for k in dict.fromkeys(delivery) if k not in earlier]
    assert result.accepted == expected_new
    assert sorted(result.accepted + result.duplicates) == sorted(run + k for k in delivery)
    queued = queued_messages(redis_server_client, store.keys)[before:]
    assert [m["kwargs"]["event_id"] for m in queued] == expected_new


@hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    deliveries=st.lists(
        st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5), min_size=2, max_size=8
    )
)
def test_deliveries_taken_at_the_same_time_queue_each_event_once(
    settings: Settings,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    deliveries: list[list[str]],
) -> None:
    """Concurrent deliveries share a pipeline (PipelinedScript); each is still its own atomic
    script, so overlapping events are queued once, by whichever delivery Redis ran first."""
    run = f"c{next(_numbers)}-"
    record = stored_record(store, connection)
    before = len(queued_messages(redis_server_client, store.keys))

    async def take_all() -> list[IntakeResult]:
        client = async_redis_client(settings)
        try:
            intake = DramatiqEventIntake(client, Keys(settings.redis_namespace))
            return await asyncio.gather(
                *(
                    intake.accept(record, connection.id, EVENT, changed(*[run + k for k in d]))
                    for d in deliveries
                )
            )
        finally:
            await client.aclose()

    results = asyncio.run(take_all())
    seen: set[str] = set()
    for delivery, result in zip(deliveries, results, strict=True):
        ids = [run + k for k in delivery]
        assert result.accepted == [i for i in dict.fromkeys(ids) if i not in seen]
        assert sorted(result.accepted + result.duplicates) == sorted(ids)
        seen.update(ids)
    queued = queued_messages(redis_server_client, store.keys)[before:]
    assert [m["kwargs"]["event_id"] for m in queued] == [
        event for result in results for event in result.accepted
    ]

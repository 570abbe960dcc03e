"""The storm lane's choice in the receiver's intake script: past the connection's limit for the
minute, fresh events go to the storm queue as the storm twin of their actor; duplicates do not
count; each connection and each minute counts on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
import redis
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from services.workers.messaging import DramatiqEventIntake
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.halaxy.events import HALAXY_EVENTS
from shared.halaxy.notifications import ChangedResource
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.jobs import IntakeResult
from shared.infra.store import Keys, as_bytes, async_redis_client
from tests.conftest import _counter, make_connection

EVENT = HALAXY_EVENTS["patient-updated"]


def accept(
    settings: Settings,
    record: bytes,
    connection_id: str,
    changed: Sequence[ChangedResource],
    limit: int,
) -> IntakeResult:
    async def run() -> IntakeResult:
        client = async_redis_client(settings)
        try:
            intake = DramatiqEventIntake(
                client, Keys(settings.redis_namespace), storm_events_per_minute=limit
            )
            return await intake.accept(record, connection_id, EVENT, changed)
        finally:
            await client.aclose()

    return asyncio.run(run())


def record_of(store: ConnectionStore, connection: Connection) -> bytes:
    return as_bytes(store.redis.get(store.keys.connection(connection.id)) or b"")


def on(client: redis.Redis, keys: Keys, queue: str) -> list[dict[str, Any]]:
    ids = client.lrange(keys.dramatiq_queue(queue), 0, -1)
    return (
        [orjson.loads(m) for m in client.hmget(keys.dramatiq_messages(queue), ids)] if ids else []
    )


def changed(*keys: str) -> list[ChangedResource]:
    return [ChangedResource(key, "Patient", f"p-{key}") for key in keys]


def test_events_past_the_limit_go_to_the_storm_lane_until_the_minute_ends(
    settings: Settings,
    store: ConnectionStore,
    fake_halaxy: Any,
    verify_key: KeyVerifier,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    storming = make_connection(store, fake_halaxy, verify_key)
    calm = make_connection(store, fake_halaxy, verify_key)
    start = utcnow().replace(second=5, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=False):
        first = accept(settings, record_of(store, storming), storming.id, changed("a", "b"), 3)
        # A duplicate ("a") counts nothing; "c" is the third of the minute, "d" and "e" past it.
        second = accept(
            settings, record_of(store, storming), storming.id, changed("a", "c", "d", "e"), 3
        )
        accept(settings, record_of(store, calm), calm.id, changed("z"), 3)
    assert (first.accepted, second.accepted) == (["a", "b"], ["c", "d", "e"])
    assert second.duplicates == ["a"]
    live, storm = on(redis_server_client, keys, "live"), on(redis_server_client, keys, "storm")
    assert [m["kwargs"]["event_id"] for m in live] == ["a", "b", "c", "z"]
    assert [m["kwargs"]["event_id"] for m in storm] == ["d", "e"]
    assert {(m["queue_name"], m["actor_name"]) for m in storm} == {("storm", "sync_patient_storm")}
    # Each stormed message is the live one's twin: laid out as a live message, with its own
    # ids, for another actor; and counted among the connection's queued storm-lane messages.
    for message, other in zip(storm, live, strict=False):
        assert message.keys() == other.keys()
        assert message["kwargs"].keys() == other["kwargs"].keys()
        assert (message["args"], message["options"].keys()) == ([], {"redis_message_id"})
        assert message["message_id"] != other["message_id"]
    for message in storm:
        assert redis_server_client.zscore(
            keys.queued_messages(storming.id, "storm"), message["options"]["redis_message_id"]
        )
    # Fair share's index holds each connection whose live work was queued, at when it was due;
    # an event put on the storm lane moves nothing.
    index = keys.live_connections()
    with time_machine.travel(start + timedelta(seconds=10), tick=False):
        accept(settings, record_of(store, storming), storming.id, changed("g"), 3)
    assert on(redis_server_client, keys, "storm")[-1]["kwargs"]["event_id"] == "g"
    assert redis_server_client.zscore(index, storming.id) == start.timestamp()
    assert redis_server_client.zscore(index, calm.id) == start.timestamp()
    # The next minute starts counting again.
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        accept(settings, record_of(store, storming), storming.id, changed("f"), 3)
    assert on(redis_server_client, keys, "live")[-1]["kwargs"]["event_id"] == "f"
    later = (start + timedelta(minutes=1)).timestamp()
    assert redis_server_client.zscore(index, storming.id) == later


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.integers(1, 6), min_size=1, max_size=6), limit=st.integers(1, 10))
def test_exactly_the_events_past_the_limit_are_stormed(
    base_settings: Settings,
    redis_server_client: redis.Redis,
    batches: list[int],
    limit: int,
) -> None:
    """However a minute's events come in batches, the first `limit` stay live, the rest
    storm, in order."""
    settings_ = base_settings.model_copy(
        update={"redis_namespace": f"{base_settings.redis_namespace}-storm-{next(_counter)}"}
    )
    keys = Keys(settings_.redis_namespace)
    redis_server_client.set(keys.connection("cn_x"), b"record")
    names = iter(range(10_000))
    sent: list[str] = []
    start = utcnow().replace(second=1, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=False):
        for size in batches:
            batch = changed(*(f"e{next(names)}" for _ in range(size)))
            sent += accept(settings_, b"record", "cn_x", batch, limit).accepted
    live = [m["kwargs"]["event_id"] for m in on(redis_server_client, keys, "live")]
    storm = [m["kwargs"]["event_id"] for m in on(redis_server_client, keys, "storm")]
    assert live == sent[:limit]
    assert storm == sent[limit:]
    for key in redis_server_client.scan_iter(match=f"{keys.namespace}:*"):
        redis_server_client.delete(key)

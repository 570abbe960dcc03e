"""Erasing a connection's metric series (offboarding), and those of connections gone."""

from __future__ import annotations

import redis

from shared.infra.store import Keys
from shared.telemetry import forget_connection_series, forget_series_of_gone_connections
from shared.telemetry.push import sample_field

GONE, STAYING = "cn_goneclinic001", "cn_staysclinic01"


def store_series(client: redis.Redis, keys: Keys) -> None:
    """Series as the pushers store them: totals, latest values, a minute's copy."""
    for connection_id in (GONE, STAYING):
        jobs = sample_field(
            "halaxy_bridge_jobs_total",
            {"actor": "sync_patient", "connection_id": connection_id, "outcome": "succeeded"},
        )
        last = sample_field(
            "halaxy_bridge_connection_last_event_timestamp_seconds",
            {"connection_id": connection_id},
        )
        client.hset(keys.metric_totals(), jobs, 3)
        client.hset(keys.metric_minute(29_000_000), jobs, 1)
        client.zadd(keys.metric_latest(), {last: 1_700_000_000})
    unlabelled = sample_field("halaxy_bridge_webhook_requests_total", {"route": "halaxy"})
    client.hset(keys.metric_totals(), unlabelled, 9)
    client.hset(keys.metric_totals(), b"not a series", 1)


def fields(client: redis.Redis, keys: Keys) -> bytes:
    return b"|".join(
        [
            *client.hkeys(keys.metric_totals()),
            *client.hkeys(keys.metric_minute(29_000_000)),
            *client.zrange(keys.metric_latest(), 0, -1),
        ]
    )


def test_a_connections_series_are_erased_and_the_others_kept(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    store_series(redis_server_client, keys)

    assert forget_connection_series(redis_server_client, keys, GONE) == 3

    left = fields(redis_server_client, keys)
    assert GONE.encode() not in left
    assert left.count(STAYING.encode()) == 3
    assert b"halaxy_bridge_webhook_requests_total" in left
    assert b"not a series" in left
    assert forget_connection_series(redis_server_client, keys, GONE) == 0


def test_series_of_connections_no_longer_stored_are_erased(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    store_series(redis_server_client, keys)

    assert forget_series_of_gone_connections(redis_server_client, keys, lambda: {STAYING}) == 3
    assert GONE.encode() not in fields(redis_server_client, keys)
    assert STAYING.encode() in fields(redis_server_client, keys)


def test_a_connection_added_while_the_series_are_read_keeps_its_own(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    store_series(redis_server_client, keys)
    reads = iter([{STAYING}, {STAYING, GONE}])  # GONE is stored by the second read

    assert forget_series_of_gone_connections(redis_server_client, keys, lambda: next(reads)) == 0
    assert GONE.encode() in fields(redis_server_client, keys)

"""Erasing the metric series of a connection: what offboarding a clinic leaves of its counts.

Every process pushes its counts to Redis (`push.py`): the totals hash, the latest-values
sorted set and the per-minute hashes hold one field per series, named with its labels. A
series labelled with a connection id is erased field by field; the other series stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson
import redis

from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.telemetry.push import read_field

SCAN_COUNT = 1000
DELETE_BATCH = 500


def forget_connection_series(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """Erase every series labelled with this connection id; how many fields were erased."""
    return _forget(client, keys, {connection_id})


def forget_series_of_gone_connections(
    client: redis.Redis, keys: Keys, stored_ids: Callable[[], set[str]]
) -> int:
    """Erase the series labelled with a connection id that is not stored (offboarded). The
    stored ids are read again just before erasing, so a connection added meanwhile keeps its
    first counts."""
    labelled = {cid for _, _, cid in _series(client, keys) if cid}
    gone = labelled - stored_ids()
    if gone:
        gone -= stored_ids()
    return _forget(client, keys, gone) if gone else 0


def _forget(client: redis.Redis, keys: Keys, connection_ids: set[str]) -> int:
    doomed: dict[tuple[str, str], list[bytes]] = {}
    for (key, kind), field, cid in _series(client, keys):
        if cid in connection_ids:
            doomed.setdefault((key, kind), []).append(field)
    erased = 0
    with translate_redis_errors():
        for (key, kind), fields in doomed.items():
            for start in range(0, len(fields), DELETE_BATCH):
                batch = fields[start : start + DELETE_BATCH]
                if kind == "zset":
                    erased += int(client.zrem(key, *batch))
                else:
                    erased += int(client.hdel(key, *batch))
    return erased


def _series(client: redis.Redis, keys: Keys) -> Iterator[tuple[tuple[str, str], bytes, str]]:
    """Each stored series: (its key and kind, its field, the connection id it is labelled
    with, or "")."""
    with translate_redis_errors():
        hashes = [keys.metric_totals()]
        pattern = keys.metric_minute(0).removesuffix("0") + "*"
        hashes += [as_bytes(k).decode() for k in client.scan_iter(match=pattern, count=SCAN_COUNT)]
        for key in hashes:
            for field, _ in client.hscan_iter(key, count=SCAN_COUNT):
                yield (key, "hash"), as_bytes(field), _labelled(as_bytes(field))
        for member, _ in client.zscan_iter(keys.metric_latest(), count=SCAN_COUNT):
            yield (keys.metric_latest(), "zset"), as_bytes(member), _labelled(as_bytes(member))


def _labelled(field: bytes) -> str:
    try:
        _, labels = read_field(field)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return ""  # not a series this version wrote: left alone
    return labels.get("connection_id", "")

"""Waiting for a replica to hold what was just written (BRIDGE_REPLICA_ACK_MS).

Redis replicates asynchronously: a master that dies can take its last writes with it, and
Sentinel promotes a replica without them. So a webhook is answered 2xx, and a worker makes a
side effect a lost write would let it repeat, only once a replica has acknowledged the write
(`WAIT 1 <ms>`).

`WAIT` counts the replicas that hold everything up to the last write *of its own connection*.
The replication stream is one ordered log, so a replica holding that write holds every write
made before it, on any connection. `confirm_replicated` therefore first makes a write of its
own on the connection it waits on: a `PUBLISH`, which reaches the replicas and stores
nothing. Both go in one pipeline: one round trip.
"""

from __future__ import annotations

import redis

from shared.infra.errors import NotReplicated
from shared.infra.store import Keys, translate_redis_errors


def confirm_replicated(client: redis.Redis, keys: Keys, timeout_ms: int) -> None:
    """Return once a replica holds every write this process has finished so far; raise
    `NotReplicated` (a `StoreUnavailable`) if none acknowledges within `timeout_ms`. A
    `timeout_ms` of 0: acknowledgements are off, nothing is sent."""
    if timeout_ms <= 0:
        return
    pipe = client.pipeline(transaction=False)
    pipe.publish(keys.replica_ack_channel(), b"")
    pipe.wait(1, timeout_ms)
    with translate_redis_errors():
        _, acknowledged = pipe.execute()
    if int(acknowledged) < 1:
        raise NotReplicated(timeout_ms)

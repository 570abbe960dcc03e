"""Fair share: how many worker threads one connection may hold at once, across every worker
process (`services/workers/fair_share.py` takes a lease before each job and gives it back
after).

Each connection's leases are a sorted set (`Keys.thread_leases`): one member per job running,
scored by when the lease lapses (the job's time limit and a grace after it was taken), so a
worker killed mid-job leaks no thread: its leases lapse on their own and are pruned at the next
take. Taking one is a single Lua step: prune the lapsed, count, add.

The cap is BRIDGE_CONNECTION_THREAD_SHARE of the pool: the threads of every live worker, read
from the worker heartbeats (`liveness.Heartbeat.threads`). It is work-conserving: a connection
at its cap still takes a lease while no other connection's live work has lately waited for a
thread (`Keys.waiting_connections`), so one busy clinic alone may use every thread. A live
message that waited longer than a moment before a thread took it, of a connection holding no
thread, marks its connection as waiting, in the same step; from then on, for
`WAITING_WINDOW_SECONDS`, a connection at its cap is turned away (its message deferred, without
holding a thread).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import redis

from shared.infra.store import Keys, translate_redis_errors
from shared.ops.liveness import Heartbeat

# After another connection's live work last waited for a thread, connections at their cap are
# held to it for this long.
WAITING_WINDOW_SECONDS = 30.0
# The lease key outlives its longest lease by this much, then goes with the idle connection.
KEY_SLACK_SECONDS = 60

# KEYS: the connection's leases, the waiting connections. ARGV: the connection id, the lease
# token, now and when the lease lapses (epoch seconds), the cap, "1" when this message waited
# for a thread, the waiting window, and the lease key's lifetime in seconds. Answers 1 (taken)
# or 0 (the connection holds its cap while another connection's work waits).
# A message that waited marks its connection as waiting only while the connection holds no
# thread at all: starved, not merely busy. Clinics that all have a backlog each hold threads,
# mark nothing, and share the whole pool; a clinic whose jobs hang fills the pool, another's
# live work then waits with no thread, and the hanging one is held to its cap.
TAKE = """
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held == 0 and ARGV[6] == '1' then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[7])))
end
if held >= tonumber(ARGV[5]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[7]))
  local others = redis.call('ZCARD', KEYS[2])
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) then others = others - 1 end
  if others > 0 then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[8])
return 1
"""


def pool_threads(beats: Iterable[Heartbeat], now: float) -> int:
    """The worker threads of every live worker (a heartbeat written before workers reported
    their threads counts none)."""
    return sum(beat.threads for beat in beats if beat.alive(now))


def thread_cap(share: float, pool: int) -> int:
    """How many threads one connection may hold: its share of the pool, at least one."""
    return max(1, math.floor(share * pool + 1e-9))


class ThreadLeases:
    """The worker threads each connection holds, as leases that lapse."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        waiting_window: float = WAITING_WINDOW_SECONDS,
    ) -> None:
        self._redis = client
        self._keys = keys
        self.waiting_window = waiting_window
        self._take = client.register_script(TAKE)

    def take(
        self,
        connection_id: str,
        token: str,
        *,
        now: float,
        lapses_at: float,
        cap: int,
        waited: bool,
        key_seconds: int,
    ) -> bool:
        """Take a lease for one job (False: the connection holds `cap` while another
        connection's work waits). `waited`: this job's message waited for a thread."""
        with translate_redis_errors():
            taken = self._take(
                keys=[self._keys.thread_leases(connection_id), self._keys.waiting_connections()],
                args=[
                    connection_id,
                    token,
                    now,
                    lapses_at,
                    cap,
                    "1" if waited else "0",
                    self.waiting_window,
                    max(1, math.ceil(key_seconds + KEY_SLACK_SECONDS)),
                ],
            )
        return bool(taken)

    def give_back(self, connection_id: str, token: str) -> None:
        with translate_redis_errors():
            self._redis.zrem(self._keys.thread_leases(connection_id), token)

    def held(self, connection_ids: Iterable[str], now: float) -> dict[str, int]:
        """How many threads each connection holds now (lapsed leases not counted)."""
        ids = list(connection_ids)
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)
            for connection_id in ids:
                pipe.zcount(self._keys.thread_leases(connection_id), f"({now}", "+inf")
            counts = pipe.execute()
        return {connection_id: int(n) for connection_id, n in zip(ids, counts, strict=True)}

    def forget(self, connection_id: str) -> int:
        """Erase the connection's leases and its waiting mark (offboarding); how many there
        were."""
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zcard(self._keys.thread_leases(connection_id))
            pipe.delete(self._keys.thread_leases(connection_id))
            pipe.zrem(self._keys.waiting_connections(), connection_id)
            held, _, marked = pipe.execute()
        return int(held) + int(marked)

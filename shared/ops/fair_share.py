"""Fair share: how many worker threads one connection may hold at once, across every worker
process (`services/workers/fair_share.py` takes a lease before each job and gives it back
after).

Each connection's leases are a sorted set (`Keys.thread_leases`): one member per job running,
scored by when the lease lapses (the job's time limit and a grace after it was taken), so a
worker killed mid-job leaks no thread: its leases lapse on their own and are pruned at the next
take. Taking one is a single Lua step.

The cap is BRIDGE_CONNECTION_THREAD_SHARE of the pool: the threads of every live worker, read
from the worker heartbeats (`liveness.Heartbeat.threads`). It binds only while another
connection is short of its share: it holds fewer threads than the cap, and it has live work due
that no thread runs (ready in the live queue or prefetched by a worker) or queued live work in
the last `ACTIVE_SECONDS`. The connections that
queued live work lately are an index (`Keys.live_connections`), written at every live enqueue
(the receiver's intake script, `shared.ops.queued.QueuedMessages.add`); their due live work is
their live queued set (`Keys.queued_messages`, scored by when each message is due). So one busy
clinic alone may use every thread, clinics with a backlog each share the whole pool once each
holds its cap, and a clinic whose jobs hang is held to its cap from the moment another clinic's
live message is due without a thread. Storm-lane and bulk work never hold others to a cap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import redis

from shared.infra.jobs import QueueName
from shared.infra.store import Keys, translate_redis_errors
from shared.ops.liveness import Heartbeat

# A connection that queued no live work for this long is dropped from the index (its live work
# then holds nobody to a cap). Longer than any live message is meant to wait: the ops page
# flags a live message that waited 5 minutes.
LIVE_WINDOW_SECONDS = 300.0
# A connection that queued live work this recently holds the others to their cap while it holds
# less than its own, even with nothing waiting at that instant: otherwise, on idle threads, a
# clinic whose jobs hang takes every thread between two of another clinic's webhooks, and
# keeps them for a whole upstream timeout (benchmark P8 caught it, in one run of two).
ACTIVE_SECONDS = 10.0
# Live work whose due time is at most this far ahead of the taking worker's clock counts as due
# now: the receiver stamps a webhook with its own clock, maybe read after the worker read its
# own (another process, another host's clock, a thread waiting for the GIL between reading the
# clock and taking the lease). Without it, while webhooks kept coming, a clinic's newest live
# work was always "later" than the worker's now, so it counted as neither active nor waiting,
# and a clinic whose platform hung took every thread (benchmark P8: 16 of 16 threads hung in one
# run). Far shorter than a retry's backoff (7.5 s at least), which must not count.
CLOCK_SLACK_SECONDS = 1.0
# The lease key outlives its longest lease by this much, then goes with the idle connection.
KEY_SLACK_SECONDS = 60

# KEYS: the connection's leases, the index of connections that queued live work. ARGV: the
# connection id, the lease token, now and when the lease lapses (epoch seconds), the cap, the
# index's window in seconds, the lease key's lifetime in seconds, then the key names of another
# connection X as prefix .. X (its leases) and prefix .. X .. suffix (its live queued set): keys
# of other connections, so Redis Cluster is out (as it is for the whole bridge); last, how long
# a connection that queued live work counts as active (seconds), and `CLOCK_SLACK_SECONDS`.
# Answers 1 (taken) or 0 (the connection holds its cap while another is short of its share:
# X holds fewer than the cap, and is active (its latest live work fell due within the last
# `ACTIVE_SECONDS`, or is due within the clock slack; a retry's backoff, due later, does not
# count) or has
# more due live messages than it holds threads; its due messages include those running, so
# "more" means one waits for a thread).
TAKE = """
local now = tonumber(ARGV[3])
local cap = tonumber(ARGV[5])
local recent = now - tonumber(ARGV[11])
local soon = now + tonumber(ARGV[12])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
  local index = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #index, 2 do
    local other = index[i]
    if other ~= ARGV[1] then
      local held = redis.call('ZCOUNT', ARGV[8] .. other, '(' .. ARGV[3], '+inf')
      local at = tonumber(index[i + 1])
      if held < cap and ((at >= recent and at <= soon) or
         redis.call('ZCOUNT', ARGV[9] .. other .. ARGV[10], '-inf', soon) > held) then
        return 0
      end
    end
  end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[7])
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
        live_window: float = LIVE_WINDOW_SECONDS,
        active_seconds: float = ACTIVE_SECONDS,
        clock_slack: float = CLOCK_SLACK_SECONDS,
    ) -> None:
        self._redis = client
        self._keys = keys
        self.live_window = live_window
        self.active_seconds = active_seconds
        self.clock_slack = clock_slack
        self._take = client.register_script(TAKE)
        self._leases_prefix = keys.thread_leases("")
        marker = "\n"  # never in a connection id
        self._live_prefix, self._live_suffix = keys.queued_messages(
            marker, QueueName.LIVE.value
        ).split(marker)

    def take(
        self,
        connection_id: str,
        token: str,
        *,
        now: float,
        lapses_at: float,
        cap: int,
        key_seconds: int,
    ) -> bool:
        """Take a lease for one job (False: the connection holds `cap` while another
        connection has live work due without a thread and holds fewer than `cap`)."""
        with translate_redis_errors():
            taken = self._take(
                keys=[self._keys.thread_leases(connection_id), self._keys.live_connections()],
                args=[
                    connection_id,
                    token,
                    now,
                    lapses_at,
                    cap,
                    self.live_window,
                    max(1, math.ceil(key_seconds + KEY_SLACK_SECONDS)),
                    self._leases_prefix,
                    self._live_prefix,
                    self._live_suffix,
                    self.active_seconds,
                    self.clock_slack,
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
        """Erase the connection's leases and its member of the live index (offboarding); how
        many there were."""
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zcard(self._keys.thread_leases(connection_id))
            pipe.delete(self._keys.thread_leases(connection_id))
            pipe.zrem(self._keys.live_connections(), connection_id)
            held, _, indexed = pipe.execute()
        return int(held) + int(indexed)

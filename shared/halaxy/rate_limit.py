"""One request budget per Halaxy API key, shared by every process: a sliding window in Redis.

Halaxy allows 500 requests a minute, sliding window (halaxy-api.md section 7); whether per key
or per practice is unknown, so the budget is per key (`base URL + client id`), and 480 leaves
room for clock drift and the odd request we do not see (another integration on the same
key). Halaxy's own answers tighten it further: a 429 with `retry-after`, or
`x-ratelimit-remaining: 0`, stops every process for that key until the wait is over. A caller
over the budget gets `RateLimited(retry_after)`, so the job is deferred, not slept on.
"""

from __future__ import annotations

import hashlib
import uuid

import redis

from shared.infra.errors import RateLimited
from shared.infra.store import Keys, as_bytes, translate_redis_errors

LIMIT = 480
WINDOW_MS = 60_000
EXHAUSTED_PAUSE_MS = 5_000

# KEYS: window (sorted set of request times), pause. ARGV: window ms, limit, unique member.
# Returns 0 when a slot was taken, else the milliseconds to wait. Time is Redis's own, so
# every process measures the window on the same clock.
ACQUIRE = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return pause end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + tonumber(ARGV[1]) - now)
"""


# KEYS: window, pause, and a key of the caller's (the key's access token). Without a value
# there, nothing is taken and false comes back; else ACQUIRE's answer and the value, so a
# caller holding a cached token spends its request in the round trip that reads the token.
ACQUIRE_IF_SET = f"""
local value = redis.call('GET', KEYS[3])
if not value then return false end
local wait = (function() {ACQUIRE} end)()
return {{wait, value}}
"""


# A pause never shortens a longer one already set (a 429's retry-after outlasts a 5 s pause).
PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class HalaxyRateLimiter:
    def __init__(
        self, client: redis.Redis, keys: Keys, limit: int = LIMIT, window_ms: int = WINDOW_MS
    ) -> None:
        self._redis = client
        self._keys = keys
        self._limit = limit
        self._window_ms = window_ms
        self._acquire = client.register_script(ACQUIRE)
        self._acquire_if_set = client.register_script(ACQUIRE_IF_SET)
        self._pause = client.register_script(PAUSE)

    def acquire(self, base_url: str, client_id: str) -> None:
        """Take one request from the key's budget, or raise `RateLimited` with the wait."""
        window, pause = self._names(base_url, client_id)
        with translate_redis_errors():
            wait_ms = int(
                self._acquire(
                    keys=[window, pause],
                    args=[self._window_ms, self._limit, uuid.uuid4().hex],
                )
            )
        if wait_ms > 0:
            raise RateLimited("the Halaxy request budget for this key is spent", wait_ms / 1000)

    def acquire_if_set(self, base_url: str, client_id: str, key: str) -> bytes | None:
        """`acquire`, in the same round trip as reading `key`, and only while `key` holds a
        value, which is returned; None means nothing was read and nothing taken."""
        window, pause = self._names(base_url, client_id)
        with translate_redis_errors():
            answer = self._acquire_if_set(
                keys=[window, pause, key],
                args=[self._window_ms, self._limit, uuid.uuid4().hex],
            )
        if answer is None:
            return None
        wait_ms, value = int(answer[0]), as_bytes(answer[1])
        if wait_ms > 0:
            raise RateLimited("the Halaxy request budget for this key is spent", wait_ms / 1000)
        return value

    def pause(self, base_url: str, client_id: str, seconds: float) -> None:
        """Halaxy said wait (429, or nothing remaining): no process uses the key until then."""
        _, pause = self._names(base_url, client_id)
        with translate_redis_errors():
            self._pause(keys=[pause], args=[max(1, int(seconds * 1000))])

    def _names(self, base_url: str, client_id: str) -> tuple[str, str]:
        digest = hashlib.sha256(f"{base_url}|{client_id}".encode()).hexdigest()[:32]
        return self._keys.halaxy_budget(digest), self._keys.halaxy_pause(digest)

"""What the bridge keeps per Halaxy API key is named where the token cache and the rate limit
name it: offboarding erases those very keys."""

from __future__ import annotations

import redis
from cryptography.fernet import Fernet, MultiFernet

from shared.halaxy import HalaxyRateLimiter, TokenCache, key_records
from shared.infra.store import Keys


def test_the_key_records_are_the_token_cache_and_the_budget_of_that_key(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    base_url, client_id = "https://au-api.halaxy.com/main", "cid-1234"
    cache = TokenCache(redis_server_client, keys, MultiFernet([Fernet(Fernet.generate_key())]))
    limiter = HalaxyRateLimiter(redis_server_client, keys)

    token, refresh, budget, pause = key_records(keys, base_url, client_id)

    assert token == cache.key(base_url, client_id)
    assert refresh == cache.key(base_url, client_id) + ":refresh"
    assert (budget, pause) == limiter._names(base_url, client_id)
    assert key_records(keys, base_url, "cid-other")[0] != token

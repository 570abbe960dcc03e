"""Halaxy access tokens, cached in Redis for every process, refreshed one at a time.

Halaxy's page says tokens last 15 minutes while its example says `expires_in: 3600`
(halaxy-api.md section 2), so a token is kept for min(expires_in, 15 min) less a margin,
whatever `expires_in` claims. The token is sealed with Fernet like every other secret.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import redis
from cryptography.fernet import InvalidToken, MultiFernet

from shared.halaxy.auth import Token
from shared.infra.store import Keys, as_bytes, held_lock, translate_redis_errors

MAX_LIFETIME = 15 * 60
SAFETY_MARGIN = 60
LOCK_TIMEOUT = 20.0
WAIT_FOR_REFRESH = 20.0
OPENED_KEPT = 512  # decrypted tokens kept per process


class TokenCache:
    def __init__(self, client: redis.Redis, keys: Keys, fernet: MultiFernet) -> None:
        self._redis = client
        self._keys = keys
        self._fernet = fernet
        # Every Halaxy call reads the token: decrypt each stored one once. Keyed by the sealed
        # bytes, so a refresh or an invalidation by any process is seen at the next read.
        self._opened = functools.lru_cache(maxsize=OPENED_KEPT)(self._decrypt)

    def get(self, base_url: str, client_id: str, fetch: Callable[[], Token]) -> str:
        """The cached token for this key, or a fresh one fetched by exactly one caller."""
        key = self.key(base_url, client_id)
        cached = self._read(key)
        if cached is not None:
            return cached
        with held_lock(
            self._redis,
            key + ":refresh",
            timeout=LOCK_TIMEOUT,
            wait=WAIT_FOR_REFRESH,
            busy="timed out waiting for another process to refresh the Halaxy token",
        ):
            cached = self._read(key)  # another process may have refreshed while we waited
            if cached is not None:
                return cached
            token = fetch()
            lifetime = max(1, min(token.expires_in, MAX_LIFETIME) - SAFETY_MARGIN)
            sealed = self._fernet.encrypt(token.access_token.encode())
            with translate_redis_errors():
                self._redis.set(key, sealed, ex=lifetime)
            return token.access_token

    def invalidate(self, base_url: str, client_id: str, token: str) -> None:
        """Forget `token` if it is still the cached one (a newer token is left alone)."""
        key = self.key(base_url, client_id)
        if self._read(key) == token:
            with translate_redis_errors():
                self._redis.delete(key)

    def _read(self, key: str) -> str | None:
        with translate_redis_errors():
            sealed = self._redis.get(key)
        return None if sealed is None else self.open(as_bytes(sealed))

    def open(self, sealed: bytes) -> str | None:
        """The token sealed in `sealed` (what `key` holds), or None under a retired key."""
        return self._opened(sealed)

    def _decrypt(self, sealed: bytes) -> str | None:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            return None  # sealed under a retired key: fetch a new one

    def key(self, base_url: str, client_id: str) -> str:
        """The Redis key holding this API key's sealed token."""
        digest = hashlib.sha256(f"{base_url}|{client_id}".encode()).hexdigest()[:32]
        return self._keys.halaxy_token(digest)

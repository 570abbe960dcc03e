"""What the bridge keeps in Redis per Halaxy API key rather than per connection: the cached
access token (and its refresh lock), and the request budget and pause every process shares.
Each is named by a digest of the key's base URL and client id (`tokens.py`, `rate_limit.py`).
"""

from __future__ import annotations

import hashlib

from shared.infra.store import Keys


def key_digest(base_url: str, client_id: str) -> str:
    return hashlib.sha256(f"{base_url}|{client_id}".encode()).hexdigest()[:32]


def key_records(keys: Keys, base_url: str, client_id: str) -> list[str]:
    """The Redis keys kept for this Halaxy API key (offboarding erases them)."""
    digest = key_digest(base_url, client_id)
    token = keys.halaxy_token(digest)
    return [token, f"{token}:refresh", keys.halaxy_budget(digest), keys.halaxy_pause(digest)]

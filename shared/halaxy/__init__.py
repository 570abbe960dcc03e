"""Halaxy: its FHIR API client, OAuth token and cache, shared rate limit, webhook
notifications and events, the FHIR element readers (`fhir.py`) and the onboarding check of a
key's permissions (`key_check.py`)."""

from shared.halaxy.auth import HalaxyAccount, fetch_token
from shared.halaxy.client import HalaxyClient, new_http_client
from shared.halaxy.events import HALAXY_EVENTS, HalaxyEvent
from shared.halaxy.key_check import key_verifier
from shared.halaxy.key_records import key_records
from shared.halaxy.notifications import ChangedResource, NotificationError, parse_notification
from shared.halaxy.rate_limit import HalaxyRateLimiter
from shared.halaxy.tokens import TokenCache

__all__ = [
    "HALAXY_EVENTS",
    "ChangedResource",
    "HalaxyAccount",
    "HalaxyClient",
    "HalaxyEvent",
    "HalaxyRateLimiter",
    "NotificationError",
    "TokenCache",
    "fetch_token",
    "key_records",
    "key_verifier",
    "new_http_client",
    "parse_notification",
]

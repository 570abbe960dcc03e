"""Halaxy: its FHIR API client, OAuth token and cache, shared rate limit, webhook
notifications and events, and the FHIR element readers (`fhir.py`)."""

from shared.halaxy.auth import HalaxyAccount, fetch_token
from shared.halaxy.client import HalaxyClient, new_http_client
from shared.halaxy.events import HALAXY_EVENTS, HalaxyEvent
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
    "new_http_client",
    "parse_notification",
]

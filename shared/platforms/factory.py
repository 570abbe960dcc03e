"""The adapter for a clinic's platform account."""

from __future__ import annotations

import httpx

from shared.platforms.base import PlatformAccount, PlatformKind, TherapyPlatform
from shared.platforms.physitrack import Physitrack
from shared.platforms.rest import RestPlatform


def platform_for(account: PlatformAccount, http: httpx.Client, user_agent: str) -> TherapyPlatform:
    if account.kind is PlatformKind.PHYSITRACK:
        return Physitrack(account, http, user_agent)
    return RestPlatform(account, http, user_agent)

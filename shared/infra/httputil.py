"""Small HTTP helpers shared by the Halaxy client and the platform adapters."""

from __future__ import annotations

import httpx


def retry_after_seconds(response: httpx.Response, default: float = 60.0) -> float:
    """`Retry-After` in seconds (both Halaxy and Cloudflare send seconds), at least one."""
    try:
        return max(1.0, float(response.headers.get("retry-after", default)))
    except ValueError:
        return default

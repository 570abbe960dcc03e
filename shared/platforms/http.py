"""Sending JSON to a therapy platform and turning its answers into the bridge's errors."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from shared.infra.errors import Permanent, RateLimited, Transient
from shared.infra.httputil import retry_after_seconds
from shared.infra.logs import remote_text

# No platform publishes its timing (therapy-platforms.md 1.5-1.6: behind Cloudflare, "expect
# Cloudflare-style 429/5xx responses under load", no published rate limit). A platform that
# hangs holds a worker thread at most about connect + read per request, and its circuit
# breaker opens after a few such failures (docs/isolation.md, Circuit breaker and timeouts).
PLATFORM_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)


class PlatformNotFound(Permanent):
    """The platform answered 404 for the resource."""


class GenderRefused(Permanent):
    """The platform refused the patient for its gender (Physitrack's 422 "gender is missing"
    or "gender must be one of: m, f"): the record's gender has no value the platform takes."""


def send(
    http: httpx.Client,
    platform: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    check: bool = True,
    timeout: httpx.Timeout = PLATFORM_TIMEOUT,
) -> httpx.Response:
    """The platform's answer when it is a success, a bridge error otherwise; with `check`
    False, the answer whatever its status. `Transient` when no answer came within `timeout`."""
    try:
        response = http.request(
            method,
            url,
            content=None if body is None else orjson.dumps(body),
            headers={"Accept": "application/json", "Content-Type": "application/json", **headers},
            params=params,
            timeout=timeout,
        )
    except httpx.TimeoutException as exc:
        raise Transient(f"{platform} {method} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise Transient(f"{platform} {method} failed ({type(exc).__name__})") from exc
    if check:
        raise_for_status(platform, response)
    return response


def error_messages(response: httpx.Response) -> list[str]:
    """The `{"errors": [...]}` list both Physitrack and the REST contract use."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [remote_text(str(e)) for e in errors[:5]]


def raise_for_status(platform: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    messages = error_messages(response)
    said = f": {'; '.join(messages)}" if messages else ""
    if status == 429:
        raise RateLimited(f"{platform} rate limit", retry_after_seconds(response), "platform")
    if status == 501:
        # "Not implemented" will not pass by retrying (halaxy-api.md 7 likewise retries every
        # 5xx except 501).
        raise Permanent(f"{platform} answered 501 (not implemented){said}")
    if status in (408, 425) or status >= 500:
        raise Transient(f"{platform} answered {status}{said}")
    if status in (401, 403):
        keys = "API key" + (" (and PMS name and key, if set)" if platform == "Physitrack" else "")
        raise Permanent(
            f"{platform} refused the API key ({status}){said}: check the connection's {keys}"
        )
    if status == 404:
        raise PlatformNotFound(f"{platform} answered 404{said}")
    raise Permanent(f"{platform} refused the patient ({status}){said}")


def json_body(platform: str, response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise Transient(f"{platform} answered with a body that is not JSON") from None


def json_object(platform: str, response: httpx.Response) -> dict[str, Any]:
    body = json_body(platform, response)
    if not isinstance(body, dict):
        raise Transient(f"{platform} answered with JSON that is not an object")
    return body

"""Reading what a caller sent: credentials, content type, and a size-capped body."""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from starlette.requests import Request

from services.webhook_receiver.responses import ApiError

JSON_TYPES = ("application/json", "application/fhir+json")
CONTENT_LENGTH = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() takes '²'.


def presented_secret(header: str | None) -> str | None:
    """The secret in an `Authorization` value: `Bearer <secret>` or the bare secret."""
    if header is None:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


def basic_password(header: str) -> str | None:
    """The password of a `Basic` Authorization value, or None when it is not one."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def secret_matches(presented: str | None, accepted: list[str]) -> bool:
    """Constant-time comparison against every accepted secret (no early exit)."""
    if presented is None:
        return False
    given = presented.encode()
    found = False
    for secret in accepted:
        found |= hmac.compare_digest(given, secret.encode())
    return found


def require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (
        media_type in JSON_TYPES
        or (media_type.startswith("application/") and media_type.endswith("+json"))
    ):
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (application/json)")


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        digits = declared.strip()
        if not CONTENT_LENGTH.fullmatch(digits):
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if len(digits.lstrip("0")) > 18 or int(digits) > limit:  # no int() of 4,300 digits
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body is larger than {limit // 1024} KiB")

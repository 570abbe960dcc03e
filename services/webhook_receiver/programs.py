"""`POST /webhooks/programs/{connection_id}`: the therapy platform's "program assigned" callback.

Physitrack's PDF-webhook body authenticates with its `api_key` (compared in constant time);
a connection with a signing secret also requires a Standard Webhooks signature
(`webhook-id`, `webhook-timestamp` within 5 minutes, `webhook-signature`). The answer comes as
soon as the note is recorded and queued: Physitrack counts anything slower than 5 s as a
failure and retries only once, 10 minutes later (therapy-platforms.md section 2).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
import structlog.typing
from standardwebhooks.webhooks import Webhook
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver import metrics
from services.webhook_receiver.deps import Deps, deps_of, replicated
from services.webhook_receiver.requests import read_capped_body, require_json, secret_matches
from services.webhook_receiver.responses import ApiError, JSONResponse, unavailable
from shared.connections import Connection
from shared.infra import InvalidInput, StoreUnavailable, utcnow
from shared.notes import (
    PdfRefused,
    check_listed,
    is_link_expired,
    parse_callback,
)

MAX_BODY = 16 * 1024
EVENT = "program"

log = structlog.get_logger("halaxy_bridge.receiver")


async def program_callback(request: Request) -> Response:
    deps = deps_of(request)
    try:
        connection = await run_in_threadpool(
            deps.connections.get, request.path_params["connection_id"]
        )
    except StoreUnavailable:
        raise unavailable() from None
    if connection is None or not connection.enabled:
        raise ApiError(404, "unknown_connection", "no such connection")
    try:
        return await _take(deps, connection, request)
    except ApiError as exc:
        metrics.rejected(connection.id, EVENT, exc.code)
        raise


async def _take(deps: Deps, connection: Connection, request: Request) -> Response:
    bound = log.bind(connection_id=connection.id, callback="program-assigned")
    body, data = await keyed_post(request, connection.program_api_keys(utcnow()), bound)
    webhook_id = _verified_webhook_id(connection, request, body)
    try:
        callback = parse_callback(data)
        # Refuse now what the worker would refuse later, so the platform hears of it.
        check_listed(
            callback.file_url, connection.allowed_pdf_hosts, connection.pdf_hosts is not None
        )
    except InvalidInput as exc:
        raise ApiError(422, "invalid", "; ".join([str(exc), *exc.problems])) from None
    except PdfRefused as exc:
        raise ApiError(422, "invalid", f"file_url: {exc}") from None
    if is_link_expired(callback, utcnow()):
        raise ApiError(422, "invalid", "file_url: the PDF link expired (24 hours after date_iso)")
    try:
        note_id = await run_in_threadpool(
            deps.claims.for_callback, connection, callback, webhook_id
        )
        result = await run_in_threadpool(deps.programs.accept, connection.id, note_id, callback)
        await run_in_threadpool(replicated, deps)
    except StoreUnavailable:
        bound.error("callback.not_queued", reason="redis_unavailable")
        raise unavailable() from None
    metrics.accepted(connection.id, EVENT, len(result.accepted), len(result.duplicates))
    bound.info("callback.accepted", note_id=note_id, duplicate=not result.accepted)
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates}, status_code=202
    )


async def keyed_post(
    request: Request, accepted: list[str], bound: structlog.typing.FilteringBoundLogger
) -> tuple[bytes, Any]:
    """The body of a program post and its JSON, once its `api_key` is one of `accepted`
    (compared in constant time). The key is in the body, so a body that is not JSON is
    refused (400) before the key is checked; what else is wrong is said only after."""
    require_json(request)
    body = await read_capped_body(request, MAX_BODY)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    api_key = data.get("api_key") if isinstance(data, dict) else None
    if not isinstance(api_key, str) or not secret_matches(api_key, accepted):
        bound.warning("callback.unauthorized")
        raise ApiError(401, "unauthorized", "missing or wrong api_key")
    return body, data


def _verified_webhook_id(connection: Connection, request: Request, body: bytes) -> str | None:
    """The `webhook-id` of a correctly signed request; None when the connection does not sign."""
    if connection.signing_secret is None:
        return None
    headers = {
        name: request.headers.get(name, "")
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }
    try:
        Webhook(connection.signing_secret.get_secret_value()).verify(
            body, headers, json_parse=False
        )
    except Exception:
        raise ApiError(
            401, "bad_signature", "missing, stale or wrong Standard Webhooks signature"
        ) from None
    return headers["webhook-id"]

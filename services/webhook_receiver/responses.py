"""JSON answers, and the one error shape every rejection uses: {"error", "detail"}."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """Raised anywhere in a handler; rendered as `{"error": code, "detail": detail}`."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


RETRY_AFTER_SECONDS = "5"


def unavailable(detail: str = "the queue cannot take work right now; retry shortly") -> ApiError:
    return ApiError(503, "unavailable", detail, headers={"Retry-After": RETRY_AFTER_SECONDS})

"""A fake Halaxy API, faithful to halaxy-api.md where the bridge depends on it.

So far: the OAuth2 token endpoint. It refuses a request without `User-Agent` with 403 (as
Halaxy's gateway does), takes only a JSON body, and claims `expires_in: 3600` although its
tokens are meant to last 15 minutes (the documented contradiction, section 2).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FHIR_JSON = "application/fhir+json"


def operation_outcome(status: int, code: str, diagnostics: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


@dataclass
class FakeHalaxy:
    """State of the fake: API keys it knows, tokens it issued, and every request it saw."""

    keys: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def add_key(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        """Register an API key; returns it as the `CLIENT_ID:CLIENT_SECRET` string."""
        client_id = client_id or "cid-" + secrets.token_hex(6)
        client_secret = client_secret or secrets.token_urlsafe(24)
        self.keys[client_id] = client_secret
        return f"{client_id}:{client_secret}"

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/main/oauth/token", self._token, methods=["POST"])])

    async def _token(self, request: Request) -> Response:
        self.requests.append(
            {"path": request.url.path, "user_agent": request.headers.get("user-agent")}
        )
        if not request.headers.get("user-agent"):
            return Response(b"Forbidden", status_code=403)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return operation_outcome(400, "invalid", "body must be JSON")
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            return operation_outcome(400, "invalid", "grant_type must be client_credentials")
        client_id = str(body.get("client_id", ""))
        expected = self.keys.get(client_id)
        if expected is None or not secrets.compare_digest(
            expected, str(body.get("client_secret", ""))
        ):
            return operation_outcome(401, "login", "invalid client credentials")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = client_id
        return Response(
            orjson.dumps({"token_type": "Bearer", "expires_in": 3600, "access_token": token}),
            media_type=FHIR_JSON,
        )

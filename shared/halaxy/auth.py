"""Halaxy OAuth2 client credentials: the token request.

`POST {base}/oauth/token` with a JSON body (not form-encoded), `Accept: application/fhir+json`
and a `User-Agent`, without which Halaxy's gateway answers 403 (halaxy-api.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import orjson
from pydantic import SecretStr

from shared.infra.errors import Permanent, RateLimited, Transient
from shared.infra.httputil import retry_after_seconds

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class HalaxyAccount:
    """One practice's Halaxy API key: what the client needs of a connection, and no more.

    `connection_id` labels the metrics and logs; `Connection.halaxy_account` makes one.
    """

    connection_id: str
    base_url: str
    client_id: str
    client_secret: SecretStr


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_in: int


def fetch_token(
    http: httpx.Client, base_url: str, client_id: str, client_secret: str, user_agent: str
) -> Token:
    """Ask Halaxy for an access token; raise `Permanent` when the key is refused."""
    try:
        response = http.post(
            f"{base_url}/oauth/token",
            content=orjson.dumps(
                {
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": client_secret,
                }
            ),
            headers={
                "Accept": FHIR_JSON,
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            },
        )
    except httpx.TimeoutException as exc:
        raise Transient(f"Halaxy token request timed out: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise Transient(f"Halaxy token request failed: {type(exc).__name__}") from exc
    except (httpx.InvalidURL, ValueError) as exc:
        raise Permanent(f"the Halaxy base URL is not usable: {type(exc).__name__}") from exc
    if response.status_code == 429:
        raise RateLimited("Halaxy rate limit", retry_after_seconds(response))
    if response.status_code >= 500 or response.status_code == 408:
        raise Transient(f"Halaxy token endpoint answered {response.status_code}")
    if response.status_code in {400, 401, 403}:
        raise Permanent(
            f"Halaxy refused the API key ({response.status_code}): check the Client ID and "
            "Client Secret, and that the key is active"
        )
    if response.status_code != 200:
        raise Permanent(f"Halaxy token endpoint answered {response.status_code}")
    try:
        body = orjson.loads(response.content)
        return Token(access_token=str(body["access_token"]), expires_in=int(body["expires_in"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Transient("Halaxy token response was not the documented JSON") from exc

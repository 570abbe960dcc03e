"""The Halaxy FHIR API client: token handling, error mapping, reads and paged searches.

Every request carries the connection's token, `Accept: application/fhir+json` and the
configured `User-Agent` (Halaxy answers 403 without one). A 401, or an OperationOutcome whose
code is `expired`, refreshes the token once and repeats the request (halaxy-api.md sections 2
and 7). Errors become the bridge's: `Permanent` for 4xx other than 401/408/429, `Transient` for
5xx, 408, timeouts and connection errors, `RateLimited(retry_after)` for 429.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson
import structlog

from shared.halaxy.auth import FHIR_JSON, HalaxyAccount, Token, fetch_token
from shared.halaxy.rate_limit import EXHAUSTED_PAUSE_MS, HalaxyRateLimiter
from shared.halaxy.tokens import TokenCache
from shared.infra.errors import Ambiguous, BridgeError, Permanent, RateLimited, Transient
from shared.infra.httputil import retry_after_seconds
from shared.infra.logs import remote_text
from shared.telemetry.definitions import HALAXY_AUTH_FAILURES, TOKEN_REFRESHES

# Halaxy documents no timing (halaxy-api.md 1.6: "no stated retry count, backoff, timeout"):
# short enough that a hanging Halaxy holds a worker thread seconds, not minutes, while its
# circuit breaker counts the failures (docs/isolation.md, Circuit breaker and timeouts). Read
# and write are the longest wait for one chunk, not for the whole body.
DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0)
# A 20 MB PDF is about 27 MB of JSON: its upload may stall longer between chunks, and Halaxy
# answers only once it has stored it. A timeout after sending parks the note (a person checks
# Halaxy), so the read waits longer than a read's; connecting stays short.
WRITE_TIMEOUT = httpx.Timeout(connect=3.0, read=30.0, write=60.0, pool=5.0)
MAX_PAGES = 10_000

log = structlog.get_logger("halaxy_bridge.halaxy")


class HalaxyNotFound(Permanent):
    """Halaxy answered 404 for a resource."""


class HalaxyAuthRefused(Permanent):
    """Halaxy refused a fresh token: the key was revoked or lacks a permission."""


def new_http_client(make: Callable[..., httpx.Client] = httpx.Client) -> httpx.Client:
    """One pooled client per process and connection; reuse it for every call. `make` may
    give a client class of the same options that does more (counts requests, say)."""
    return make(
        timeout=DEFAULT_TIMEOUT,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        follow_redirects=False,
    )


class HalaxyClient:
    def __init__(
        self,
        account: HalaxyAccount,
        http: httpx.Client,
        tokens: TokenCache,
        user_agent: str,
        limiter: HalaxyRateLimiter | None = None,
    ) -> None:
        self._account = account
        self._limiter = limiter
        self._http = http
        self._tokens = tokens
        self._user_agent = user_agent
        self._base = account.base_url.rstrip("/")
        self._base_path = urlsplit(self._base).path

    def read(self, reference: str) -> dict[str, Any]:
        """GET one resource by `Type/id`, `/main/Type/id` or an absolute URL on this host."""
        return self._json(self._request("GET", self.resolve(reference)))

    def create(
        self, resource_type: str, body: Callable[[], Iterable[bytes]], length: int
    ) -> dict[str, Any]:
        """POST a new resource, its JSON streamed from `body()` (called again on a retry).

        A write Halaxy cannot undo, so failures are sorted by what they prove: nothing was
        written (connection refused, 429, a 4xx refusal) raises `Transient`, `RateLimited` or
        `Permanent`; an end that proves nothing (a timeout after sending, a dropped connection,
        408 or a 5xx) raises `Ambiguous`, and the caller must not post again.
        """
        url = self.resolve(resource_type)
        # A 401 (or a 4xx `expired` outcome) means the write was refused before it was
        # processed, so it is sent again with a fresh token. A 5xx proves nothing, whatever its
        # body says: it is never taken for a refused token, and never followed by a second POST.
        response = self._with_token(
            lambda token: self._post(url, token, body(), length), _write_token_rejected
        )
        status = response.status_code
        if status in (200, 201):
            return self._json_or_empty(response)
        if status == 408 or status >= 500:
            raise Ambiguous(f"Halaxy answered {status} to the {resource_type} POST")
        _raise_for_status(response)
        raise Ambiguous(f"Halaxy answered {status} to the {resource_type} POST")

    def _post(self, url: str, token: str, content: Iterable[bytes], length: int) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": FHIR_JSON,
            "Content-Type": FHIR_JSON,
            "Content-Length": str(length),
            "User-Agent": self._user_agent,
        }
        try:
            return self._heed(
                self._http.request(
                    "POST", url, content=content, headers=headers, timeout=WRITE_TIMEOUT
                )
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Transient(f"Halaxy could not be reached ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Ambiguous(
                f"the POST to Halaxy ended without an answer ({type(exc).__name__})"
            ) from exc

    @staticmethod
    def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return {}
        return body if isinstance(body, dict) else {}

    def search(self, resource_type: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every resource a search returns, following `link[relation=next]` page by page."""
        for resources, _ in self.pages(resource_type, params):
            yield from resources

    def pages(
        self, resource_type: str, params: dict[str, str], start_url: str | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """A search page by page: each page's resources and its `next` link as Halaxy gave it
        (None after the last). `start_url`, such a link from an earlier walk, resumes there."""
        url: str | None = start_url or resource_type
        query: dict[str, str] | None = None if start_url else params
        for _ in range(MAX_PAGES):
            if url is None:
                return
            # Resolved only when fetched: a link off this connection's host is refused then,
            # after the page that carried it has been handed on.
            bundle = self._json(self._request("GET", self.resolve(url), params=query))
            resources = [
                entry["resource"]
                for entry in bundle.get("entry") or []
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
            ]
            url, query = self._next_link(bundle), None
            yield resources, url
        raise Transient(f"a {resource_type} search ran past {MAX_PAGES} pages")

    def resolve(self, reference: str) -> str:
        """An absolute URL under this connection's base, refusing any other host, and any
        path with an empty, `.` or `..` segment: httpx resolves dot segments (RFC 3986
        section 5.2.4), so `Patient/.` would be sent as `GET {base}/Patient`, Halaxy's
        search of every patient, and `Patient/..` as `GET {base}`."""
        if "://" in reference:
            if not reference.startswith(self._base + "/"):
                raise Permanent("a Halaxy reference points outside the connection's host")
            path = reference[len(self._base) + 1 :]
        else:
            if self._base_path and reference.startswith(self._base_path + "/"):
                reference = reference[len(self._base_path) + 1 :]
            path = reference.lstrip("/")
        segments = unquote(path.partition("?")[0].partition("#")[0]).split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise Permanent("a Halaxy reference has an empty or dot path segment")
        return f"{self._base}/{path}"

    def _next_link(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
                return str(link["url"])
        return None

    def _token(self) -> str:
        account = self._account

        def fetch() -> Token:
            self._spend()
            try:
                token = fetch_token(
                    self._http,
                    account.base_url,
                    account.client_id,
                    account.client_secret.get_secret_value(),
                    self._user_agent,
                )
            except Permanent:
                TOKEN_REFRESHES.labels(account.connection_id, "refused").inc()
                HALAXY_AUTH_FAILURES.labels(account.connection_id).inc()
                raise
            except Transient:
                TOKEN_REFRESHES.labels(account.connection_id, "error").inc()
                raise
            TOKEN_REFRESHES.labels(account.connection_id, "ok").inc()
            return token

        return self._tokens.get(account.base_url, account.client_id, fetch)

    def _token_and_spend(self) -> str:
        """A token, and one request from the key's budget for the request it goes with: in
        one round trip while a token is cached."""
        account = self._account
        if self._limiter is not None:
            key = self._tokens.key(account.base_url, account.client_id)
            sealed = self._limiter.acquire_if_set(account.base_url, account.client_id, key)
            if sealed is not None:  # the request is paid for
                token = self._tokens.open(sealed)
                return token if token is not None else self._token()
        token = self._token()
        self._spend()
        return token

    def _spend(self) -> None:
        """One request from the key's shared budget (raises `RateLimited` when spent)."""
        if self._limiter is not None:
            self._limiter.acquire(self._account.base_url, self._account.client_id)

    def _heed(self, response: httpx.Response) -> httpx.Response:
        """Let Halaxy's own rate-limit answers pause every process using this key."""
        if self._limiter is None:
            return response
        if response.status_code == 429:
            wait = retry_after_seconds(response)
        elif response.headers.get("x-ratelimit-remaining", "").strip() == "0":
            wait = EXHAUSTED_PAUSE_MS / 1000
        else:
            return response
        try:
            self._limiter.pause(self._account.base_url, self._account.client_id, wait)
        except BridgeError:
            # The answer is in hand: what it says (a note written, say) must not be lost
            # because Redis missed one pause. Our own window still counts the request.
            log.warning("halaxy.pause_not_recorded", connection_id=self._account.connection_id)
        return response

    def _request(
        self, method: str, url: str, params: dict[str, str] | None = None
    ) -> httpx.Response:
        response = self._with_token(lambda token: self._send(method, url, token, params))
        _raise_for_status(response)
        return response

    def _with_token(
        self,
        exchange: Callable[[str], httpx.Response],
        rejected: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """Run `exchange` with the cached token; if the answer says the token was refused
        (`rejected`: a 401 or an `expired` OperationOutcome), once more with a fresh one
        (halaxy-api.md sections 2 and 7)."""
        refused = rejected or _token_rejected
        for attempt in (1, 2):
            token = self._token_and_spend()
            response = exchange(token)
            if not refused(response):
                return response
            self._tokens.invalidate(self._account.base_url, self._account.client_id, token)
            if attempt == 2:
                HALAXY_AUTH_FAILURES.labels(self._account.connection_id).inc()
                raise HalaxyAuthRefused(
                    "Halaxy refused a fresh access token (401): the connection's API key was "
                    "revoked or lacks the permission for this request"
                )
        raise AssertionError("unreachable")

    def _send(
        self, method: str, url: str, token: str, params: dict[str, str] | None
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": FHIR_JSON,
            "User-Agent": self._user_agent,
        }
        try:
            return self._heed(
                self._http.request(
                    method, url, headers=headers, params=params, timeout=DEFAULT_TIMEOUT
                )
            )
        except httpx.TimeoutException as exc:
            raise Transient(f"Halaxy {method} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Transient(f"Halaxy {method} failed ({type(exc).__name__})") from exc

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise Transient("Halaxy answered with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise Transient("Halaxy answered with JSON that is not an object")
        return body


def _outcome(response: httpx.Response) -> tuple[str | None, str]:
    """The first OperationOutcome issue's code and a short text, if the body is one."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, ""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None, ""
    issues = body.get("issue") or []
    if not issues or not isinstance(issues[0], dict):
        return None, ""
    issue = issues[0]
    details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
    text = issue.get("diagnostics") or (details or {}).get("text") or ""
    code = remote_text(str(issue["code"]), 40) if issue.get("code") else None
    return code, remote_text(str(text))


def _token_rejected(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    return response.status_code >= 400 and _outcome(response)[0] == "expired"


def _write_token_rejected(response: httpx.Response) -> bool:
    return response.status_code < 500 and _token_rejected(response)


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    code, text = _outcome(response)
    what = f"Halaxy answered {status}" + (f" ({code}: {text})" if code or text else "")
    if status == 429:
        raise RateLimited(what, retry_after_seconds(response))
    if status == 408 or status >= 500:
        raise Transient(what)
    if status == 404:
        raise HalaxyNotFound(what)
    if status == 403 and not text:
        raise Permanent(f"{what}: check the API key's permissions (and the User-Agent)")
    raise Permanent(what)

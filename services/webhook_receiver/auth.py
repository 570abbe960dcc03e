"""Who calls the admin API, `/ops` and `/metrics`, and what their role lets them do.

`Authenticate`, a middleware, reads the credential of every request to those paths before its
handler runs, off the event loop (a named admin's token is looked up in Redis; the bootstrap
token, BRIDGE_ADMIN_TOKEN, is checked without it). The handler's `authorize(request, role)`
then only judges what was found: 401 when no admin stands behind the request (no credential,
or an unknown, revoked or expired token, saying which, never echoing it), 403 when the
caller's role is below the one the handler needs. The caller is kept on `request.state.admin`,
and `actor(request)` is their name, for the audit trail.

A refused action (any method but GET, HEAD and OPTIONS; any 4xx from a handler under those
paths: a 401 or 403, or a 404 or 409 once the caller was let in, unless the handler
audited it itself, as the console's forms do) is recorded in the audit trail as
`access.refused` under the name of whoever was refused: the caller, or the owner of the revoked
or expired token presented; one entry per caller, route and reason a minute, the repeats
logged. A request with no credential or an unknown token names nobody: it is logged, not
audited, so whoever can reach the port cannot fill the audit trail.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.webhook_receiver.deps import Deps, deps_of
from services.webhook_receiver.requests import basic_password, presented_secret
from services.webhook_receiver.responses import ApiError, unavailable
from shared.infra import BridgeError, Keys, StoreUnavailable, translate_redis_errors
from shared.ops import Admin, AdminStore, CredentialRefused, Role

GUARDED = ("/admin", "/ops", "/metrics")
READS = frozenset({"GET", "HEAD", "OPTIONS"})
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="halaxy-bridge ops", charset="UTF-8"'}
CREDENTIAL = "credential"  # where `Authenticate` leaves what it found, on request.state
ROUTE_SHOWN = 200  # characters of a route kept in an audit entry

log = structlog.get_logger("halaxy_bridge.admin")


@dataclass(frozen=True)
class Credential:
    """What a request's Authorization header proved: an admin, a refusal, or nothing."""

    scheme: str = ""  # "bearer" or "basic"; "" when no credential was sent
    admin: Admin | None = None
    refused: CredentialRefused | None = None
    unavailable: bool = False  # Redis could not be asked
    nobody_set_up: bool = False  # no bootstrap token and no named admin: said in the 401


NO_CREDENTIAL = Credential()


def guarded(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in GUARDED)


def identify(admins: AdminStore, header: str) -> Credential:
    """Who the Authorization `header` says the caller is (reads Redis: off the event loop)."""
    scheme = header.strip().partition(" ")[0].lower()
    if scheme == "bearer":
        token = presented_secret(header)
    elif scheme == "basic":
        token = basic_password(header)
    else:
        return NO_CREDENTIAL  # a bare token or another scheme: no credential as asked for
    if not token:
        return Credential(scheme)
    try:
        return Credential(scheme, admins.authenticate(token))
    except CredentialRefused as exc:
        return Credential(scheme, refused=exc, nobody_set_up=_nobody_set_up(admins))
    except StoreUnavailable:
        return Credential(scheme, unavailable=True)


def _nobody_set_up(admins: AdminStore) -> bool:
    if admins.has_bootstrap:
        return False
    try:
        return not admins.list()
    except StoreUnavailable:
        return False


class Authenticate:
    """Middleware: identifies the caller of every request to a guarded path (`identify`, in
    the threadpool), for `authorize` to judge in the handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and guarded(scope["path"]):
            header = Headers(scope=scope).get("authorization", "")
            credential = NO_CREDENTIAL
            if header.strip():
                admins = scope["app"].state.deps.admins
                credential = await run_in_threadpool(identify, admins, header)
            scope.setdefault("state", {})[CREDENTIAL] = credential
        await self.app(scope, receive, send)


def authorize(request: Request, role: Role = Role.VIEWER, *, browser: bool = False) -> Deps:
    """The app's deps, once the caller is an admin whose role allows `role`; else 401 or 403.

    The credential is a Bearer token; for a page a browser opens (`browser`), also the password
    of HTTP Basic auth (any user name), since a browser cannot send a Bearer header as it
    navigates."""
    deps = deps_of(request)
    credential: Credential | None = getattr(request.state, CREDENTIAL, None)
    if credential is None:  # a route outside `GUARDED`: identified here, on the loop
        credential = identify(deps.admins, request.headers.get("authorization", ""))
        setattr(request.state, CREDENTIAL, credential)
    challenge = BASIC_CHALLENGE if browser else None
    if credential.unavailable:
        raise unavailable("Redis is unreachable, and the admin tokens are kept in it")
    admin = credential.admin
    if admin is None or (credential.scheme == "basic" and not browser):
        raise ApiError(401, "unauthorized", _refusal(credential, browser), challenge)
    request.state.admin = admin
    if not admin.role.allows(role):
        request.state.refusal = f"refused: needs the {role} role"
        raise ApiError(
            403, "forbidden", f"needs the {role} role; {admin.name} has the {admin.role} role"
        )
    return deps


def _refusal(credential: Credential, browser: bool) -> str:
    """Why a 401: the token's refusal when one was presented as asked, else what to send."""
    presented = credential.scheme == "bearer" or (browser and credential.scheme == "basic")
    if presented and credential.refused is not None:
        detail = str(credential.refused)
    else:
        detail = "missing admin credential: send Authorization: Bearer <token>"
        if browser:
            detail += ", or HTTP Basic auth with the token as the password"
    if credential.nobody_set_up:
        detail += _NOBODY
    return detail


_NOBODY = " (no admin is set up: set BRIDGE_ADMIN_TOKEN, or add one with halaxy-bridge admins add)"


def actor(request: Request) -> str:
    """Who acts, for the audit trail: the name of the admin `authorize` let in."""
    admin: Admin | None = getattr(request.state, "admin", None)
    if admin is None:
        raise RuntimeError("actor(request) before authorize(request)")
    return admin.name


async def audit_refusal(request: Request, exc: ApiError) -> None:
    """Record a refused action (see the module's docstring); called for every `ApiError`."""
    if exc.status not in REFUSALS or request.method in READS:
        return
    if getattr(request.state, "refusal_audited", False):  # the console's forms audit their own
        return
    if not guarded(request.url.path):
        return
    credential: Credential = getattr(request.state, CREDENTIAL, NO_CREDENTIAL)
    admin: Admin | None = getattr(request.state, "admin", None)
    refused = credential.refused
    name = admin.name if admin else (refused.name if refused is not None else None)
    route = str(getattr(request.scope.get("route"), "path", request.url.path))[:ROUTE_SHOWN]
    outcome = getattr(request.state, "refusal", None)
    if outcome is None:
        reason = refused.reason.value if refused is not None and admin is None else None
        outcome = f"refused: token {reason}" if reason else f"refused: {exc.code}"
    if name is None:
        log.warning("admin.refused", method=request.method, route=route, error=exc.code)
        return
    connection_id = str(request.path_params.get("connection_id", ""))[:ROUTE_SHOWN]
    deps = deps_of(request)

    def record() -> None:
        if not first_in_a_while(deps, name, route, outcome):
            log.warning("admin.refused_again", actor=name, route=route, error=exc.code)
            return
        deps.audit.record(
            actor=name,
            action="access.refused",
            connection_id=connection_id,
            resource_ids=f"{request.method} {route}",
            outcome=outcome,
        )

    await run_in_threadpool(record)


# What an attempted action's refusal answers: not let in (401), not allowed (403), or what it
# names is not there or not in that state (404, 409). A body refused as malformed (422) named
# nothing: it is answered, not audited.
REFUSALS = frozenset({401, 403, 404, 409})

# The trail is kept for a year: a refused caller (a viewer, a revoked token) posting in a loop
# must not grow it without bound. One entry per caller, route and reason a minute; the
# repeats are logged.
REFUSAL_AUDIT_SECONDS = 60


def first_in_a_while(deps: Deps, name: str, route: str, outcome: str) -> bool:
    """Whether this refusal is the first of its kind (caller, route, reason) in a minute."""
    digest = hashlib.sha256(f"{name}\n{route}\n{outcome}".encode()).hexdigest()[:32]
    key = Keys(deps.settings.redis_namespace).refusal_audited(digest)
    try:
        with translate_redis_errors():
            return bool(deps.redis.set(key, b"1", nx=True, ex=REFUSAL_AUDIT_SECONDS))
    except BridgeError:
        return True  # Redis will say itself whether it took the entry (`AuditTrail.record`)

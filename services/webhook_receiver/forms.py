"""Acting from the console: the form posts a browser sends, and what every one goes through.

One URL serves the JSON API and the browser (`negotiated`): a GET that asks for HTML gets the
page, a POST of `application/x-www-form-urlencoded` is a form; everything else goes to the API
handler as before. A JSON API call cannot come from another site's page (a browser sends JSON
there only after a CORS preflight, which the bridge never grants), a form post can: so every
form action (`form_action`) first

1. authenticates the caller (Bearer, or Basic as a browser sends it),
2. refuses a post that another site sent: an `Origin` that is not the bridge's own (the
   request's host, or `BRIDGE_PUBLIC_URL`), `Origin: null`, or `Sec-Fetch-Site: cross-site`
   or `same-site`,
3. reads the form (capped) and checks its synchronizer token (`csrf`) against the caller and
   the path it posts to,

and audits a refused attempt (`console.refused`, with the path and the reason's code) before
answering 403 with the reason. An action's own refusals (404, 409, 422) are audited the same
way: an attempted action that changed nothing.

Adding an action to the console is: a handler `async def act(request, deps, form)` wrapped in
`form_action`, routed with `negotiated(api_handler, form_action(act))` at the API's URL, and a
`pages.post_form(form_signer(request, deps), path, "Label", fields)` on a page. Destructive
ones return `pages.confirmation_page(...)` until `form.confirmed()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qsl, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.admin import actor, authorize, call
from services.webhook_receiver.auth import first_in_a_while
from services.webhook_receiver.csrf import (
    CsrfKeys,
    CsrfRefused,
    check_token,
    credential_identity,
    csrf_keys,
    issue_token,
)
from services.webhook_receiver.deps import Deps
from services.webhook_receiver.negotiation import wants_html
from services.webhook_receiver.pages import CONFIRMED, TYPED, Typed
from services.webhook_receiver.requests import basic_password, presented_secret, read_capped_body
from services.webhook_receiver.responses import ApiError
from shared.ops import Role

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BODY = 64 * 1024
MAX_FORM_FIELDS = 2100  # 1000 ids of a confirmed replay and a few more, with room
CSRF_FIELD = "csrf_token"
REFUSED = "console.refused"

Handler = Callable[[Request], Awaitable[Response]]

log = structlog.get_logger("halaxy_bridge.console")


def is_form(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == FORM_TYPE


def negotiated(api: Handler, browser: Handler) -> Handler:
    """One route, two audiences: a browser's page or form goes to `browser`, the rest (JSON
    clients, as before) to `api`."""

    async def handler(request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            chosen = browser if wants_html(request) else api
        else:
            chosen = browser if is_form(request) else api
        return await chosen(request)

    return handler


def caller_identity(request: Request) -> str:
    """Who is asking, for binding CSRF tokens: a digest of the credential presented. A named
    admin's token is theirs alone, so this binds a form to its admin, and to that token: a
    form signed for a revoked or replaced token is refused with it."""
    header = request.headers.get("authorization", "")
    scheme = header.strip().partition(" ")[0].lower()
    credential = basic_password(header) if scheme == "basic" else presented_secret(header)
    return credential_identity(credential or "")


def may_act(request: Request, role: Role = Role.OPERATOR) -> bool:
    """Whether the admin `authorize` let in has `role` (to be shown the buttons that need it)."""
    admin = getattr(request.state, "admin", None)
    return admin is not None and bool(admin.role.allows(role))


def actor_of(request: Request) -> str:
    """Who acts, in the audit trail: the admin `authorize` let in (`auth.actor`)."""
    return actor(request)


@dataclass(frozen=True)
class FormSigner:
    """Issues the tokens of the forms on one page, for the caller who asked for it."""

    keys: CsrfKeys
    identity: str

    def token(self, action: str) -> str:
        return issue_token(self.keys, self.identity, action)


def form_signer(request: Request, deps: Deps) -> FormSigner:
    return FormSigner(csrf_keys(deps.settings), caller_identity(request))


class Form:
    """A submitted form's fields (a name may repeat)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str) -> str | None:
        """The first value of `name`, or None."""
        return next((value for key, value in self.pairs if key == name), None)

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def confirmed(self, typed: Typed | None = None) -> bool:
        """Whether this post came from a confirmation page's button. With `typed`, the person
        must also have typed its text exactly, or the post is refused (422), nothing done."""
        if self.get(CONFIRMED) != "yes":
            return False
        if typed is not None and self.get(TYPED) != typed.text:
            raise ApiError(
                422,
                "confirmation_mismatch",
                f"to confirm, type {typed.text} exactly; nothing was changed",
            )
        return True


async def read_form(request: Request) -> Form:
    """The urlencoded body, capped at MAX_FORM_BODY, as UTF-8 text; 400 when it is not."""
    body = await read_capped_body(request, MAX_FORM_BODY)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the form is not UTF-8") from None
    except ValueError:
        raise ApiError(413, "body_too_large", "the form has too many fields") from None
    return Form(pairs)


def check_origin(request: Request, public_url: str) -> None:
    """Refuse (403) a post that a page of another site sent."""
    origin = request.headers.get("origin")
    if origin is not None:
        own = {
            _origin(public_url),
            _origin(f"{request.url.scheme}://{request.headers.get('host', '')}"),
        }
        if origin.strip().lower() not in own:
            raise ApiError(
                403,
                "cross_site",
                "the form was sent from another site (its Origin is not this bridge's): "
                "refused. Use the console's own pages.",
            )
        return
    site = request.headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        raise ApiError(
            403,
            "cross_site",
            f"the form was sent from another site (Sec-Fetch-Site: {site}): refused. Use the "
            "console's own pages.",
        )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


FormHandler = Callable[[Request, Deps, Form], Awaitable[Response]]


def form_action(handle: FormHandler, role: Role = Role.OPERATOR) -> Handler:
    """A console action: authenticated (at least `role`), same-origin, CSRF-checked; refusals
    audited."""

    async def action(request: Request) -> Response:
        deps = authorize(request, role, browser=True)
        try:
            check_origin(request, deps.settings.public_url)
            form = await read_form(request)
            try:
                check_token(
                    csrf_keys(deps.settings),
                    caller_identity(request),
                    request.scope["path"],
                    form.get(CSRF_FIELD),
                )
            except CsrfRefused as exc:
                raise ApiError(403, exc.code, exc.detail) from None
            return await handle(request, deps, form)
        except ApiError as exc:
            if 400 <= exc.status < 500:
                await refused(request, deps, exc)
            raise

    return action


async def refused(request: Request, deps: Deps, exc: ApiError) -> None:
    """Audit an attempted action that was refused (and changed nothing). Marked on the
    request, so the app's refusal audit (`auth.audit_refusal`) does not record it again."""
    request.state.refusal_audited = True
    path = _printable(request.scope["path"])
    log.warning("console.refused", path=path, status=exc.status, code=exc.code)
    if not await call(first_in_a_while, deps, actor_of(request), path, exc.code):
        return  # audited within the minute: logged only
    await call(
        partial(
            deps.audit.record,
            actor=actor_of(request),
            action=REFUSED,
            resource_ids=f"POST {path}",
            outcome=exc.code,
        )
    )


def _printable(text: str, limit: int = 200) -> str:
    """`text` on one line and bounded: a path is caller input."""
    kept = "".join(c if c.isprintable() else "?" for c in text)
    return kept if len(kept) <= limit else kept[:limit] + "…"

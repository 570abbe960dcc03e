"""The console's HTML: one layout, tables, forms that post, confirmation, result and error pages.

No script anywhere (the CSP is `default-src 'none'`), every value escaped here, once: callers
hand in text, and `Markup` only for HTML built by these helpers. A form that changes something
is a `<form method="post">` carrying a CSRF token (`services.webhook_receiver.forms`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Protocol
from urllib.parse import quote, urlencode

from starlette.responses import HTMLResponse

# `form-action 'self'`: a form may post only back to the bridge; `frame-ancestors 'none'`
# (with X-Frame-Options) keeps the buttons out of another site's frame. `Referrer-Policy:
# same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with a
# form post, and the console refuses a post whose origin it cannot see as its own.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 110em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
form.inline { display: inline-block; margin: 0 0.3em 0.3em 0; }
form.filters label { margin-right: 1em; }
.error { border-left: 4px solid #a40000; padding-left: 1em; }
.warning { color: #a40000; }
.done { border-left: 4px solid #1a7f37; padding-left: 1em; }
code { background: #f3f3f3; padding: 0 0.2em; }
button { cursor: pointer; }
time, td:first-child { white-space: nowrap; }
"""
NAV = [
    ("/ops", "status"),
    ("/ops/dead-letters", "dead letters"),
    ("/ops/notes/parked", "parked notes"),
    ("/ops/notes/failed", "failed notes"),
]


class Markup(str):
    """HTML these helpers built: inserted as it is. Any other `str` is escaped, also when it
    is added to a `Markup` (`markup + text` escapes the text, as markupsafe does)."""

    __slots__ = ()

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, html(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(html(other), self))


def html(value: object) -> Markup:
    """`value` as HTML: itself when it is `Markup`, else its text escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(escape("—" if value is None else str(value)))


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(html(part) for part in parts))


def tag(element: str, content: object = "", /, **attributes: str | None) -> Markup:
    """`<element attributes>content</element>`; an attribute whose value is None is left out, a
    trailing underscore is dropped (`class_`), and `_` in a name becomes `-`."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{escape(value)}"'
        for key, value in attributes.items()
        if value is not None
    )
    return Markup(f"<{element}{attrs}>{html(content)}</{element}>")


def url(path: str, **query: str | None) -> str:
    """`path` with the query parameters that have a value."""
    given = {k: v for k, v in query.items() if v}
    return f"{quote(path, safe='/')}?{urlencode(given)}" if given else quote(path, safe="/")


def link(path: str, text: object, **query: str | None) -> Markup:
    return tag("a", text, href=url(path, **query))


def page(
    title: str, body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A whole console page: the navigation, the title, the body."""
    nav = join(link(href, text) for href, text in NAV)
    text = (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)} · halaxy-bridge</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<nav>{nav}</nav>\n<h1>{escape(title)}</h1>\n{html(body)}\n</body>\n</html>\n"
    )
    return HTMLResponse(text, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def table(
    table_id: str, columns: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "none"
) -> Markup:
    """A table whose cells are text (escaped) or `Markup` (forms, links)."""
    head = join(tag("th", column) for column in columns)
    body = [join(tag("td", cell) for cell in row) for row in rows]
    lines = [tag("tr", row) for row in body] or [
        Markup(f'<tr><td colspan="{len(columns)}">{escape(empty)}</td></tr>')
    ]
    return tag(
        "table", join([tag("thead", tag("tr", head)), tag("tbody", join(lines))]), id=table_id
    )


Fields = Mapping[str, str | Sequence[str]]


class TokenSource(Protocol):
    """Gives the CSRF token for a form that posts to `action` (`forms.FormSigner`)."""

    def token(self, action: str) -> str: ...


def hidden(fields: Fields) -> Markup:
    """Hidden inputs; a sequence value gives one input per item (a list, such as ids)."""
    return join(
        Markup(f'<input type="hidden" name="{escape(name)}" value="{escape(item)}">')
        for name, value in fields.items()
        for item in ([value] if isinstance(value, str) else value)
    )


def text_input(name: str, label: str, value: str | None = None, **attributes: str) -> Markup:
    """A labelled text field."""
    extra = "".join(f' {k.replace("_", "-")}="{escape(v)}"' for k, v in attributes.items())
    field = Markup(
        f'<input type="text" name="{escape(name)}" value="{escape(value or "")}"'
        f' aria-label="{escape(label)}"{extra}>'
    )
    return tag("label", join([label + " ", field]))


def post_form(
    signer: TokenSource,
    action: str,
    button: str,
    fields: Fields | None = None,
    inputs: object = "",
    class_: str = "inline",
    button_name: str | None = None,
) -> Markup:
    """A form that posts `fields` (and the `inputs` HTML) to `action` with its CSRF token:
    one button. `action` is the path (unquoted) the handler checks the token against."""
    token = hidden({"csrf_token": signer.token(action)})
    content = join(
        [
            token,
            hidden(fields or {}),
            html(inputs),
            tag("button", button, type="submit", name=button_name),
        ]
    )
    return tag("form", content, method="post", action=quote(action, safe="/"), class_=class_)


@dataclass(frozen=True)
class Typed:
    """A confirmation that asks the person to type `text` (e.g. a connection id) before the
    confirm button does anything: for what cannot be undone and is done to the wrong thing
    easily."""

    text: str
    label: str = "Type {text} to confirm"


CONFIRMED = "confirmed"
TYPED = "typed_confirmation"


def confirmation_page(
    signer: TokenSource,
    *,
    title: str,
    happens: Sequence[object],
    action: str,
    fields: Fields,
    button: str,
    back: str,  # an href, from `url`
    warning: str | None = None,
    typed: Typed | None = None,
) -> HTMLResponse:
    """What will happen (each line of `happens`: counts, ids), and one button that posts
    `fields` again to `action`, confirmed. Nothing has changed when this page shows."""
    items = join(tag("li", line) for line in happens)
    extra: object = ""
    if typed is not None:
        label = typed.label.format(text=typed.text)
        extra = tag(
            "p",
            tag(
                "label",
                join(
                    [
                        html(label) + Markup(": "),
                        Markup(
                            f'<input type="text" name="{TYPED}" required autocomplete="off" '
                            f'spellcheck="false" aria-label="{escape(label)}">'
                        ),
                    ]
                ),
            ),
        )
    form = post_form(
        signer, action, button, {**fields, CONFIRMED: "yes"}, inputs=extra, class_="confirm"
    )
    body = join(
        [
            tag("p", "Nothing has changed yet. This will happen when you confirm:"),
            tag("ul", items, id="what-happens"),
            tag("p", warning, class_="warning") if warning else "",
            form,
            tag("p", tag("a", "Cancel and go back", href=back)),
        ]
    )
    return page(title, body)


def result_page(
    title: str, done: Sequence[object], links: Sequence[tuple[str, str]]
) -> HTMLResponse:
    """What an action did, and where to go next (`links`: (href, text), hrefs from `url`)."""
    body = join(
        [
            tag("ul", join(tag("li", line) for line in done), id="result", class_="done"),
            tag("p", join(tag("a", text, href=href) + Markup(" ") for href, text in links)),
        ]
    )
    return page(title, body)


def error_page(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A refusal as a browser shows it: the reason in the body, and nothing changed."""
    body = join(
        [
            tag(
                "div",
                join(
                    [
                        tag("p", detail, id="reason"),
                        tag("p", join(["Error ", tag("code", code), f" (HTTP {status})."])),
                    ]
                ),
                class_="error",
            ),
            tag("p", "Nothing was changed."),
            tag("p", link("/ops", "Back to the status page")),
        ]
    )
    return page(TITLES.get(status, "Error"), body, status=status, headers=headers)


TITLES = {
    400: "Bad request",
    401: "Sign-in needed",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Changed meanwhile",
    413: "Too large",
    415: "Wrong kind of request",
    422: "Not acceptable",
    503: "Unavailable",
}

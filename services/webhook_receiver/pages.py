"""What every HTML page of the operator console shares: the security headers, the stylesheet,
the navigation bar, and small pieces (times, durations, links) rendered the same everywhere.

`page(title, body_html)` is a whole document: skip link, navigation, then `body_html` inside
`<main>`. Pages run no script (the CSP is `default-src 'none'`); whatever a page puts in
`body_html` it must have escaped (`esc`), as every helper here does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import HTMLResponse

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
NAV = [
    ("/ops", "Status"),
    ("/ops/events", "Events"),
    ("/ops/dead-letters", "Dead letters"),
    ("/ops/notes/parked", "Parked notes"),
]
MISSING = "—"
# Colours pass WCAG AA against their backgrounds; every highlighted row or cell also says in
# words (and a symbol) what it means, so nothing relies on colour alone.
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fff; }
main { padding: 0.5em 1.5em 2em; max-width: 100%; box-sizing: border-box; }
h1 { font-size: 1.5em; margin: 0.6em 0 0.2em; }
h2 { font-size: 1.2em; margin: 1.4em 0 0.4em; }
a { color: #0b4f9c; }
a:focus-visible, .scroll:focus-visible, summary:focus-visible {
  outline: 3px solid #c25e00; outline-offset: 2px;
}
.skip { position: absolute; left: -10000px; top: 0; background: #fff; padding: 0.5em 1em; }
.skip:focus { left: 0.5em; z-index: 1; }
nav.console { background: #1f2d3d; padding: 0.4em 1.5em; }
nav.console ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; }
nav.console li { margin-right: 1.4em; }
nav.console a { color: #fff; text-decoration: none; padding: 0.2em 0; display: inline-block; }
nav.console a:hover, nav.console a[aria-current="page"] { text-decoration: underline; }
nav.console a:focus-visible { outline-color: #ffb454; }
.scroll { overflow-x: auto; max-width: 100%; margin-bottom: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #c8c8c8; padding: 0.3em 0.6em; text-align: left; white-space: nowrap; }
thead th { background: #eef0f3; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th[scope="row"] { font-weight: 600; white-space: normal; min-width: 10em; max-width: 22em; }
td.wrap { white-space: normal; min-width: 9em; max-width: 18em; }
time { white-space: nowrap; }
.marker { font-weight: 600; }
tr.attention > * { background: #fde2e1; }
tr.attention > :first-child { box-shadow: inset 4px 0 0 #b3261e; }
tr.down > * { background: #f9d3d0; }
tr.down > :first-child { box-shadow: inset 4px 0 0 #7a1712; }
tr.paused > * { background: #fff1c2; }
tr.paused > :first-child { box-shadow: inset 4px 0 0 #8a6100; }
tr.off > * { background: #eeeeee; color: #4a4a4a; }
tr.off > :first-child { box-shadow: inset 4px 0 0 #6b6b6b; }
.swatch { display: inline-block; padding: 0.1em 0.5em; border: 1px solid #c8c8c8; }
.swatch.attention { background: #fde2e1; box-shadow: inset 4px 0 0 #b3261e; }
.swatch.down { background: #f9d3d0; box-shadow: inset 4px 0 0 #7a1712; }
.swatch.paused { background: #fff1c2; box-shadow: inset 4px 0 0 #8a6100; }
.swatch.off { background: #eeeeee; box-shadow: inset 4px 0 0 #6b6b6b; }
.swatch.ok { background: #fff; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 0.3em 1em; }
dl.legend dd { margin: 0; }
.warning { color: #8c1d18; }
.totals { display: flex; flex-wrap: wrap; gap: 0.4em 1.6em; padding: 0; list-style: none; }
"""


def esc(value: Any) -> str:
    """Any value as escaped text, quotes included (safe in an attribute too)."""
    return escape(str(value), quote=True)


def nav(current: str | None = None) -> str:
    items = []
    for href, label in NAV:
        here = ' aria-current="page"' if href == current else ""
        items.append(f'<li><a href="{esc(href)}"{here}>{esc(label)}</a></li>')
    return f'<nav class="console" aria-label="Operator console"><ul>{"".join(items)}</ul></nav>'


def page(
    title: str, body_html: str, *, current: str | None = None, refresh_seconds: int | None = None
) -> str:
    """A whole console page: `body_html` (already escaped) under the shared chrome."""
    refresh = (
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">\n' if refresh_seconds else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header>{nav(current)}</header>
<main id="main" tabindex="-1">
{body_html}
</main>
</body>
</html>
"""


def html_page(
    title: str,
    body_html: str,
    *,
    status_code: int = 200,
    current: str | None = None,
    refresh_seconds: int | None = None,
) -> HTMLResponse:
    """`page` as a response, with the security headers."""
    html = page(title, body_html, current=current, refresh_seconds=refresh_seconds)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def moment(value: Any) -> str:
    """An ISO 8601 time as `2026-05-01 09:30Z` (UTC, never wrapping), the full value in its
    `datetime` and `title`; anything else as text, escaped."""
    if not isinstance(value, str) or not value:
        return MISSING if value is None or value == "" else esc(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return esc(value)
    if parsed.tzinfo is None:
        return esc(value)
    utc = parsed.astimezone(UTC)
    full = utc.isoformat(timespec="seconds")
    return f'<time datetime="{esc(full)}" title="{esc(full)}">{utc:%Y-%m-%d %H:%M}Z</time>'


def duration(seconds: Any) -> str:
    """A number of seconds as a person reads it: 42s, 5m 01s, 3h 05m, 2d 03h; escaped."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return MISSING if seconds is None else esc(seconds)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return esc(seconds)
    whole = int(max(0.0, float(seconds)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def href(path: str, **query: str) -> str:
    """A console URL with its query (each value percent-encoded), ready for an attribute."""
    if not query:
        return esc(quote(path))
    return esc(f"{quote(path)}?{urlencode(query)}")


def link(text_html: str, path: str, label: str | None = None, **query: str) -> str:
    """A link around already escaped text; `label` names it for a screen reader when the text
    alone (a count) would not."""
    named = f' aria-label="{esc(label)}"' if label else ""
    return f'<a href="{href(path, **query)}"{named}>{text_html}</a>'

"""`GET /ops`: what `/ops/status` answers, as a small read-only HTML page that refreshes itself.

For any named admin (the viewer role) like the rest of `/ops`: their token as a Bearer token,
or, since a browser cannot send a Bearer header when it navigates, as the password of HTTP
Basic auth (any user name); BRIDGE_ADMIN_TOKEN too, as the bootstrap admin.
Every value is escaped (connection names are operator input); the page runs no script.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.webhook_receiver.admin import authorize
from services.webhook_receiver.ops import current_status
from shared.infra import iso_now
from shared.ops import Role, not_synced_rows

REFRESH_SECONDS = 10
OLD_AGE_SECONDS = 300
MISSING = "—"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
QUEUE_COLUMNS = [
    ("queue", "queue"),
    ("depth", "depth"),
    ("delayed", "delayed"),
    ("dead", "dead"),
    ("oldest_age_seconds", "oldest age (s)"),
    ("throughput_per_minute", "throughput (/min)"),
]
CONNECTION_COLUMNS = [
    ("name", "name"),
    ("id", "id"),
    ("enabled", "enabled"),
    ("last_event_at", "last event received"),
    ("last_success_at", "last success"),
    ("failures_last_hour", "failures (1 h)"),
    ("dead_letters", "dead letters"),
    ("parked_notes", "parked notes"),
    ("failed_notes", "failed notes"),
    ("last_sweep", "last sweep"),
    ("last_sweep_kind", "sweep kind"),
]
NOT_SYNCED_COLUMNS = [
    ("id", "connection"),
    ("outcome", "outcome"),
    ("reason", "reason"),
    ("count", "patients"),
]
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr.attention td { background: #fde2e1; }
.warning { color: #a40000; }
"""


async def ops_page(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    return HTMLResponse(render(await current_status(deps)), headers=SECURITY_HEADERS)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(
    table_id: str, columns: list[tuple[str, str]], rows: Iterable[tuple[bool, dict[str, Any]]]
) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    body = []
    for attention, row in rows:
        cells = "".join(f"<td>{escape(_text(row.get(key)))}</td>" for key, _ in columns)
        body.append(f'<tr class="attention">{cells}</tr>' if attention else f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}">none</td></tr>')
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _rows(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = data.get(key)
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _not_synced(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _rows(data, "connections")
    keys = ("patients_not_synced", "patients_refused")
    if not all(isinstance(r.get(k), dict) for r in rows for k in keys):
        return []  # a status from before these counts, or a partial one
    return not_synced_rows(rows)


def render(data: dict[str, Any]) -> str:
    """The page for a status dict; any key may be missing."""
    queues = (
        (
            _number(q.get("dead")) > 0 or _number(q.get("oldest_age_seconds")) > OLD_AGE_SECONDS,
            q,
        )
        for q in _rows(data, "queues")
    )
    connections = (
        (any(_number(c.get(k)) > 0 for k in ("dead_letters", "parked_notes", "failed_notes")), c)
        for c in _rows(data, "connections")
    )
    not_synced = ((row["outcome"] == "refused", row) for row in _not_synced(data))
    warnings = data.get("redis_warnings")
    warnings = warnings if isinstance(warnings, list) else []
    warning_items = "".join(f'<li class="warning">{escape(str(w))}</li>' for w in warnings)
    generated = data.get("generated_at") or iso_now()
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>halaxy-bridge ops</title>
<style>{STYLE}</style>
</head>
<body>
<h1>halaxy-bridge ops</h1>
<p>Generated at <time id="generated-at">{escape(str(generated))}</time>;
refreshes every {REFRESH_SECONDS} s.</p>
<h2>Totals</h2>
<p id="totals">Dead letters: {escape(_text(data.get("dead_letters")))} ·
Parked notes: {escape(_text(data.get("parked_notes")))} ·
Failed notes: {escape(_text(data.get("failed_notes")))} ·
Unrouted programs: {escape(_text(data.get("unrouted_programs")))}</p>
<h2>Redis warnings</h2>
<ul id="redis-warnings">{warning_items or "<li>none</li>"}</ul>
<h2>Queues</h2>
{_table("queues", QUEUE_COLUMNS, queues)}
<h2>Connections</h2>
{_table("connections", CONNECTION_COLUMNS, connections)}
<h2>Patients not synced</h2>
<p>Skipped (never created), left as they were (written before), or refused (by reason).</p>
{_table("patients-not-synced", NOT_SYNCED_COLUMNS, not_synced)}
</body>
</html>
"""

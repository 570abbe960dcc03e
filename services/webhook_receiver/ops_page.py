"""`GET /ops`: what `/ops/status` answers, as a small read-only HTML page that refreshes itself.

For any named admin (the viewer role) like the rest of `/ops`: their token as a Bearer token,
or, since a browser cannot send a Bearer header when it navigates, as the password of HTTP
Basic auth (any user name); BRIDGE_ADMIN_TOKEN too, as the bootstrap admin.
Every value is escaped (connection names are operator input); the page runs no script. It
reads any status, an older bridge's or a partial one: a key missing, or of another type, is
shown as "—".

What makes a row highlighted is said on the page (the legend) and in the row itself (a marker
in words), not by colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from services.webhook_receiver.admin import authorize
from services.webhook_receiver.ops import current_status
from services.webhook_receiver.pages import (
    MISSING,
    SECURITY_HEADERS,
    STYLE,
    Markup,
    document,
    duration,
    moment,
    page,
    url,
)
from shared.infra import QueueName, iso_now
from shared.ops import Role, not_synced_rows

__all__ = ["SECURITY_HEADERS", "STYLE", "ops_page", "render"]

TITLE = "Status"
REFRESH_SECONDS = 10
# A queue's oldest message waiting longer than this needs a look: the alerts' thresholds
# (QueueOldestMessageTooOld). A connection's row uses the live one.
OLD_AGE_SECONDS = {
    QueueName.LIVE.value: 300.0,
    # A storm drains at its clinic's Halaxy budget (480 a minute): 5,000 events take ~10 min.
    QueueName.STORM.value: 3600.0,
    QueueName.BULK.value: 3 * 3600.0,
}
DEFAULT_OLD_AGE_SECONDS = 300.0
QUEUES = [queue.value for queue in QueueName]

ATTENTION = "⚠ needs attention"
DOWN = "✖"
OK = "✔"
PAUSED = "‖ paused"
DISABLED = "⊘ disabled"

DEAD_LETTERS_URL = "/ops/dead-letters"
PARKED_URL = "/ops/notes/parked"
FAILED_URL = "/ops/notes/failed"
EVENTS_URL = "/ops/events"
UNROUTED_URL = "/ops/programs/unrouted"
CONNECTION_URL = "/ops/connections/"


async def ops_page(request: Request) -> Response:
    deps = authorize(request, Role.VIEWER, browser=True)
    data = await current_status(deps)
    return page(TITLE, Markup(body(data)), refresh_seconds=REFRESH_SECONDS, current="/ops")


def esc(value: Any) -> str:
    """Any value as escaped text, quotes included (safe in an attribute too)."""
    return escape(str(value), quote=True)


def link(text_html: str, path: str, label: str | None = None, **query: str) -> str:
    """A link around already escaped text; `label` names it for a screen reader when the text
    alone (a count) would not."""
    named = f' aria-label="{esc(label)}"' if label else ""
    return f'<a href="{esc(url(path, **query))}"{named}>{text_html}</a>'


def when(value: Any) -> str:
    return str(moment(value))


# --- Reading a status that may be partial ----------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None  # NaN is no number to compare


def _positive(value: Any) -> bool:
    number = _number(value)
    return number is not None and number > 0


def _text(value: Any) -> str:
    """A value as escaped text: a dash for what is missing, yes/no, one decimal for a float."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return esc(f"{value:.1f}") if value == value else esc(value)
    if isinstance(value, dict | list):
        return MISSING
    return esc(value)


def _count(value: Any, path: str, label: str, **query: str) -> str:
    """A count linked to its list; a dash, unlinked, when there is no count."""
    if _number(value) is None:
        return _text(value)
    return link(_text(value), path, label, **query)


# --- Tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    title: str
    numeric: bool = False
    description: str = ""  # the header's tooltip
    wrap: bool = False  # words that may wrap (a cell is one line otherwise)


@dataclass(frozen=True)
class Row:
    kind: str  # "", "attention", "down", "paused" or "off"
    header: str  # the row header's html (escaped)
    cells: list[str]  # the other cells' html (escaped)


def _table(table_id: str, label: str, columns: list[Column], rows: list[Row]) -> str:
    """A table with column and row headers, in its own horizontally scrolling region (which
    the keyboard can reach and scroll)."""
    head = "".join(_column_header(c) for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{_cell_class(column)}>{html}</td>"
            for column, html in zip(columns[1:], row.cells, strict=False)
        )
        kind = f' class="{row.kind}"' if row.kind else ""
        body.append(f'<tr{kind}><th scope="row">{row.header}</th>{cells}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}">none</td></tr>')
    return (
        f'<div class="scroll" role="region" aria-label="{esc(label)}" tabindex="0">'
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell_class(column: Column) -> str:
    if column.numeric:
        return ' class="num"'
    return ' class="wrap"' if column.wrap else ""


def _column_header(column: Column) -> str:
    numeric = ' class="num"' if column.numeric else ""
    tip = f' title="{esc(column.description)}"' if column.description else ""
    return f'<th scope="col"{numeric}{tip}>{esc(column.title)}</th>'


SYMBOLS = ("⚠", "✖", "✔", "‖", "⊘")


def _marker(text: str) -> str:
    """A row's state in words, each symbol kept on one line with the word after it."""
    shown = esc(text)
    for symbol in SYMBOLS:
        shown = shown.replace(f"{symbol} ", f"{symbol}&nbsp;")
    return f'<span class="marker">{shown}</span>'


# --- Sections ----------------------------------------------------------------------------------


def _legend() -> str:
    entries = [
        (
            "attention",
            ATTENTION,
            "a connection with dead letters, parked or failed notes, or whose oldest live "
            "message has waited over 5 min; a queue with dead letters, or whose oldest message "
            "has waited over 5 min (live), 1 h (storm) or 3 h (bulk); a worker Dramatiq has not "
            "heard from within its heartbeat timeout (every thread busy: Dramatiq hands what it "
            "holds to other workers); patients refused; a circuit breaker open or half-open "
            "(Halaxy or the platform failed too often in a row: the connection's messages wait).",
        ),
        (
            "down",
            f"{DOWN} down",
            "no worker or no scheduler alive, or an instance whose heartbeat stopped (shown "
            "for a day after its last one).",
        ),
        ("paused", PAUSED, "a paused connection: its webhooks are kept, nothing is processed."),
        ("off", DISABLED, "a disabled connection: its webhooks are refused."),
        ("ok", f"{OK} ok", "no highlight: nothing waits for a person."),
    ]
    items = "".join(
        f'<dt><span class="swatch {kind}">{esc(name)}</span></dt><dd>{esc(meaning)}</dd>'
        for kind, name, meaning in entries
    )
    return (
        '<section aria-labelledby="legend-heading"><h2 id="legend-heading">Legend</h2>'
        f'<dl class="legend" id="legend">{items}</dl>'
        "<p>A dash (—) is a value not known yet. Counts link to their lists. Times are UTC "
        "(the full time in each one's tooltip); ages are how long ago, at the time above.</p>"
        "</section>"
    )


def _totals(data: dict[str, Any]) -> str:
    items = [
        ("Dead letters", data.get("dead_letters"), DEAD_LETTERS_URL),
        ("Parked notes", data.get("parked_notes"), PARKED_URL),
        ("Failed notes", data.get("failed_notes"), FAILED_URL),
        ("Unrouted programs", data.get("unrouted_programs"), UNROUTED_URL),
    ]
    shown = "".join(
        f"<li>{esc(name)}: {_count(value, path, f'{name}: the list')}</li>"
        for name, value, path in items
    )
    unlisted = data.get("dead_letters_unlisted")
    note = (
        f"<p>{_text(unlisted)} of the dead letters belong to no listed connection.</p>"
        if _positive(unlisted)
        else ""
    )
    return (
        '<section aria-labelledby="totals-heading"><h2 id="totals-heading">Waiting for a '
        f'person</h2><ul class="totals" id="totals">{shown}</ul>{note}</section>'
    )


def _kind_state(part: dict[str, Any], scheduler: bool) -> tuple[str, str]:
    """(row kind, marker) of the workers or the scheduler."""
    alive = _number(part.get("alive"))
    if alive is None:
        return "", MISSING
    if alive <= 0:
        seen = part.get("last_seen_at")
        return "down", f"{DOWN} none alive" if seen else f"{DOWN} none seen in the last day"
    if scheduler:
        leader = part.get("leader")
        if not leader:
            return "attention", f"{ATTENTION}: no leader"
        return "", f"{OK} {int(alive)} alive, leader {leader}"
    return "", f"{OK} {int(alive)} alive"


def _liveness(data: dict[str, Any]) -> str:
    columns = [
        Column("process"),
        Column("state", wrap=True),
        Column("alive", numeric=True),
        Column("last heartbeat"),
        Column("at"),
    ]
    rows = []
    instances: list[Row] = []
    for key, name, scheduler in (("workers", "Workers", False), ("scheduler", "Scheduler", True)):
        if key not in data:
            continue
        part = _dict(data.get(key))
        kind, marker = _kind_state(part, scheduler)
        ago = part.get("seen_seconds_ago")
        rows.append(
            Row(
                kind,
                esc(name),
                [
                    _marker(marker) if marker != MISSING else MISSING,
                    _text(part.get("alive")),
                    f"{duration(ago)} ago" if _number(ago) is not None else MISSING,
                    when(part.get("last_seen_at")),
                ],
            )
        )
        instances += [_instance(name, row) for row in _dicts(part.get("instances"))]
    instance_columns = [
        Column("instance"),
        Column("process"),
        Column("state", wrap=True),
        Column("role"),
        Column("host"),
        Column("pid", numeric=True),
        Column("started"),
        Column("last heartbeat"),
        Column(
            "Dramatiq heartbeat",
            description="when this worker last fetched or acked a message, as Dramatiq sees it",
        ),
    ]
    return (
        '<section aria-labelledby="liveness-heading">'
        '<h2 id="liveness-heading">Workers and scheduler</h2>'
        + _table("liveness", "Workers and scheduler", columns, rows)
        + _table("instances", "Worker and scheduler instances", instance_columns, instances)
        + "</section>"
    )


def _instance(process: str, row: dict[str, Any]) -> Row:
    alive = row.get("alive")
    ago = row.get("seen_seconds_ago")
    dramatiq = row.get("dramatiq_seen_seconds_ago")
    fresh_for = _number(row.get("fresh_for_seconds"))
    kind, state = "", MISSING
    if alive is True:
        kind, state = "", f"{OK} alive"
        silent = "dramatiq_seen_seconds_ago" in row and (
            dramatiq is None or (fresh_for is not None and (_number(dramatiq) or 0.0) > fresh_for)
        )
        if silent:
            kind, state = "attention", f"{ATTENTION}: Dramatiq has not heard from it"
    elif alive is False:
        kind, state = "down", f"{DOWN} heartbeat stopped"
    return Row(
        kind,
        _text(row.get("instance")),
        [
            esc(process),
            _marker(state) if state != MISSING else MISSING,
            _text(row.get("role")),
            _text(row.get("host")),
            _text(row.get("pid")),
            when(row.get("started_at")),
            f"{duration(ago)} ago" if _number(ago) is not None else MISSING,
            (f"{duration(dramatiq)} ago" if _number(dramatiq) is not None else MISSING)
            if "dramatiq_seen_seconds_ago" in row
            else "",
        ],
    )


def _old(queue: str, age: Any) -> bool:
    number = _number(age)
    return number is not None and number > OLD_AGE_SECONDS.get(queue, DEFAULT_OLD_AGE_SECONDS)


def _queues(data: dict[str, Any]) -> str:
    columns = [
        Column("queue"),
        Column("state", wrap=True),
        Column("ready", True, "in the queue, not taken by a worker yet"),
        Column("taken", True, "taken by a worker: running, or waiting in its prefetch"),
        Column("delayed", True, "waiting out a retry's backoff or a deferral"),
        Column("queued", True, "ready + taken + delayed"),
        Column("dead letters", True, "the bridge's dead letters of this queue (30 days)"),
        Column("oldest waiting", True, "how long the oldest ready message has waited"),
        Column("done / min", True, "jobs finished a minute, over the last hour"),
    ]
    rows = []
    for q in _dicts(data.get("queues")):
        name = str(q.get("queue", ""))
        reasons = []
        if _positive(q.get("dead")):
            reasons.append("dead letters")
        if _old(name, q.get("oldest_age_seconds")):
            reasons.append("oldest message old")
        marker = f"{ATTENTION}: {', '.join(reasons)}" if reasons else f"{OK} ok"
        age = q.get("oldest_age_seconds")
        rows.append(
            Row(
                "attention" if reasons else "",
                _text(q.get("queue")),
                [
                    _marker(marker),
                    _text(q.get("depth")),
                    _text(q.get("taken")),
                    _text(q.get("delayed")),
                    _text(q.get("queued")),
                    _text(q.get("dead")),
                    _age(age),
                    _text(q.get("throughput_per_minute")),
                ],
            )
        )
    return (
        '<section aria-labelledby="queues-heading"><h2 id="queues-heading">Queues</h2>'
        + _table("queues", "Queues", columns, rows)
        + "</section>"
    )


def _age(seconds: Any) -> str:
    number = _number(seconds)
    if number is None:
        return _text(seconds)
    return f'<span title="{esc(f"{number:.1f}")} s">{duration(number)}</span>'


def _connection_columns(paused: bool) -> list[Column]:
    """What needs a person first (it fits 1280 px); times, switches and links after."""
    columns = [
        Column("name"),
        Column("id"),
        Column("state", wrap=True),
        Column("dead letters", True),
        Column("parked notes", True),
        Column("failed notes", True),
    ]
    for queue in QUEUES:
        columns += [
            Column(f"{queue} queued", True, f"unfinished messages in the {queue} queue"),
            Column(f"{queue} oldest", True, f"how long its oldest due {queue} message waited"),
        ]
    columns += [
        Column("failures (1 h)", True),
        Column("last event received"),
        Column("last success"),
        Column("last sweep"),
        Column("sweep kind"),
        Column("enabled"),
        *([Column("paused")] if paused else []),
        Column("events"),
    ]
    return columns


def _connection(row: dict[str, Any], paused_column: bool) -> Row:
    cid = row.get("id")
    cid_text = str(cid) if isinstance(cid, str) else ""
    queues = _dict(row.get("queues"))
    reasons = [
        what
        for key, what in (
            ("dead_letters", "dead letters"),
            ("parked_notes", "parked notes"),
            ("failed_notes", "failed notes"),
        )
        if _positive(row.get(key))
    ]
    live = _dict(queues.get(QueueName.LIVE.value))
    if _old(QueueName.LIVE.value, live.get("oldest_age_seconds")):
        reasons.append("live message old")
    reasons += [
        f"{_text(c.get('upstream'))} circuit {CIRCUIT_STATES[c['state']]}"
        for c in _dicts(row.get("circuits"))
        if c.get("state") in ("open", "half_open")
    ]
    markers = []
    kind = ""
    if reasons:
        kind = "attention"
        markers.append(f"{ATTENTION}: {', '.join(reasons)}")
    if row.get("paused") is True:
        kind = kind or "paused"
        markers.append(PAUSED)
    if row.get("enabled") is False:
        kind = kind or "off"
        markers.append(DISABLED)
    state = " · ".join(markers) if markers else f"{OK} ok"
    scoped = {"connection": cid_text} if cid_text else {}
    name = _text(row.get("name"))
    cells = [
        link(_text(cid), CONNECTION_URL + cid_text, f"{name}: its page and actions")
        if cid_text
        else _text(cid),
        _marker(state),
        _count(row.get("dead_letters"), DEAD_LETTERS_URL, f"dead letters of {name}", **scoped),
        _count(row.get("parked_notes"), PARKED_URL, "parked notes: the list"),
        _count(row.get("failed_notes"), FAILED_URL, "failed notes: the list"),
    ]
    for queue in QUEUES:
        counts = _dict(queues.get(queue))
        queued = counts.get("queued")
        delayed = counts.get("delayed")
        shown = _text(queued)
        if _number(queued) is not None and _number(delayed) is not None:
            shown = f'<span title="{esc(f"{_text(delayed)} delayed")}">{shown}</span>'
        cells += [shown, _age(counts.get("oldest_age_seconds"))]
    cells += [
        _text(row.get("failures_last_hour")),
        when(row.get("last_event_at")),
        when(row.get("last_success_at")),
        when(row.get("last_sweep")),
        _text(row.get("last_sweep_kind")),
        _text(row.get("enabled")),
        *([_text(row.get("paused"))] if paused_column else []),
        link("events", EVENTS_URL, f"events of {name}", **scoped) if cid_text else MISSING,
    ]
    return Row(kind, name, cells)


def _connections(data: dict[str, Any]) -> str:
    rows = _dicts(data.get("connections"))
    paused = any("paused" in row for row in rows)
    return (
        '<section aria-labelledby="connections-heading">'
        '<h2 id="connections-heading">Connections</h2>'
        + _table(
            "connections",
            "Connections",
            _connection_columns(paused),
            [_connection(row, paused) for row in rows],
        )
        + "</section>"
    )


CIRCUIT_STATES = {"open": "open", "half_open": "half-open", "closed": "closed"}


def _circuits(data: dict[str, Any]) -> str:
    """The circuit breakers that are not closed, or that count failures."""
    shown = []
    for row in _dicts(data.get("connections")):
        for circuit in _dicts(row.get("circuits")):
            state = circuit.get("state")
            if state == "closed" and not _positive(circuit.get("failures")):
                continue
            tripped = state in ("open", "half_open")
            words = CIRCUIT_STATES.get(state) if isinstance(state, str) else None
            marker = f"{ATTENTION}: circuit {words}" if tripped else f"{OK} {words or '—'}"
            shown.append(
                Row(
                    "attention" if tripped else "",
                    _text(row.get("id")),
                    [
                        _marker(marker),
                        _text(circuit.get("upstream")),
                        when(circuit.get("since")),
                        _text(circuit.get("failures")),
                        when(circuit.get("retry_at")),
                    ],
                )
            )
    columns = [
        Column("connection"),
        Column("state", wrap=True),
        Column("upstream"),
        Column("since"),
        Column("failures in a row", True, "timeouts, connection errors and 5xx; never a 4xx"),
        Column("probe after", description="when the cooldown ends and one message probes"),
    ]
    return (
        '<section aria-labelledby="circuits-heading">'
        '<h2 id="circuits-heading">Circuit breakers</h2>'
        "<p>Per connection and upstream (Halaxy, the platform), those not closed or counting "
        "failures. Open: the upstream failed too often in a row, the connection's messages "
        "wait (no thread held, no retry counted) until the cooldown ends; half-open: one "
        "message probes, and its success closes the circuit.</p>"
        + _table("circuits", "Circuit breakers", columns, shown)
        + "</section>"
    )


def _not_synced(data: dict[str, Any]) -> str:
    rows = _dicts(data.get("connections"))
    keys = ("patients_not_synced", "patients_refused")
    found: list[dict[str, Any]] = []
    if rows and all(isinstance(r.get(k), dict) for r in rows for k in keys):
        try:
            found = not_synced_rows(rows)
        except (KeyError, TypeError, AttributeError):
            found = []  # a status from before these counts, or a partial one
    columns = [Column("connection"), Column("state"), Column("outcome"), Column("reason")]
    columns.append(Column("patients", numeric=True))
    shown = [
        Row(
            "attention" if row.get("outcome") == "refused" else "",
            _text(row.get("id")),
            [
                _marker(ATTENTION if row.get("outcome") == "refused" else f"{OK} ok"),
                _text(row.get("outcome")),
                _text(row.get("reason")),
                _text(row.get("count")),
            ],
        )
        for row in found
    ]
    return (
        '<section aria-labelledby="not-synced-heading">'
        '<h2 id="not-synced-heading">Patients not synced</h2>'
        "<p>Skipped (never created), left as they were (written before), or refused (by "
        "reason).</p>"
        + _table("patients-not-synced", "Patients not synced", columns, shown)
        + "</section>"
    )


def _warnings(data: dict[str, Any]) -> str:
    warnings = data.get("redis_warnings")
    warnings = warnings if isinstance(warnings, list) else []
    items = "".join(f'<li class="warning">⚠ {esc(w)}</li>' for w in warnings)
    return (
        '<section aria-labelledby="redis-heading"><h2 id="redis-heading">Redis warnings</h2>'
        f'<ul id="redis-warnings">{items or "<li>none</li>"}</ul></section>'
    )


def body(data: dict[str, Any]) -> str:
    """The page's content for a status dict; any key may be missing or of another type."""
    data = _dict(data)
    generated = data.get("generated_at") or iso_now()
    return (
        f'<p>Status at <span id="generated-at">{when(generated)}</span>; '
        f"refreshes every {REFRESH_SECONDS} s. What the colours and markers mean: "
        '<a href="#legend-heading">the legend</a>.</p>'
        + _totals(data)
        + _liveness(data)
        + _queues(data)
        + _connections(data)
        + _circuits(data)
        + _not_synced(data)
        + _warnings(data)
        + _legend()
    )


def render(data: dict[str, Any]) -> str:
    """The whole page for a status dict; any key may be missing."""
    return document(TITLE, Markup(body(data)), refresh_seconds=REFRESH_SECONDS, current="/ops")

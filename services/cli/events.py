"""`halaxy-bridge events list|show`: the per-event delivery log (kept 30 days).

`list` searches, newest first, a page at a time: the next page is `--cursor` with the cursor
the last one printed. `show` gives one event's record and every attempt, found by its id
alone (`--connection` keeps to one connection's, when two logged the same id).
"""

from __future__ import annotations

from typing import Any

import click

from services.cli.context import CliContext, cli_context
from services.cli.output import NOTHING, emit, fail, json_option, table
from shared.infra import Keys, utcnow
from shared.telemetry import EventLog, EventPage, EventView, parse_query

COLUMNS = [
    "received_at",
    "connection_id",
    "event_type",
    "event_id",
    "resource_id",
    "state",
    "detail",
    "attempts",
    "dead_letter_id",
]
ATTEMPT_COLUMNS = ["at", "outcome", "actor", "detail", "status_code", "seconds", "calls"]


def event_log(ctx: CliContext) -> EventLog:
    """The event log, for commands that read it or move an event's state."""
    return EventLog(
        ctx.redis, Keys(ctx.settings.redis_namespace), ctx.settings.event_log_max_per_connection
    )


@click.group("events")
def events() -> None:
    """The per-event delivery log: every Halaxy event and program, its attempts, its state."""


@events.command("list")
@click.option("--connection", "connection_id", help="Only this connection's events (or unrouted).")
@click.option("--state", help="Only events in this state (done, dead, parked, ...).")
@click.option("--since", help="Received at or after: ISO time, or a duration back: 30m, 24h, 7d.")
@click.option("--until", help="Received at or before: ISO time, or a duration back.")
@click.option("--resource", "resource_id", help="Only events of this Halaxy resource id.")
@click.option("--event", "event_id", help="Only the event with this id.")
@click.option("--limit", help="How many at most (default 50, at most 200).")
@click.option("--cursor", help="Go on after the previous page (the cursor it printed).")
@json_option
def list_(as_json: bool, **options: str | None) -> None:
    """Search the log, newest first."""
    raw = {
        "connection": options["connection_id"],
        "state": options["state"],
        "since": options["since"],
        "until": options["until"],
        "resource": options["resource_id"],
        "event": options["event_id"],
        "limit": options["limit"],
        "cursor": options["cursor"],
    }
    with cli_context(as_json) as ctx:
        query = parse_query(raw, utcnow())
        page = event_log(ctx).search(query)
        emit(as_json, page.shown(), lambda: _page_text(page))


def _page_text(page: EventPage) -> str:
    rows = [_row(view) for view in page.events]
    lines = [table(rows, COLUMNS, {"event_type": "type", "dead_letter_id": "dead letter"})]
    if page.next_cursor is not None:
        if not page.complete:
            lines.append(
                f"(looked at {page.scanned} entries without filling the page; there may be more)"
            )
        lines.append(f"next page: --cursor {page.next_cursor}")
    return "\n".join(lines)


def _row(view: EventView) -> dict[str, Any]:
    shown = view.shown()
    return {**shown, "attempts": len(view.attempts)}


@events.command("show")
@click.argument("event_id")
@click.option("--connection", "connection_id", help="Only this connection's record of it.")
@json_option
def show(event_id: str, connection_id: str | None, as_json: bool) -> None:
    """One event: what it was, its state, and every attempt (oldest first)."""
    with cli_context(as_json) as ctx:
        query = parse_query({"event": event_id, "connection": connection_id}, utcnow())
        if query.event_id is None:
            fail(as_json, "invalid", "give the event's id")
        views = event_log(ctx).get(str(query.event_id), query.connection_id)
        if not views:
            fail(
                as_json,
                "unknown_event",
                f"no event {event_id} in the log (events are kept 30 days)",
                exit_code=4,
            )
        data = {"event_id": event_id, "records": [view.shown() for view in views]}
        emit(as_json, data, lambda: "\n\n".join(_view_text(view) for view in views))


def _view_text(view: EventView) -> str:
    shown = view.shown()
    fields = [
        ("event", f"{shown['event_id']} ({shown['event_type']}, from {shown['source']})"),
        ("connection", shown["connection_id"]),
        ("resource", shown["resource_id"]),
        ("note", shown["note_id"]),
        ("routed from", shown["routed_from"]),
        ("received at", shown["received_at"]),
        ("state", f"{shown['state']} since {shown['state_at']}"),
        ("detail", shown["detail"]),
        ("dead letter", shown["dead_letter_id"]),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [
        f"{name.ljust(width)}  {NOTHING if value is None else value}" for name, value in fields
    ]
    attempts = [
        {
            **attempt,
            "calls": "; ".join(_call_text(call) for call in attempt["calls"])
            + (f" (+{attempt['calls_not_kept']} more)" if attempt["calls_not_kept"] else ""),
        }
        for attempt in shown["attempts"]
    ]
    lines += ["", "attempts (oldest first):", table(attempts, ATTEMPT_COLUMNS)]
    return "\n".join(lines)


def _call_text(call: dict[str, Any]) -> str:
    status = "no answer" if call["status"] is None else str(call["status"])
    return f"{call['upstream']} {call['method']} {call['route']} {status}"

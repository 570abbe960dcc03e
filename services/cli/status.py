"""`halaxy-bridge status`: queues, connections, and what needs a person."""

from __future__ import annotations

import textwrap
import time
from datetime import datetime
from typing import Any

import click
import orjson

from services.cli.context import CliContext, cli_context, unavailable_detail
from services.cli.output import clipped, emit, json_option, table
from shared.infra import Keys, StoreUnavailable
from shared.notes import NoteOutbox
from shared.ops import not_synced_rows
from shared.ops import status as gather

WIDTH = 120  # the text fits a terminal this wide
NAME_LEAST = 12  # a name gets the room the other columns leave, at least this much

QUEUE_COLUMNS = ["queue", "depth", "taken", "delayed", "queued", "dead", "oldest", "per_minute"]
QUEUE_HEADERS = {"depth": "ready", "oldest": "oldest waiting", "per_minute": "done a minute"}
CONNECTION_COLUMNS = [
    "id",
    "state",
    "last_event",
    "last_success",
    "failures",
    "dead_letters",
    "parked_notes",
    "failed_notes",
    "last_sweep",
    "name",
]
CONNECTION_HEADERS = {
    "last_event": "last event",
    "last_success": "last ok",
    "failures": "fails/1h",
    "dead_letters": "dead",
    "parked_notes": "parked",
    "failed_notes": "failed",
    "last_sweep": "last sweep",
}


def span(seconds: float) -> str:
    """A duration as a person reads it at a glance: 42s, 7m, 3h, 12d, 2y."""
    seconds = max(0.0, seconds)
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ago(moment: str | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return span((now - datetime.fromisoformat(moment)).total_seconds()) + " ago"


def _connection_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    sweep = ago(row["last_sweep"], now)
    if row["last_sweep"] is not None:
        sweep += f" ({row['last_sweep_kind']})"
    return {
        **row,
        # Off (disabled) wins: a paused connection that is also disabled takes nothing in.
        "state": "off" if not row["enabled"] else "paused" if row["paused"] else "on",
        "last_event": ago(row["last_event_at"], now),
        "last_success": ago(row["last_success_at"], now),
        "failures": row["failures_last_hour"],
        "last_sweep": sweep,
    }


def _queue_row(row: dict[str, Any]) -> dict[str, Any]:
    age = row["oldest_age_seconds"]
    return {
        **row,
        "oldest": None if age is None else span(age),
        "per_minute": row["throughput_per_minute"],
    }


NOT_SYNCED_COLUMNS = ["id", "outcome", "reason", "count"]
QUEUED_COLUMNS = [
    "id",
    "live_queued",
    "live_delayed",
    "live_oldest",
    "bulk_queued",
    "bulk_delayed",
    "bulk_oldest",
]
# Shown only while a connection has messages on the storm lane (docs/isolation.md): its count
# alone, so the table still fits a terminal.
STORM_COLUMN = "storm_queued"
QUEUED_HEADERS = {
    f"{queue}_{part}": f"{queue} {title}"
    for queue in ("live", "storm", "bulk")
    for part, title in (("queued", "queued"), ("delayed", "delayed"), ("oldest", "oldest due"))
}


def _queued_rows(connections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The connections with unfinished messages: how many per queue, how many of those
    delayed, and how long the oldest due one has waited."""
    rows = []
    for row in connections:
        queues = row.get("queues") or {}
        if not any(counts.get("queued") for counts in queues.values()):
            continue
        shown: dict[str, Any] = {"id": row["id"]}
        for queue, counts in queues.items():
            age = counts.get("oldest_age_seconds")
            shown[f"{queue}_queued"] = counts.get("queued")
            shown[f"{queue}_delayed"] = counts.get("delayed")
            shown[f"{queue}_oldest"] = None if age is None else span(age)
        rows.append(shown)
    return rows


def _queued_table(rows: list[dict[str, Any]]) -> str:
    columns = list(QUEUED_COLUMNS)
    if any(row.get(STORM_COLUMN) for row in rows):
        columns.insert(columns.index("live_oldest") + 1, STORM_COLUMN)
    return table(rows, columns, QUEUED_HEADERS)


def _liveness(name: str, part: dict[str, Any] | None, now: datetime) -> str:
    """One line: how many alive (and which scheduler leads), and when one was last seen."""
    if part is None:
        return f"{name}: not reported"
    last = part.get("last_seen_at")
    if last is None:
        return f"{name}: NONE SEEN in the last day"
    seen = f"last heartbeat {ago(last, now)}"
    if not part["alive"]:
        return f"{name}: NONE ALIVE ({seen})"
    text = f"{name}: {part['alive']} alive"
    if "leader" in part:
        text += f", leader {part['leader']}" if part["leader"] else ", NO LEADER"
    return f"{text} ({seen})"


HELD_COLUMNS = ["id", "paused_since", "held", "oldest_held"]


def _held_rows(data: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The paused connections, and any still releasing what it held (a resume under way)."""
    return [
        {
            "id": row["id"],
            "paused_since": ago(row["paused_at"], now) if row["paused"] else "not paused",
            "held": row["held_messages"],
            "oldest_held": None
            if row["oldest_held_at"] is None
            else ago(row["oldest_held_at"], now),
        }
        for row in data["connections"]
        if row["paused"] or row["held_messages"]
    ]


CIRCUIT_COLUMNS = ["id", "upstream", "state", "since", "failures", "probe_after"]
CIRCUIT_HEADERS = {"failures": "fails in a row", "probe_after": "probe after"}


def _circuit_rows(data: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The circuits that are not closed, or that count failures."""
    return [
        {
            "id": row["id"],
            "upstream": circuit["upstream"],
            "state": circuit["state"].replace("_", "-"),
            "since": ago(circuit["since"], now),
            "failures": circuit["failures"],
            "probe_after": circuit["retry_at"],
        }
        for row in data["connections"]
        for circuit in row.get("circuits") or []
        if circuit["state"] != "closed" or circuit["failures"]
    ]


def _text(data: dict[str, Any]) -> str:
    now = datetime.fromisoformat(data["generated_at"])
    connections = [_connection_row(row, now) for row in data["connections"]]
    others = table(connections, CONNECTION_COLUMNS[:-1], CONNECTION_HEADERS)
    room = max(NAME_LEAST, WIDTH - 2 - max(len(line) for line in others.splitlines()))
    connections = [{**row, "name": clipped(row["name"], room)} for row in connections]
    parts = [
        f"halaxy-bridge status at {data['generated_at']}",
        "",
        _liveness("workers", data.get("workers"), now),
        _liveness("scheduler", data.get("scheduler"), now),
        "",
        table([_queue_row(row) for row in data["queues"]], QUEUE_COLUMNS, QUEUE_HEADERS),
        "",
        table(connections, CONNECTION_COLUMNS, CONNECTION_HEADERS),
        "",
        "queued per connection (unfinished messages; oldest due: how long it has waited):",
        _queued_table(_queued_rows(data["connections"])),
        "",
        "patients not synced:",
        table(not_synced_rows(data["connections"]), NOT_SYNCED_COLUMNS),
        "",
        "paused (webhooks kept, nothing processed until resumed) and held messages:",
        table(_held_rows(data, now), HELD_COLUMNS),
        "",
        "circuit breakers (open: the upstream kept failing, the connection's messages wait; "
        "half-open: one probe goes):",
        table(_circuit_rows(data, now), CIRCUIT_COLUMNS, CIRCUIT_HEADERS),
        "",
        f"dead letters: {data['dead_letters']}   parked notes: {data['parked_notes']}"
        f"   failed notes: {data['failed_notes']}",
        f"unrouted programs: {data['unrouted_programs']}",
    ]
    for warning in data["redis_warnings"]:
        parts += textwrap.wrap(
            f"WARNING: {warning}", WIDTH, subsequent_indent="  ", break_on_hyphens=False
        )
    return "\n".join(parts)


def _gather(ctx: CliContext) -> dict[str, Any]:
    keys = Keys(ctx.settings.redis_namespace)
    return gather(
        ctx.redis, keys, ctx.connections, NoteOutbox(ctx.redis, keys, ctx.settings.fernet)
    )


@click.command()
@click.option("--watch", is_flag=True, help="Refresh until interrupted (--json: one line each).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.5, 3600))
@json_option
def status(watch: bool, interval: float, as_json: bool) -> None:
    """Workers and scheduler alive (from their heartbeats); queue depths, ages and
    throughput; per connection whether it is paused and how many messages it holds, its last
    event, last success, failures in the last hour, dead letters, parked notes, last sweep,
    its unfinished messages per queue, its circuit breakers (halaxy, platform) that are not
    closed, and the patients not written (skipped, left as they were, or refused by
    reason)."""
    with cli_context(as_json) as ctx:
        if not watch:
            data = _gather(ctx)
            emit(as_json, data, lambda: _text(data))
            return
        try:
            while True:
                try:
                    data = _gather(ctx)
                except StoreUnavailable as exc:  # keep watching: Redis may come back
                    detail = unavailable_detail(exc, ctx.settings)
                    data = {"error": "unavailable", "detail": detail}
                if as_json:
                    click.echo(orjson.dumps(data).decode())
                else:
                    click.clear()
                    click.echo(_text(data) if "error" not in data else f"error: {data['detail']}")
                time.sleep(interval)
        except KeyboardInterrupt:
            pass

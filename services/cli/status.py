"""`halaxy-bridge status`: queues, connections, and what needs a person."""

from __future__ import annotations

import time
from typing import Any

import click
import orjson

from services.cli.context import CliContext, cli_context
from services.cli.output import emit, json_option, table
from shared.errors import StoreUnavailable
from shared.notes_outbox import NoteOutbox
from shared.status import not_synced_rows
from shared.status import status as gather
from shared.store import Keys

QUEUE_COLUMNS = [
    "queue",
    "depth",
    "delayed",
    "dead",
    "oldest_age_seconds",
    "throughput_per_minute",
]
CONNECTION_COLUMNS = [
    "id",
    "name",
    "enabled",
    "last_event_at",
    "last_success_at",
    "failures_last_hour",
    "dead_letters",
    "parked_notes",
    "failed_notes",
    "last_sweep",
]

NOT_SYNCED_COLUMNS = ["id", "outcome", "reason", "count"]


def _text(data: dict[str, Any]) -> str:
    parts = [
        f"halaxy-bridge status at {data['generated_at']}",
        "",
        table(data["queues"], QUEUE_COLUMNS),
        "",
        table(data["connections"], CONNECTION_COLUMNS),
        "",
        "patients not synced:",
        table(not_synced_rows(data["connections"]), NOT_SYNCED_COLUMNS),
        "",
        f"dead letters: {data['dead_letters']}   parked notes: {data['parked_notes']}"
        f"   failed notes: {data['failed_notes']}",
    ]
    parts += [f"WARNING: {warning}" for warning in data["redis_warnings"]]
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
    """Queue depths, ages and throughput; per connection its last event, last success,
    failures in the last hour, dead letters, parked notes, last sweep, and the patients not
    written (skipped, left as they were, or refused by reason)."""
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
                    data = {"error": "unavailable", "detail": f"{exc} (REDIS_URL)"}
                if as_json:
                    click.echo(orjson.dumps(data).decode())
                else:
                    click.clear()
                    click.echo(_text(data) if "error" not in data else f"error: {data['detail']}")
                time.sleep(interval)
        except KeyboardInterrupt:
            pass

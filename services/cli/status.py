"""`halaxy-bridge status`: queues, connections, and what needs a person."""

from __future__ import annotations

from typing import Any

import click

from services.cli.context import cli_context
from services.cli.output import emit, json_option, table
from shared.notes_outbox import NoteOutbox
from shared.status import status as gather
from shared.store import Keys


def _text(data: dict[str, Any]) -> str:
    parts = [
        table(data["queues"], ["queue", "depth", "delayed", "dead", "oldest_age_seconds"]),
        "",
        table(
            data["connections"],
            [
                "id",
                "name",
                "enabled",
                "last_sweep",
                "last_sweep_kind",
                "dead_letters",
                "parked_notes",
            ],
        ),
        "",
        f"dead letters: {data['dead_letters']}   parked notes: {data['parked_notes']}",
    ]
    parts += [f"WARNING: {warning}" for warning in data["redis_warnings"]]
    return "\n".join(parts)


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Queue depths and ages, each connection's last sweep, dead letters, parked notes."""
    with cli_context(as_json) as ctx:
        keys = Keys(ctx.settings.redis_namespace)
        data = gather(
            ctx.redis, keys, ctx.connections, NoteOutbox(ctx.redis, keys, ctx.settings.fernet)
        )
        emit(as_json, data, lambda: _text(data))

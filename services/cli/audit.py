"""`halaxy-bridge audit`: who wrote what to Halaxy or the platform, and every ops action."""

from __future__ import annotations

from dataclasses import asdict

import click

from services.cli.context import cli_context
from services.cli.output import emit, json_option, table
from shared.infra import utcnow
from shared.ops import parse_since

COLUMNS = ["at", "actor", "action", "connection_id", "resource_ids", "outcome"]


@click.command()
@click.option("--connection", "connection_id", default=None, help="Only this connection.")
@click.option("--since", default=None, help="ISO 8601 time, or a duration back: 30m, 24h, 7d.")
@click.option("--action", default=None, help="Only actions starting with this, e.g. halaxy.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@json_option
def audit(
    connection_id: str | None, since: str | None, action: str | None, limit: int, as_json: bool
) -> None:
    """The audit trail, oldest first: at most --limit of the newest entries that match."""
    with cli_context(as_json) as ctx:
        entries = ctx.audit.entries(
            connection_id=connection_id,
            since=parse_since(since, utcnow()),
            action=action,
            limit=limit,
        )
        rows = [asdict(entry) for entry in entries]
        emit(as_json, {"entries": rows}, lambda: table(rows, COLUMNS))

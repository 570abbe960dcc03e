"""`halaxy-bridge programs unrouted`: the Physitrack program posts no connection could take."""

from __future__ import annotations

import click

from services.cli.context import cli_context
from services.cli.output import emit, json_option, table
from shared.notes import UnroutedPrograms

COLUMNS = ["id", "received_at", "reason", "token_ends_with", "patient_id", "kind"]


@click.group()
def programs() -> None:
    """Physitrack program posts."""


@programs.command("unrouted")
@json_option
def unrouted(as_json: bool) -> None:
    """List the program posts whose token no enabled connection knows (oldest first).

    Each is written as a note once a practitioner with its token is added to an enabled
    connection (`practitioners add`); the scheduler does it within one tick. No token, link
    or program name is shown: the last four characters of the token tell them apart."""
    with cli_context(as_json) as ctx:
        kept = UnroutedPrograms(ctx.redis, ctx.connections.keys, ctx.settings.fernet).oldest_first()
        rows = [program.shown() for program in kept]
        emit(
            as_json,
            {"unrouted": rows, "count": len(rows)},
            lambda: table(rows, COLUMNS) if rows else "No unrouted program posts.",
        )

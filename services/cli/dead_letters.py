"""`halaxy-bridge dead-letters list|replay|purge`."""

from __future__ import annotations

import getpass

import click

from services.cli.context import CliContext, cli_context
from services.cli.output import emit, json_option, table
from shared import dead_letter_ops as ops
from shared.audit import AuditTrail
from shared.connections import utcnow
from shared.dead_letters import DeadLetter, DeadLetterStore
from shared.store import Keys

COLUMNS = ["id", "failed_at", "connection_id", "actor", "resource_id", "error_class", "reason"]


def filters(command: click.decorators.FC) -> click.decorators.FC:
    command = click.option("--reason", help="Only letters whose error or reason contains this.")(
        command
    )
    command = click.option("--since", help="ISO time, or a duration back: 30m, 24h, 7d.")(command)
    return click.option("--connection", "connection_id", help="Only this connection.")(command)


def _store(ctx: CliContext) -> DeadLetterStore:
    return DeadLetterStore(ctx.redis, Keys(ctx.settings.redis_namespace))


def _selected(
    ctx: CliContext,
    ids: tuple[str, ...],
    connection_id: str | None,
    since: str | None,
    reason: str | None,
    all_matching: bool,
) -> list[DeadLetter]:
    return ops.select(
        _store(ctx),
        list(ids),
        connection_id,
        ops.parse_since(since, utcnow()),
        reason,
        all_matching,
    )


@click.group("dead-letters")
def dead_letters() -> None:
    """Jobs that failed for good (kept 30 days): look, replay, purge."""


@dead_letters.command("list")
@filters
@json_option
def list_(connection_id: str | None, since: str | None, reason: str | None, as_json: bool) -> None:
    """List dead letters, newest last."""
    with cli_context(as_json) as ctx:
        letters = _selected(ctx, (), connection_id, since, reason, all_matching=True)
        rows = [ops.public(letter) for letter in letters]
        emit(as_json, {"dead_letters": rows}, lambda: table(rows, COLUMNS))


@dead_letters.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all-matching", is_flag=True, help="Replay every letter the filters match.")
@filters
@click.option("--by", default=None, help="Who replays (default: your user name).")
@json_option
def replay(
    ids: tuple[str, ...],
    all_matching: bool,
    connection_id: str | None,
    since: str | None,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Queue dead letters again, as bulk work."""
    with cli_context(as_json) as ctx:
        letters = _selected(ctx, ids, connection_id, since, reason, all_matching)
        done = ops.replay(
            _store(ctx),
            ctx.queue(),
            AuditTrail(ctx.redis, Keys(ctx.settings.redis_namespace)),
            letters,
            by or getpass.getuser(),
        )
        emit(as_json, {"replayed": done}, f"Replayed {len(done)} dead letter(s).")


@dead_letters.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all-matching", is_flag=True, help="Purge every letter the filters match.")
@filters
@click.option("--by", default=None, help="Who purges (default: your user name).")
@json_option
def purge(
    ids: tuple[str, ...],
    all_matching: bool,
    connection_id: str | None,
    since: str | None,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Forget dead letters without running them."""
    with cli_context(as_json) as ctx:
        letters = _selected(ctx, ids, connection_id, since, reason, all_matching)
        done = ops.purge(
            _store(ctx),
            AuditTrail(ctx.redis, Keys(ctx.settings.redis_namespace)),
            letters,
            by or getpass.getuser(),
        )
        emit(as_json, {"purged": done}, f"Purged {len(done)} dead letter(s).")

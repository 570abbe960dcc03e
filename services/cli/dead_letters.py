"""`halaxy-bridge dead-letters list|replay|purge`."""

from __future__ import annotations

from typing import Any

import click

from services.cli.context import CliContext, cli_context
from services.cli.events import event_log
from services.cli.output import emit, json_option, table
from shared.infra import Keys, utcnow
from shared.ops import DeadLetter, DeadLetterStore
from shared.ops import replay as ops

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


def action_options(command: click.decorators.FC) -> click.decorators.FC:
    """What replay and purge both take: ids, or --all-matching with filters; and who acts."""
    command = json_option(command)
    command = click.option("--by", default=None, help="Who acts (default: your user name).")(
        command
    )
    command = filters(command)
    command = click.option("--all-matching", is_flag=True, help="Every letter the filters match.")(
        command
    )
    return click.argument("ids", nargs=-1)(command)


def _act(
    verb: str,
    ids: tuple[str, ...],
    all_matching: bool,
    connection_id: str | None,
    since: str | None,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    with cli_context(as_json) as ctx:
        who = ctx.actor(by)
        letters = _selected(ctx, ids, connection_id, since, reason, all_matching)
        if verb == "replayed":
            done = ops.replay(_store(ctx), ctx.queue(), ctx.audit, letters, who, event_log(ctx))
        else:
            done = ops.purge(_store(ctx), ctx.audit, letters, who)
        emit(as_json, {verb: done}, f"{verb.capitalize()} {len(done)} dead letter(s).")


@dead_letters.command("replay")
@action_options
def replay(**options: Any) -> None:
    """Queue dead letters again, as bulk work (audited)."""
    _act("replayed", **options)


@dead_letters.command("purge")
@action_options
def purge(**options: Any) -> None:
    """Forget dead letters without running them (audited)."""
    _act("purged", **options)

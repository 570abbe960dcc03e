"""`halaxy-bridge audit`: who wrote what to Halaxy or the platform, and every ops action; `audit
verify` checks the trail's hash chain, `audit export` writes it out for a SIEM."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from services.cli.context import cli_context
from services.cli.output import emit, fail, json_option, table
from shared.infra import AuditEntry, utcnow
from shared.ops import parse_since

COLUMNS = ["at", "actor", "action", "connection_id", "resource_ids", "outcome"]
BROKEN = 1  # `audit verify`'s exit code when the chain does not hold


@click.group(invoke_without_command=True)
@click.option("--connection", "connection_id", default=None, help="Only this connection.")
@click.option("--since", default=None, help="ISO 8601 time, or a duration back: 30m, 24h, 7d.")
@click.option("--action", default=None, help="Only actions starting with this, e.g. halaxy.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@json_option
@click.pass_context
def audit(
    context: click.Context,
    connection_id: str | None,
    since: str | None,
    action: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, oldest first: at most --limit of the newest entries that match.

    `audit verify` checks that no entry was edited or removed; `audit export` writes every
    entry as JSON lines, hashes included, for a SIEM."""
    if context.invoked_subcommand is not None:
        return
    with cli_context(as_json) as ctx:
        entries = ctx.audit.entries(
            connection_id=connection_id,
            since=parse_since(since, utcnow()),
            action=action,
            limit=limit,
        )
        rows = [asdict(entry) for entry in entries]
        emit(as_json, {"entries": rows}, lambda: table(rows, COLUMNS))


@audit.command("verify")
@json_option
def verify(as_json: bool) -> None:
    """Check the hash chain from the oldest entry kept to the newest: exit 0 when it holds,
    1 naming the first entry where it breaks (an entry edited, removed or added by hand)."""
    with cli_context(as_json) as ctx:
        report = ctx.audit.verify()
    emit(as_json, asdict(report), report.describe())
    if not report.holds:
        raise SystemExit(BROKEN)


@audit.command("export")
@click.option("--since", default=None, help="ISO 8601 time, or a duration back: 30m, 24h, 7d.")
@click.option("--output", default=None, help="Write to this file (replaced) instead of stdout.")
@json_option
def export(since: str | None, output: str | None, as_json: bool) -> None:
    """Every entry kept (or since --since), oldest first, one JSON object a line, with seq,
    prev and hash, so a SIEM can verify the chain again (docs/operations.md says how)."""
    with cli_context(as_json) as ctx:
        moment = parse_since(since, utcnow())
        if output is None:
            _write(ctx.audit.export(moment), sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        try:
            with Path(output).open("wb") as file:
                count = _write(ctx.audit.export(moment), file)
        except OSError as exc:
            fail(as_json, "output", f"cannot write {output}: {exc.strerror}")
        emit(
            as_json,
            {"exported": count, "output": str(output)},
            f"Exported {count} entries to {output}.",
        )


def _write(entries: Iterable[AuditEntry], file: BinaryIO) -> int:
    count = 0
    for entry in entries:
        file.write(orjson.dumps(asdict(entry)) + b"\n")
        count += 1
    return count

"""`halaxy-bridge notes parked|failed|resolve`: the clinical notes waiting for a person."""

from __future__ import annotations

from collections.abc import Callable

import click

from services.cli.context import cli_context
from services.cli.output import emit, json_option, table
from shared.errors import InvalidInput
from shared.note_resolution import Resolution, Waiting, find_waiting, resolve_note
from shared.notes_outbox import NoteOutbox, NoteRecord
from shared.store import Keys

COLUMNS = ["note_id", "connection_id", "patient_id", "title", "updated_at", "reason"]


@click.group()
def notes() -> None:
    """Clinical notes the bridge could not settle on its own."""


@notes.command("parked")
@json_option
def parked(as_json: bool) -> None:
    """List parked notes: their POST to Halaxy ended without a clear answer."""
    _list(as_json, NoteOutbox.parked)


@notes.command("failed")
@json_option
def failed(as_json: bool) -> None:
    """List failed notes: refused for good, nothing written (kept 180 days)."""
    _list(as_json, NoteOutbox.failed)


def _list(as_json: bool, listing: Callable[[NoteOutbox], list[NoteRecord]]) -> None:
    with cli_context(as_json) as ctx:
        outbox = NoteOutbox(ctx.redis, Keys(ctx.settings.redis_namespace), ctx.settings.fernet)
        rows = [r.shown() for r in listing(outbox)]
        emit(as_json, {"notes": rows}, lambda: table(rows, COLUMNS))


@notes.command("resolve")
@click.argument("note_id")
@click.option(
    "--posted",
    "docref_id",
    metavar="DOCREF_ID",
    help="The note is in Halaxy: its DocumentReference id.",
)
@click.option("--retry", is_flag=True, help="The note is not in Halaxy: post it again.")
@click.option("--drop", is_flag=True, help="Give up on this note.")
@click.option(
    "--state",
    type=click.Choice([w.value for w in Waiting]),
    default=Waiting.PARKED.value,
    show_default=True,
    help="The state you saw the note in; it is settled only if it is still in it.",
)
@click.option("--by", default=None, help="Who resolves it (default: your user name).")
@json_option
def resolve(
    note_id: str,
    docref_id: str | None,
    retry: bool,
    drop: bool,
    state: str,
    by: str | None,
    as_json: bool,
) -> None:
    """Settle one parked or failed note, recording who and when."""
    chosen = [
        r
        for r, on in (
            (Resolution.POSTED, docref_id is not None),
            (Resolution.RETRY, retry),
            (Resolution.DROP, drop),
        )
        if on
    ]
    with cli_context(as_json) as ctx:
        if len(chosen) != 1:
            raise InvalidInput("give exactly one of --posted DOCREF_ID, --retry, --drop")
        outbox = NoteOutbox(ctx.redis, Keys(ctx.settings.redis_namespace), ctx.settings.fernet)
        record = find_waiting(outbox, note_id, Waiting(state))
        settled = resolve_note(
            outbox, ctx.queue(), record, chosen[0], ctx.actor(by), ctx.audit, docref_id
        )
        emit(
            as_json,
            settled.shown(),
            f"Note {note_id} is now {settled.state} (by {settled.resolved_by}).",
        )

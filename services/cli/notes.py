"""`halaxy-bridge notes parked|failed|resolve`: the clinical notes waiting for a person."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from services.cli.context import cli_context
from services.cli.events import event_log
from services.cli.output import emit, json_option, table
from shared.infra import InvalidInput, Keys, NotFound
from shared.notes import (
    OFFSET_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    NoteOutbox,
    NotesPage,
    NoteState,
    NoteStateConflict,
    Resolution,
    Waiting,
    find_waiting,
    resolve_note,
)

COLUMNS = ["note_id", "connection_id", "patient_id", "title", "updated_at", "reason"]


@click.group()
def notes() -> None:
    """Clinical notes the bridge could not settle on its own."""


def page_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--offset",
        type=click.IntRange(0, OFFSET_MAX),
        default=0,
        show_default=True,
        help="Skip this many of the oldest.",
    )(command)
    return click.option(
        "--limit",
        type=click.IntRange(1, PAGE_MAX),
        default=PAGE_DEFAULT,
        show_default=True,
        help="Show at most this many.",
    )(command)


@notes.command("parked")
@page_options
@json_option
def parked(limit: int, offset: int, as_json: bool) -> None:
    """List parked notes, oldest first: their POST to Halaxy ended without a clear answer."""
    _list(as_json, NoteState.PARKED, offset, limit)


@notes.command("failed")
@page_options
@json_option
def failed(limit: int, offset: int, as_json: bool) -> None:
    """List failed notes, oldest first: refused for good, nothing written (kept 180 days)."""
    _list(as_json, NoteState.FAILED, offset, limit)


def _list(as_json: bool, state: NoteState, offset: int, limit: int) -> None:
    with cli_context(as_json) as ctx:
        outbox = NoteOutbox(ctx.redis, Keys(ctx.settings.redis_namespace), ctx.settings.fernet)
        page = outbox.page(state, offset=offset, limit=limit)
        emit(as_json, page.shown(), lambda: _table(page))


def _table(page: NotesPage) -> str:
    rows: list[dict[str, Any]] = page.shown()["notes"]
    end = min(page.offset + (page.limit or page.total), page.total)
    if page.offset >= page.total:
        return (
            "(none)"
            if page.total == 0
            else f"(nothing from --offset {page.offset}: {page.total} in all)"
        )
    more = f"; the next ones: --offset {end}" if end < page.total else ""
    return f"{table(rows, COLUMNS)}\n{page.offset + 1} to {end} of {page.total}{more}"


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
        try:
            record = find_waiting(outbox, note_id, Waiting(state))
            settled = resolve_note(
                outbox,
                ctx.queue(),
                record,
                chosen[0],
                ctx.actor(by),
                ctx.audit,
                docref_id,
                events=event_log(ctx),
            )
        except NoteStateConflict as exc:
            if exc.actual.value not in {w.value for w in Waiting}:
                raise
            raise NotFound(
                f"{exc}; to settle it as {exc.actual}, give --state {exc.actual}"
            ) from None
        emit(
            as_json,
            settled.shown(),
            f"Note {note_id} is now {settled.state} (by {settled.resolved_by}).",
        )

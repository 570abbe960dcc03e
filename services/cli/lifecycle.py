"""`halaxy-bridge connections enable|edit|pause|resume|offboard`: a clinic after `add`.

Each keeps the connection's id, so the clinic's webhook URLs stay as configured in Halaxy;
offboarding erases the clinic's data and leaves one audit record of it.
"""

from __future__ import annotations

from typing import Any

import click

from services.cli.context import CliContext, cli_context
from services.cli.output import emit, fail, json_option, one_line
from shared.connections import Connection, PausedConnections, lifecycle, onboarding
from shared.connections import practitioner_map as parse_practitioners
from shared.infra import InvalidInput, utcnow
from shared.ops import offboard as erase_connection
from shared.ops import standard_erasures


def needs_yes(as_json: bool, yes: bool, what: str) -> None:
    """With --json nobody can answer a question: such a run must say --yes, or it is refused
    before anything is read or changed."""
    if as_json and not yes:
        fail(
            as_json,
            "confirmation_needed",
            f"{what} asks for confirmation, which --json cannot answer: pass --yes",
        )


def _state(ctx: CliContext, connection: Connection, **extra: Any) -> dict[str, Any]:
    """The connection as `show` gives it, with its pause and held messages."""
    holding = PausedConnections(ctx.redis, ctx.connections.keys).holding([connection.id])
    held = holding[connection.id]
    return {
        **onboarding.summary(connection),
        "paused": held.is_paused,
        "held_messages": held.held,
        **extra,
    }


@click.command("enable")
@click.argument("connection_id")
@click.option(
    "--allow-shared-platform-key",
    is_flag=True,
    help="Enable it although another enabled connection uses its platform API key (meant).",
)
@json_option
def enable(connection_id: str, allow_shared_platform_key: bool, as_json: bool) -> None:
    """Enable a disabled connection again: same id, webhook URLs and secrets, so nothing
    changes in Halaxy. Refused if another enabled connection took its Halaxy key, platform
    API key or practitioner tokens meanwhile."""
    with cli_context(as_json) as ctx:
        connection = ctx.connection(connection_id)
        enabled = lifecycle.enable_connection(
            ctx.connections,
            connection,
            utcnow(),
            ctx.audit,
            ctx.user,
            allow_shared_platform_key=allow_shared_platform_key,
        )
        data = _state(ctx, enabled, changed=not connection.enabled)
        text = (
            f"Connection {enabled.id} is enabled again. Its webhook URLs and secrets are as "
            "before: nothing changes in Halaxy or the platform."
            if not connection.enabled
            else f"Connection {enabled.id} was enabled already: nothing changed."
        )
        emit(as_json, data, text)


@click.command("edit")
@click.argument("connection_id")
@click.option("--name", help="A new name for people.")
@click.option("--author", help="A new default note author: a Halaxy practice role, PR-xxx.")
@click.option("--no-author", is_flag=True, help="No default author (the practitioner map only).")
@click.option(
    "--practitioner",
    "practitioners",
    multiple=True,
    metavar="TOKEN=PR-xxx",
    help="Map a platform practitioner token to a Halaxy author role (add or change); repeat.",
)
@click.option(
    "--remove-practitioner",
    "removed",
    multiple=True,
    metavar="TOKEN",
    help="Remove a token from the practitioner map; repeat.",
)
@click.option("--pdf-hosts", help="HOST[:PORT],... allowed to serve program PDFs (replaces).")
@click.option("--default-pdf-hosts", is_flag=True, help="Back to the platform's own PDF hosts.")
@click.option("--platform-base-url", help="The therapy platform's API base URL.")
@json_option
def edit(
    connection_id: str,
    name: str | None,
    author: str | None,
    no_author: bool,
    practitioners: tuple[str, ...],
    removed: tuple[str, ...],
    pdf_hosts: str | None,
    default_pdf_hosts: bool,
    platform_base_url: str | None,
    as_json: bool,
) -> None:
    """Change the name, practitioner map, default author, PDF hosts or platform base URL,
    checked as `add` checks them. The id, webhook URLs and secrets stay."""
    with cli_context(as_json) as ctx:
        request = lifecycle.parse_edit(
            _edit_fields(
                name,
                author,
                no_author,
                practitioners,
                removed,
                pdf_hosts,
                default_pdf_hosts,
                platform_base_url,
            )
        )
        updated, changed = lifecycle.edit_connection(
            ctx.connections, ctx.connection(connection_id), request, utcnow(), ctx.audit, ctx.user
        )
        data = _state(ctx, updated, changed=changed)
        text = (
            f"Connection {updated.id}: changed {', '.join(changed)}."
            if changed
            else f"Connection {updated.id}: nothing changed."
        )
        emit(as_json, data, text)


def _edit_fields(
    name: str | None,
    author: str | None,
    no_author: bool,
    practitioners: tuple[str, ...],
    removed: tuple[str, ...],
    pdf_hosts: str | None,
    default_pdf_hosts: bool,
    platform_base_url: str | None,
) -> dict[str, Any]:
    """The flags as the admin API's merge patch."""
    if author is not None and no_author:
        raise InvalidInput("give --author or --no-author, not both")
    if pdf_hosts is not None and default_pdf_hosts:
        raise InvalidInput("give --pdf-hosts or --default-pdf-hosts, not both")
    fields: dict[str, Any] = {}
    if name is not None:
        fields["name"] = name
    if author is not None or no_author:
        fields["author"] = author
    mapped: dict[str, str | None] = dict(parse_practitioners(list(practitioners)))
    for token in (t.strip() for t in removed):
        if token in mapped:
            raise InvalidInput("a practitioner token is both mapped and removed")
        mapped[token] = None
    if mapped:
        fields["practitioners"] = mapped
    if pdf_hosts is not None or default_pdf_hosts:
        fields["pdf_hosts"] = None if pdf_hosts is None else pdf_hosts.split(",")
    if platform_base_url is not None:
        fields["platform_base_url"] = platform_base_url
    return fields


@click.command("pause")
@click.argument("connection_id")
@json_option
def pause(connection_id: str, as_json: bool) -> None:
    """Pause a connection: its webhooks are still answered and kept, nothing of it is
    processed (no sync, no note, no sweep, no poll) until `resume`."""
    with cli_context(as_json) as ctx:
        connection = ctx.connection(connection_id)
        pauses = PausedConnections(ctx.redis, ctx.connections.keys)
        changed = lifecycle.pause_connection(pauses, connection, utcnow(), ctx.audit, ctx.user)
        data = _state(ctx, connection, changed=changed)
        text = (
            f"Connection {connection.id} is paused: its webhooks are kept, nothing is processed."
            if changed
            else f"Connection {connection.id} was paused already."
        )
        emit(as_json, data, text)


@click.command("resume")
@click.argument("connection_id")
@json_option
def resume(connection_id: str, as_json: bool) -> None:
    """Resume a paused connection: what it held is processed first, in the order it came,
    then new work."""
    with cli_context(as_json) as ctx:
        connection = ctx.connection(connection_id)
        pauses = PausedConnections(ctx.redis, ctx.connections.keys)
        resumed = lifecycle.resume_connection(pauses, connection, ctx.audit, ctx.user)
        data = _state(
            ctx,
            connection,
            changed=resumed.was_paused,
            released=resumed.released,
            still_held=resumed.still_held,
        )
        text = (
            f"Connection {connection.id} is running: {resumed.released} held message(s) "
            "released, in the order they came."
        )
        if not resumed.was_paused:
            text = f"Connection {connection.id} was not paused; {resumed.released} released."
        if resumed.still_held:
            text += f" {resumed.still_held} still held: the scheduler releases them."
        emit(as_json, data, text)


@click.command("offboard")
@click.argument("connection_id")
@click.option("--yes", is_flag=True, help="Do not ask to type the id (needed with --json).")
@json_option
def offboard(connection_id: str, yes: bool, as_json: bool) -> None:
    """Erase everything the bridge holds for a clinic (its secrets, patient links, notes,
    queued and held messages, dead letters, cached tokens, counts), leaving one audit record
    of the erasure. Asks to type the connection id unless --yes. Cannot be undone."""
    needs_yes(as_json, yes, "offboard")
    with cli_context(as_json) as ctx:
        connection = ctx.connection(connection_id)
        if not yes:
            typed = click.prompt(
                f"This erases everything the bridge holds for {connection.id} "
                f"({one_line(connection.name)}) and cannot be undone. Type the connection id "
                "to confirm",
                default="",
                show_default=False,
                err=True,
            )
            if typed.strip() != connection.id:
                fail(
                    as_json,
                    "not_confirmed",
                    "the id typed is not the connection's: nothing was erased",
                    exit_code=1,
                )
        erasures = standard_erasures(ctx.connections, ctx.settings.fernet)
        done = erase_connection(
            ctx.connections, connection, erasures, utcnow(), ctx.audit, ctx.user
        )
        data = done.shown()
        emit(as_json, data, lambda: _erased_text(data))


def _erased_text(data: dict[str, Any]) -> str:
    lines = [f"Connection {data['id']} is offboarded. Erased:"]
    lines += [f"  {what:<20} {count}" for what, count in data["erased"].items()]
    lines.append("The audit trail keeps its entries, and one more: connection.offboarded.")
    return "\n".join(lines)


LIFECYCLE = (enable, edit, pause, resume, offboard)

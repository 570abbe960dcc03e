"""`halaxy-bridge practitioners add|list|rotate|remove`: a Physitrack connection's practitioners."""

from __future__ import annotations

import sys
from typing import Any

import click

from services.cli.context import cli_context
from services.cli.output import NOTHING, emit, json_option, table
from shared.connections import Connection, roster
from shared.infra import InvalidInput, utcnow

STDIN = "-"  # a secret flag given as `-` is read from stdin
SECRETS = {"token": "--token", "api_key": "--api-key", "pms_key": "--pms-key"}
COLUMNS = ["halaxy_practitioner", "token", "auth", "pms_name", "default", "added_at", "rotated_at"]
HEADERS = {"halaxy_practitioner": "practitioner"}


@click.group()
def practitioners() -> None:
    """Manage a Physitrack connection's practitioners, each with their own token and key.

    A secret given as `-` (--token -, --api-key -, --pms-key -) is read from stdin, so it stays
    out of the shell history; one of them at most, since stdin holds one value. At a terminal
    it is asked for without being shown.
    """


@practitioners.command("add")
@click.argument("connection_id")
@click.option(
    "--token",
    required=True,
    help="The practitioner's Physitrack token, named by every program post (- reads stdin).",
)
@click.option(
    "--halaxy-practitioner",
    required=True,
    metavar="PR-…",
    help="Their Halaxy practice role: it books their appointments and authors their notes.",
)
@click.option(
    "--api-key", required=True, help="Their Physitrack API key, X-Api-Key (- reads stdin)."
)
@click.option("--pms-name", help="Without PT Direct: the PMS name Physitrack knows the bridge by.")
@click.option(
    "--pms-key",
    help="Without PT Direct: the PMS key they entered in Physitrack (- reads stdin).",
)
@click.option(
    "--default",
    "default",
    is_flag=True,
    help="Patients with no practitioner of their own go to this one's account.",
)
@click.option("--no-verify", is_flag=True, help="Do not check the key against Physitrack now.")
@json_option
def add(
    connection_id: str,
    token: str,
    halaxy_practitioner: str,
    api_key: str,
    pms_name: str | None,
    pms_key: str | None,
    default: bool,
    no_verify: bool,
    as_json: bool,
) -> None:
    """Add a practitioner; their key is checked with an authenticated read of their clients."""
    with cli_context(as_json) as ctx:
        given = _from_stdin({"token": token, "api_key": api_key, "pms_key": pms_key})
        request = roster.parse_practitioner(
            {
                **given,
                "halaxy_practitioner": halaxy_practitioner,
                "pms_name": pms_name,
                "default": default,
                "verify": not no_verify,
            }
        )
        updated = roster.add_practitioner(
            ctx.connections,
            ctx.verify_platform_key,
            ctx.connection(connection_id),
            request,
            utcnow(),
            ctx.audit,
            ctx.user,
        )
        checked = "key not checked (--no-verify)" if no_verify else "Physitrack accepted the key"
        _show(as_json, updated, f"Added {halaxy_practitioner.strip()}: {checked}.")


@practitioners.command("list")
@click.argument("connection_id")
@json_option
def list_(connection_id: str, as_json: bool) -> None:
    """List a connection's practitioners: no secret, the last 4 characters of each token."""
    with cli_context(as_json) as ctx:
        _show(as_json, ctx.connection(connection_id))


@practitioners.command("rotate")
@click.argument("connection_id")
@click.argument("halaxy_practitioner", metavar="PR-…")
@click.option("--token", help="Their new Physitrack token (- reads stdin).")
@click.option("--api-key", help="Their new Physitrack API key (- reads stdin).")
@click.option("--pms-key", help="Their new PMS key, without PT Direct (- reads stdin).")
@click.option(
    "--default/--no-default",
    "default",
    default=None,
    help="Make them the connection's default practitioner, or no longer.",
)
@click.option("--no-verify", is_flag=True, help="Do not check a new key against Physitrack.")
@json_option
def rotate(
    connection_id: str,
    halaxy_practitioner: str,
    token: str | None,
    api_key: str | None,
    pms_key: str | None,
    default: bool | None,
    no_verify: bool,
    as_json: bool,
) -> None:
    """Replace a practitioner's token or keys (a new key is checked), or their default."""
    with cli_context(as_json) as ctx:
        given = _from_stdin({"token": token, "api_key": api_key, "pms_key": pms_key})
        request = roster.parse_practitioner_rotation(
            {**given, "default": default, "verify": not no_verify}
        )
        updated = roster.rotate_practitioner(
            ctx.connections,
            ctx.verify_platform_key,
            ctx.connection(connection_id),
            halaxy_practitioner,
            request,
            utcnow(),
            ctx.audit,
            ctx.user,
        )
        replaced = ", ".join(request.replaced())
        _show(as_json, updated, f"Rotated {halaxy_practitioner.strip()}: {replaced}.")


@practitioners.command("remove")
@click.argument("connection_id")
@click.argument("halaxy_practitioner", metavar="PR-…")
@click.option("--yes", is_flag=True, help="Confirm: remove them.")
@json_option
def remove(connection_id: str, halaxy_practitioner: str, yes: bool, as_json: bool) -> None:
    """Remove a practitioner: program posts with their token are no longer this connection's,
    and patients already in their Physitrack account stay there."""
    if not yes:
        raise click.UsageError(
            "removing a practitioner stops routing their program posts to this connection: "
            "add --yes to confirm"
        )
    with cli_context(as_json) as ctx:
        updated = roster.remove_practitioner(
            ctx.connections,
            ctx.connection(connection_id),
            halaxy_practitioner,
            utcnow(),
            ctx.audit,
            ctx.user,
        )
        _show(as_json, updated, f"Removed {halaxy_practitioner.strip()}.")


def _from_stdin(values: dict[str, str | None]) -> dict[str, str | None]:
    """`values` with the one given as `-` read from stdin."""
    asked = [name for name, value in values.items() if value == STDIN]
    if len(asked) > 1:
        flags = " and ".join(SECRETS[name] for name in asked)
        raise InvalidInput(f"only one secret can be read from stdin, not {flags}")
    if not asked:
        return values
    if sys.stdin.isatty():
        value = click.prompt(SECRETS[asked[0]], hide_input=True, err=True)
    else:
        value = sys.stdin.read().rstrip("\r\n")
    return {**values, asked[0]: value}


def _show(as_json: bool, connection: Connection, said: str | None = None) -> None:
    rows = roster.practitioner_rows(connection)
    data = {"connection_id": connection.id, "practitioners": rows}
    emit(as_json, data, lambda: "\n".join([*([said] if said else []), practitioner_table(rows)]))


def practitioner_table(rows: list[dict[str, Any]]) -> str:
    """`practitioner_rows` as a table, the token as its last four characters."""
    shown = [
        {**r, "token": f"…{r['token_ends_with']}" if r["token_ends_with"] else NOTHING}
        for r in rows
    ]
    return table(shown, COLUMNS, HEADERS)

"""`halaxy-bridge admins add|list|revoke`: the people (and programs) who may use the admin API,
`/ops` and `/metrics`, each with a role and a token of their own."""

from __future__ import annotations

import click

from services.cli.context import CliContext, cli_context
from services.cli.output import emit, fail, json_option, table
from shared.infra import Keys, utcnow
from shared.ops import AdminStore, Role, UnknownAdmin, parse_lifetime

COLUMNS = ["name", "role", "state", "expires_at", "added_at", "added_by", "revoked_at"]
DEFAULT_EXPIRY = "90d"
by_option = click.option("--by", default=None, help="Who acts (default: your user name).")


def _store(ctx: CliContext) -> AdminStore:
    return AdminStore(
        ctx.redis, Keys(ctx.settings.redis_namespace), ctx.audit, ctx.settings.admin_token
    )


@click.group()
def admins() -> None:
    """Named admin credentials: viewer (reads /ops, the admin API's listings and /metrics),
    operator (also replays, purges and resolves; pauses, resumes, disables and enables a
    connection), admin (also adds, edits, rotates and offboards connections, and changes
    practitioners). BRIDGE_ADMIN_TOKEN is the bootstrap admin."""


@admins.command("add")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice([role.value for role in Role]),
    help="viewer < operator < admin: each may do what the ones before it may.",
)
@click.option(
    "--expires-in",
    default=DEFAULT_EXPIRY,
    show_default=True,
    help="How long the token works: 30m, 12h, 90d (at most 366d).",
)
@by_option
@json_option
def add(name: str, role: str, expires_in: str, by: str | None, as_json: bool) -> None:
    """Add an admin and print their token: the only time it is shown (audited)."""
    with cli_context(as_json) as ctx:
        lifetime = parse_lifetime(expires_in)
        expires_at = utcnow() + lifetime
        who = ctx.actor(by)
        token = _store(ctx).add(name, Role(role), expires_at, who)
        data = {
            "name": name,
            "role": role,
            "expires_at": expires_at.isoformat(),
            "added_by": who,
            "token": token,
        }
        emit(
            as_json,
            data,
            f"Added {name} ({role}), until {expires_at.isoformat(timespec='seconds')}.\n"
            "Their token, shown this once (the bridge keeps only its hash):\n"
            f"{token}",
        )


@admins.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List admins: name, role, state (active, expired, revoked), expiry; never a token."""
    with cli_context(as_json) as ctx:
        store = _store(ctx)
        now = utcnow()
        rows = [record.shown(now) for record in store.list()]
        bootstrap = "set" if store.has_bootstrap else "not set"
        emit(
            as_json,
            {"admins": rows, "bootstrap_admin": store.has_bootstrap},
            lambda: (
                f"{table(rows, COLUMNS)}\n"
                f"BRIDGE_ADMIN_TOKEN (bootstrap-admin, role admin): {bootstrap}"
            ),
        )


@admins.command("revoke")
@click.argument("name")
@by_option
@json_option
def revoke(name: str, by: str | None, as_json: bool) -> None:
    """Revoke an admin's token: refused from now on (audited)."""
    with cli_context(as_json) as ctx:
        try:
            record = _store(ctx).revoke(name, ctx.actor(by))
        except UnknownAdmin as exc:
            fail(as_json, "unknown_admin", str(exc), exit_code=4)
            raise  # unreachable: fail() exits
        emit(as_json, record.shown(utcnow()), f"Revoked {record.name}'s token.")

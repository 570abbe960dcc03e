"""`halaxy-bridge connections add|list|show|disable|rotate`, and the lifecycle after `add`
(`services/cli/lifecycle.py`: enable, edit, pause, resume, offboard)."""

from __future__ import annotations

from typing import Any

import click

from services.cli.context import cli_context
from services.cli.lifecycle import LIFECYCLE, needs_yes
from services.cli.output import emit, json_option, one_line, table
from services.cli.practitioners import practitioner_table
from shared.connections import onboarding, practitioner_map
from shared.infra import utcnow


@click.group()
def connections() -> None:
    """Manage clinic connections (one per Halaxy practice)."""


@connections.command("add")
@click.option("--name", required=True, help="The clinic's name, for people.")
@click.option("--halaxy-key", required=True, help="CLIENT_ID:CLIENT_SECRET from Halaxy.")
@click.option(
    "--region",
    type=click.Choice(["au", "eu"], case_sensitive=False),
    help="Halaxy region (default au).",
)
@click.option("--halaxy-base-url", help="Explicit Halaxy API base URL instead of a region.")
@click.option(
    "--platform", type=click.Choice(["physitrack", "rest"], case_sensitive=False), required=True
)
@click.option("--platform-base-url", required=True, help="The therapy platform's API base URL.")
@click.option("--platform-api-key", required=True, help="The therapy platform's API key.")
@click.option(
    "--platform-pms-name",
    help="Physitrack without PT Direct: the PMS name Physitrack knows the bridge by.",
)
@click.option(
    "--platform-pms-key",
    help="Physitrack without PT Direct: the PMS key the practitioner entered in Physitrack.",
)
@click.option("--author", help="Default author of notes: a Halaxy practice role, PR-xxx.")
@click.option(
    "--practitioner",
    "practitioners",
    multiple=True,
    metavar="TOKEN=PR-xxx",
    help="Platform practitioner token to Halaxy author role; repeat for each.",
)
@click.option("--pdf-hosts", help="HOST[:PORT],... allowed to serve program PDFs.")
@click.option("--signing", is_flag=True, help="Also require Standard Webhooks signatures.")
@click.option("--no-verify", is_flag=True, help="Do not check the Halaxy key now.")
@click.option(
    "--allow-shared-platform-key",
    is_flag=True,
    help="Store it although another connection uses the same platform API key (meant).",
)
@json_option
def add(
    name: str,
    halaxy_key: str,
    region: str | None,
    halaxy_base_url: str | None,
    platform: str,
    platform_base_url: str,
    platform_api_key: str,
    platform_pms_name: str | None,
    platform_pms_key: str | None,
    author: str | None,
    practitioners: tuple[str, ...],
    pdf_hosts: str | None,
    signing: bool,
    no_verify: bool,
    allow_shared_platform_key: bool,
    as_json: bool,
) -> None:
    """Add a connection and print what to set up in Halaxy and the platform."""
    with cli_context(as_json) as ctx:
        request = onboarding.parse_request(
            {
                "name": name,
                "halaxy_key": halaxy_key,
                "region": region,
                "halaxy_base_url": halaxy_base_url,
                "platform": platform,
                "platform_base_url": platform_base_url,
                "platform_api_key": platform_api_key,
                "platform_pms_name": platform_pms_name,
                "platform_pms_key": platform_pms_key,
                "author": author,
                "practitioners": practitioner_map(list(practitioners)),
                "pdf_hosts": pdf_hosts.split(",") if pdf_hosts is not None else None,
                "signing": signing,
                "verify": not no_verify,
                "allow_shared_platform_key": allow_shared_platform_key,
            }
        )
        connection = onboarding.add_connection(
            ctx.connections, ctx.verify_key, request, utcnow(), ctx.audit, ctx.user
        )
        details = onboarding.setup_details(connection, ctx.settings.public_url)
        emit(as_json, details, lambda: onboarding.setup_steps(details))


@connections.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List connections (no secrets)."""
    with cli_context(as_json) as ctx:
        rows = [onboarding.summary(c) for c in ctx.connections.list()]
        emit(
            as_json,
            {"connections": rows},
            lambda: table(rows, ["id", "name", "enabled", "platform", "halaxy_base_url"]),
        )


@connections.command("show")
@click.argument("connection_id")
@click.option("--reveal", is_flag=True, help="Also print the secrets and setup values (audited).")
@click.option("--by", default=None, help="Who reveals them (default: your user name).")
@json_option
def show(connection_id: str, reveal: bool, by: str | None, as_json: bool) -> None:
    """Show one connection; `--reveal` prints its setup values again, and the audit trail
    records who saw them."""
    with cli_context(as_json) as ctx:
        who = ctx.actor(by)
        connection = ctx.connection(connection_id)
        if reveal:
            details = onboarding.reveal_setup(connection, ctx.settings.public_url, ctx.audit, who)
            emit(as_json, details, lambda: onboarding.setup_steps(details))
        else:
            data = onboarding.summary(connection)
            emit(as_json, data, lambda: _describe(data))


@connections.command("disable")
@click.argument("connection_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed with --json).")
@json_option
def disable(connection_id: str, yes: bool, as_json: bool) -> None:
    """Disable a connection: its webhooks are answered 404 from now on (asks first)."""
    needs_yes(as_json, yes, "disable")
    with cli_context(as_json) as ctx:
        connection = ctx.connection(connection_id)
        if not yes:
            click.confirm(
                f"Disable connection {connection.id} ({one_line(connection.name)})? Its webhooks "
                "will be answered 404 until it is enabled again",
                abort=True,
                err=True,
            )
        disabled = onboarding.disable_connection(
            ctx.connections, connection, utcnow(), ctx.audit, ctx.user
        )
        data = onboarding.summary(disabled)
        emit(as_json, data, f"Connection {disabled.id} is disabled.")


@connections.command("rotate")
@click.argument("connection_id")
@click.option("--webhook-secret", is_flag=True, help="New Halaxy Authentication Header secret.")
@click.option("--program-key", is_flag=True, help="New program-callback api_key.")
@click.option("--signing-secret", is_flag=True, help="New Standard Webhooks signing secret.")
@click.option("--halaxy-key", help="Replace the Halaxy key: CLIENT_ID:CLIENT_SECRET.")
@click.option("--platform-api-key", help="Replace the therapy platform's API key.")
@click.option("--platform-pms-key", help="Replace the PMS key sent to Physitrack.")
@click.option(
    "--grace-hours",
    type=click.FloatRange(0, 24 * 14),
    default=24.0,
    show_default=True,
    help="How long the old webhook secret and program key stay valid.",
)
@click.option("--no-verify", is_flag=True, help="Do not check a new Halaxy key now.")
@click.option(
    "--allow-shared-platform-key",
    is_flag=True,
    help="Store a new platform API key although another connection uses it (meant).",
)
@json_option
def rotate(
    connection_id: str,
    webhook_secret: bool,
    program_key: bool,
    signing_secret: bool,
    halaxy_key: str | None,
    platform_api_key: str | None,
    platform_pms_key: str | None,
    grace_hours: float,
    no_verify: bool,
    allow_shared_platform_key: bool,
    as_json: bool,
) -> None:
    """Replace secrets and print the setup values that changed."""
    with cli_context(as_json) as ctx:
        request = onboarding.parse_rotation(
            {
                "webhook_secret": webhook_secret,
                "program_api_key": program_key,
                "signing_secret": signing_secret,
                "halaxy_key": halaxy_key,
                "platform_api_key": platform_api_key,
                "platform_pms_key": platform_pms_key,
                "grace_hours": grace_hours,
                "verify": not no_verify,
                "allow_shared_platform_key": allow_shared_platform_key,
            }
        )
        rotated = onboarding.apply_rotation(
            ctx.connections,
            ctx.verify_key,
            ctx.connection(connection_id),
            request,
            utcnow(),
            ctx.audit,
            ctx.user,
        )
        details = onboarding.setup_details(rotated, ctx.settings.public_url)
        emit(as_json, details, lambda: onboarding.rotation_steps(details, request.replaced()))


def _describe(data: dict[str, Any]) -> str:
    rows = data.get("physitrack_practitioners") or []
    lines = [
        f"{key:<18} {value}" for key, value in data.items() if key != "physitrack_practitioners"
    ]
    if rows:
        lines += ["Physitrack practitioners:", *practitioner_table(rows).splitlines()]
    return "\n".join(lines)


for _command in LIFECYCLE:
    connections.add_command(_command)

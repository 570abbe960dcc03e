"""Entry point of the `halaxy-bridge` console script."""

from __future__ import annotations

import click

from services.cli.audit import audit
from services.cli.connections import connections
from services.cli.dead_letters import dead_letters
from services.cli.demo import demo
from services.cli.notes import notes
from services.cli.sandbox import sandbox
from services.cli.scheduler import scheduler
from services.cli.status import status


@click.group()
def cli() -> None:
    """halaxy-bridge: Halaxy <-> therapy platform bridge, operations CLI."""


cli.add_command(audit)
cli.add_command(connections)
cli.add_command(dead_letters)
cli.add_command(demo)
cli.add_command(notes)
cli.add_command(sandbox)
cli.add_command(scheduler)
cli.add_command(status)


def main() -> None:
    cli()

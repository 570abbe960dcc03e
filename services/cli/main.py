"""Entry point of the `halaxy-bridge` console script."""

from __future__ import annotations

import click

from services.cli.connections import connections


@click.group()
def cli() -> None:
    """halaxy-bridge: Halaxy <-> therapy platform bridge, operations CLI."""


cli.add_command(connections)


def main() -> None:
    cli()

"""Entry point of the `halaxy-bridge` console script."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from services.cli.admins import admins
from services.cli.audit import audit
from services.cli.connections import connections
from services.cli.dead_letters import dead_letters
from services.cli.demo import demo
from services.cli.events import events
from services.cli.notes import notes
from services.cli.output import fail
from services.cli.practitioners import practitioners
from services.cli.probe import probe
from services.cli.programs import programs
from services.cli.sandbox import sandbox
from services.cli.scheduler import scheduler
from services.cli.status import status
from shared.infra import ConfigError, configure_logging, load_settings


class BridgeGroup(click.Group):
    """The top command: a usage error (a wrong flag value, a missing argument, an unknown
    command) is one line on stderr, like every other error, instead of click's usage text."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        as_json = "--json" in argv
        try:
            result = super().main(argv, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group alone: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            message = exc.format_message().rstrip(".")
            fail(as_json, "usage", message + where, exit_code=exc.exit_code)
        except click.ClickException as exc:
            fail(as_json, "failed", exc.format_message(), exit_code=exc.exit_code)
        except click.Abort:
            fail(as_json, "aborted", "aborted", exit_code=1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=BridgeGroup)
def cli() -> None:
    """halaxy-bridge: Halaxy <-> therapy platform bridge, operations CLI."""


cli.add_command(admins)
cli.add_command(audit)
cli.add_command(connections)
cli.add_command(dead_letters)
cli.add_command(demo)
cli.add_command(events)
cli.add_command(notes)
cli.add_command(practitioners)
cli.add_command(probe)
cli.add_command(programs)
cli.add_command(sandbox)
cli.add_command(scheduler)
cli.add_command(status)


def main() -> None:
    log_to_stderr()
    cli()


def log_to_stderr() -> None:
    """Every line a command logs goes to stderr, redacted, in the configured format: stdout is
    the command's answer, and `--json` is read by programs."""
    with contextlib.suppress(ConfigError):  # the command says what is wrong with the settings
        configure_logging(load_settings())

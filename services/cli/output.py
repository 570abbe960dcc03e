"""How CLI commands print: a person's text, or one JSON document with `--json`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import orjson

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def emit(as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(text() if callable(text) else text)


def fail(as_json: bool, code: str, detail: str, exit_code: int = 2) -> None:
    if as_json:
        click.echo(orjson.dumps({"error": code, "detail": detail}).decode(), err=True)
    else:
        click.echo(f"error: {detail}", err=True)
    raise SystemExit(exit_code)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)

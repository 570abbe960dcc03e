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


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (an id a person typed,
    echoed in an error, must not break the error's one line)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def fail(as_json: bool, code: str, detail: str, exit_code: int = 2) -> None:
    """Print the error as one line on stderr (JSON with `--json`) and exit with `exit_code`."""
    detail = one_line(detail)
    if as_json:
        click.echo(orjson.dumps({"error": code, "detail": detail}).decode(), err=True)
    else:
        click.echo(f"error: {detail}", err=True)
    raise SystemExit(exit_code)


NOTHING = "—"  # what a table shows for a value that is not there (never `None`)


def cell(value: Any) -> str:
    return NOTHING if value is None else str(value)


def clipped(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending in … when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    rows: list[dict[str, Any]], columns: list[str], headers: dict[str, str] | None = None
) -> str:
    """Rows as aligned columns; `headers` names a column otherwise than its key, upper-cased."""
    if not rows:
        return "(none)"
    titles = {c: (headers or {}).get(c, c).upper() for c in columns}
    cells = [{c: cell(r.get(c)) for c in columns} for r in rows]
    widths = {c: max(len(titles[c]), *(len(r[c]) for r in cells)) for c in columns}
    lines = ["  ".join(titles[c].ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in cells]
    return "\n".join(line.rstrip() for line in lines)

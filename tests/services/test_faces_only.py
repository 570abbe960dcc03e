"""The services use `shared` through the packages' faces, never a package's inner modules."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parent.parent.parent / "services"


def test_services_import_shared_only_through_the_faces() -> None:
    inner = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            inner += [
                f"{path.relative_to(SERVICES.parent)}: {m}"
                for m in modules
                if m.startswith("shared.") and m.count(".") > 1
            ]
    assert inner == []

"""docs/architecture.md matches the code: each module it names exists, each package is named,
and no module sits directly in `shared/` but its face."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PAGE = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_the_page_names_exists() -> None:
    named = set(re.findall(r"`((?:shared|services)/[\w/]+(?:\.py|/))`", PAGE))
    assert named
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_package_is_named_on_the_page() -> None:
    packages = {f"shared/{p.parent.name}/" for p in (ROOT / "shared").glob("*/__init__.py")} | {
        f"services/{p.parent.name}/" for p in (ROOT / "services").glob("*/__init__.py")
    }
    assert sorted(p for p in packages if f"`{p}`" not in PAGE) == []


def test_no_module_sits_directly_in_shared_but_its_face() -> None:
    assert [p.name for p in (ROOT / "shared").glob("*.py")] == ["__init__.py"]

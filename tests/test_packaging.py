"""`pyproject.toml` declares its licence as PEP 639 asks: `pip install -e .` warns of nothing."""

from __future__ import annotations

import subprocess
import sys
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_metadata_builds_without_a_setuptools_deprecation_warning(tmp_path: Path) -> None:
    """What pip's build step runs, with every warning shown."""
    script = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "SetuptoolsDeprecationWarning" not in done.stderr, done.stderr
    metadata = Parser().parsestr((tmp_path / done.stdout.splitlines()[-1] / "METADATA").read_text())
    assert metadata["License-Expression"] == "LicenseRef-Proprietary"
    assert metadata["License"] is None  # the deprecated free-text field is gone

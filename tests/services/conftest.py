"""Fixtures of the console's browser tests: the system's Chromium (one a module) and the app
served on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette

from tests.browser import SeenPosts, playwright_chromium, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_chromium() as launched:
        yield launched


@pytest.fixture
def served(app: Starlette) -> Iterator[tuple[str, SeenPosts]]:
    """The app on a loopback port: its base URL, and the POSTs it received."""
    with serving(app) as (url, seen):
        yield url, seen

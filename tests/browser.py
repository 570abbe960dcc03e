"""Tests in a real browser: finding Chromium, serving the app on a port, and driving the
browser, as a process (`Chromium`, for `--dump-dom` and leaving a page open) or through
Playwright (`playwright_chromium`), always the system's Chromium: nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from starlette.applications import Starlette

from services.sandbox.serve import ServerThread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = [
    "BROWSER_TIMEOUT",
    "Chromium",
    "Recorder",
    "SeenPosts",
    "ServerThread",
    "find_chromium",
    "playwright_chromium",
    "post_status",
    "serving",
    "signed_in",
    "stop",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TIMEOUT = 60


class Recorder:
    """ASGI wrapper noting (monotonic time, method, path, status) of every answer."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.answers: list[tuple[float, str, str, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer = (time.monotonic(), scope["method"], scope["path"], message["status"])
                self.answers.append(answer)
            await send(message)

        await self.app(scope, receive, noting)

    def pages(self, status: int) -> list[float]:
        return [
            t for t, method, path, s in self.answers if (method, path, s) == ("GET", "/ops", status)
        ]


def find_chromium() -> str:
    """Chromium, installed by scripts/ensure_tools.sh if missing and possible; else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["sh", str(ROOT / "scripts/ensure_tools.sh")], check=False, timeout=240)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium: install the Debian package (scripts/ensure_tools.sh as root)")
    return found


class Chromium:
    def __init__(self, binary: str, profiles: Path) -> None:
        self.binary = binary
        self.profiles = profiles
        self._runs = 0

    def command(self, *args: str) -> list[str]:
        self._runs += 1
        return [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={self.profiles / f'profile-{self._runs}'}",
            *args,
        ]

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def dump_dom(self, url: str) -> str:
        process = self.start("--dump-dom", url)
        try:
            out, _ = process.communicate(timeout=BROWSER_TIMEOUT)
        finally:
            stop(process)
        assert process.returncode == 0, process.returncode
        return out


def stop(process: subprocess.Popen[str]) -> None:
    """End this Chromium and its helper processes (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    elif process.stdout is not None:
        process.stdout.close()


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@contextmanager
def playwright_chromium() -> Iterator[Browser]:
    """The system's Chromium, headless, driven by Playwright (`pip install playwright`; never
    `playwright install`: its own browser builds are not fetched). Skips with the reason when
    Playwright or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright: pip install -e '.[dev]'")
    executable = find_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class SeenPosts:
    """ASGI wrapper keeping, of every POST it passes on, the path and the headers that tell
    where a form came from."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            seen = {k: headers.get(k, "") for k in ("origin", "sec-fetch-site", "content-type")}
            self.posts.append({"path": scope["path"], **seen})
        await self.app(scope, receive, send)


@contextmanager
def serving(app: Any) -> Iterator[tuple[str, SeenPosts]]:
    """`app` served on a loopback port: its base URL, and the POSTs it received."""
    seen = SeenPosts(app)
    with ServerThread(seen) as server:
        yield server.url, seen


PAGE_TIMEOUT_MS = 15_000


@contextmanager
def signed_in(browser: Browser, password: str, username: str = "ops") -> Iterator[Page]:
    """A page in a fresh browser context that answers the console's Basic-auth challenge with
    `password` (an admin token)."""
    context = browser.new_context(http_credentials={"username": username, "password": password})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def post_status(page: Page, click: Callable[[], None]) -> int:
    """Run `click` (a button's `.click`), and the HTTP status of the form post it made, once
    the page it led to has loaded."""
    with page.expect_response(lambda r: r.request.method == "POST") as answered:
        click()
    status: int = answered.value.status
    page.wait_for_load_state()
    return status

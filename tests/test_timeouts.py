"""Each upstream's requests carry their own connect/read/write/pool timeouts, and a hanging
upstream is cut at the read timeout (docs/isolation.md, Circuit breaker and timeouts)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis
from pydantic import SecretStr

from services.sandbox.pdfs import make_pdf
from shared.halaxy.auth import HalaxyAccount
from shared.halaxy.client import DEFAULT_TIMEOUT, WRITE_TIMEOUT, HalaxyClient
from shared.halaxy.tokens import TokenCache
from shared.infra.config import Settings
from shared.infra.errors import Transient
from shared.infra.store import Keys
from shared.notes.pdf_fetch import TIMEOUT as PDF_TIMEOUT
from shared.notes.pdf_fetch import PdfFetcher
from shared.platforms.http import PLATFORM_TIMEOUT, send
from shared.telemetry import begin_outcomes, end_outcomes
from shared.telemetry.http import MeteredClient

HALAXY = "https://au-api.halaxy.example/main"
PLATFORM = "https://platform.example.test/api/v2"
PDF_HOST = "files.example.test"


def timeouts_of(request: httpx.Request) -> dict[str, float | None]:
    return dict(request.extensions["timeout"])


def test_every_timeout_is_split_and_short_where_a_thread_waits() -> None:
    for timeout in (DEFAULT_TIMEOUT, WRITE_TIMEOUT, PLATFORM_TIMEOUT, PDF_TIMEOUT):
        split = timeout.as_dict()
        assert all(split[part] is not None for part in ("connect", "read", "write", "pool"))
        assert split["connect"] <= 3
        assert split["pool"] <= 5
    for read in (DEFAULT_TIMEOUT, PLATFORM_TIMEOUT, PDF_TIMEOUT):
        assert read.read is not None
        assert read.read <= 10


def test_the_platforms_requests_carry_its_timeouts() -> None:
    seen: list[dict[str, float | None]] = []

    def platform(request: httpx.Request) -> httpx.Response:
        seen.append(timeouts_of(request))
        return httpx.Response(200, json={"id": 1})

    with httpx.Client(transport=httpx.MockTransport(platform), timeout=60) as http:
        send(http, "Physitrack", "GET", f"{PLATFORM}/clients", {})
    assert seen == [PLATFORM_TIMEOUT.as_dict()]


def test_halaxy_reads_and_the_note_write_carry_theirs(
    redis_server_client: redis.Redis, settings: Settings
) -> None:
    seen: dict[str, dict[str, float | None]] = {}

    def halaxy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 900})
        request.read()
        seen[request.method] = timeouts_of(request)
        return httpx.Response(201 if request.method == "POST" else 200, json={"id": "1"})

    account = HalaxyAccount("cn_timeouts", HALAXY, "client", SecretStr("secret"))
    tokens = TokenCache(redis_server_client, Keys(settings.redis_namespace), settings.fernet)
    with httpx.Client(transport=httpx.MockTransport(halaxy), timeout=60) as http:
        client = HalaxyClient(account, http, tokens, "halaxy-bridge (test)")
        client.read("Patient/42")
        body = orjson.dumps({"resourceType": "DocumentReference"})
        client.create("DocumentReference", lambda: [body], len(body))
    assert seen == {"GET": DEFAULT_TIMEOUT.as_dict(), "POST": WRITE_TIMEOUT.as_dict()}


def test_the_pdf_download_carries_its_timeouts() -> None:
    seen: list[dict[str, float | None]] = []

    def files(request: httpx.Request) -> httpx.Response:
        seen.append(timeouts_of(request))
        return httpx.Response(200, content=make_pdf(), headers={"content-type": "application/pdf"})

    with httpx.Client(transport=httpx.MockTransport(files)) as http:
        fetched = PdfFetcher(http, lambda host, port: ["93.184.216.34"]).fetch(
            f"https://{PDF_HOST}/program.pdf", (PDF_HOST,), explicit=False
        )
        fetched.close()
    assert seen == [PDF_TIMEOUT.as_dict()]


# --- A platform that accepts the connection and never answers -----------------------------


@pytest.fixture
def hanging_platform() -> Iterator[str]:
    """A server that accepts connections, reads, and never answers; its base URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/api/v2"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_hanging_platform_is_cut_at_the_read_timeout_and_counts_against_it(
    hanging_platform: str,
) -> None:
    tiny = httpx.Timeout(connect=0.5, read=0.2, write=0.5, pool=0.5)
    parts = urlsplit(hanging_platform)
    targets = {(str(parts.hostname), int(parts.port or 0)): "platform"}
    outcomes, token = begin_outcomes()
    try:
        with (
            MeteredClient("cn_hanging", targets) as http,
            pytest.raises(Transient, match="timed out \\(ReadTimeout\\)"),
        ):
            send(http, "Physitrack", "GET", f"{hanging_platform}/clients", {}, timeout=tiny)
    finally:
        end_outcomes(token)
    assert outcomes.failed == {"platform": True}  # its circuit breaker counts it

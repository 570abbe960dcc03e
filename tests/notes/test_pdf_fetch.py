"""PDF fetch: every SSRF rule refused before any request leaves, and the size and type checks."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.sandbox.pdfs import make_pdf
from shared.infra.errors import Permanent, Transient
from shared.notes.pdf_fetch import MAX_PDF_BYTES, PdfFetcher, PdfRefused

ALLOWED = ("files.example.com", "au.physitrack.com")
PUBLIC_IP = "93.184.216.34"


def resolver_to(*addresses: str) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


class Recorder:
    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer or (
            lambda request: httpx.Response(
                200, content=make_pdf(), headers={"content-type": "application/pdf"}
            )
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)


def fetcher(recorder: Recorder, *addresses: str) -> PdfFetcher:
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    return PdfFetcher(http, resolver_to(*(addresses or (PUBLIC_IP,))))


def test_fetch_pins_the_checked_address_and_keeps_the_name() -> None:
    recorder = Recorder()
    pdf = fetcher(recorder).fetch("https://files.example.com/p/1.pdf?sig=x", ALLOWED, False)
    assert pdf.file.read(5) == b"%PDF-"
    pdf.close()
    [request] = recorder.requests
    assert request.url.host == PUBLIC_IP
    assert request.url.path == "/p/1.pdf"
    assert request.url.query == b"sig=x"
    assert request.headers["host"] == "files.example.com"
    assert request.extensions["sni_hostname"] == "files.example.com"


@pytest.mark.parametrize(
    ("url", "addresses", "explicit", "allowed", "why"),
    [
        ("https://evil.example.com/a.pdf", (PUBLIC_IP,), False, ALLOWED, "allow-list"),
        ("http://files.example.com/a.pdf", (PUBLIC_IP,), False, ALLOWED, "allow-list"),
        ("https://user:pw@files.example.com/a.pdf", (PUBLIC_IP,), False, ALLOWED, "userinfo"),
        ("https://files.example.com:8443/a.pdf", (PUBLIC_IP,), False, ALLOWED, "allow-list"),
        ("https://93.184.216.34/a.pdf", (), False, (PUBLIC_IP,), "IP address"),
        ("https://files.example.com/a.pdf", ("10.0.0.5",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("127.0.0.1",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("169.254.169.254",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("::1",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("fd00::1",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("::ffff:10.0.0.1",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("64:ff9b::a9fe:a9fe",), False, ALLOWED, "non-public"),
        ("https://files.example.com/a.pdf", ("2002:a9fe:a9fe::1",), False, ALLOWED, "non-public"),
        (
            "https://files.example.com/a.pdf",
            (PUBLIC_IP, "192.168.1.9"),
            False,
            ALLOWED,
            "non-public",
        ),
        ("http://127.0.0.1:8100/a.pdf", (), False, ("127.0.0.1:8100",), "allow-list"),
        ("http://127.0.0.1:8100/a.pdf", (), True, ("127.0.0.1",), "allow-list"),
        ("http://10.1.2.3:8100/a.pdf", (), True, ("10.1.2.3:8100",), "https"),
        ("ftp://files.example.com/a.pdf", (PUBLIC_IP,), False, ALLOWED, "allow-list"),
    ],
)
def test_forbidden_targets_are_refused_before_any_request(
    url: str, addresses: tuple[str, ...], explicit: bool, allowed: tuple[str, ...], why: str
) -> None:
    recorder = Recorder()
    with pytest.raises(PdfRefused, match=why):
        fetcher(recorder, *addresses).fetch(url, allowed, explicit)
    assert recorder.requests == []


def test_an_explicitly_listed_loopback_host_port_may_use_http() -> None:
    recorder = Recorder()
    pdf = fetcher(recorder).fetch("http://127.0.0.1:8100/a.pdf", ("127.0.0.1:8100",), True)
    pdf.close()
    assert recorder.requests[0].url.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("location", "addresses"),
    [
        ("https://evil.example.com/a.pdf", (PUBLIC_IP,)),
        ("http://files.example.com/a.pdf", (PUBLIC_IP,)),
        ("https://au.physitrack.com/a.pdf", ("10.0.0.1",)),
    ],
)
def test_a_redirect_that_leaves_the_rules_is_refused(
    location: str, addresses: tuple[str, ...]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": location})

    recorder = Recorder(answer)
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return [PUBLIC_IP] if host == "files.example.com" else list(addresses)

    http = httpx.Client(transport=httpx.MockTransport(recorder))
    with pytest.raises(PdfRefused):
        PdfFetcher(http, resolve).fetch("https://files.example.com/a.pdf", ALLOWED, False)
    assert len(recorder.requests) == 1  # only the allowed first hop was ever asked


def test_a_redirect_within_the_rules_is_followed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "/final.pdf"})
        return httpx.Response(200, content=make_pdf(), headers={"content-type": "application/pdf"})

    recorder = Recorder(answer)
    fetcher(recorder).fetch("https://files.example.com/start", ALLOWED, False).close()
    assert [r.url.path for r in recorder.requests] == ["/start", "/final.pdf"]


@pytest.mark.parametrize(
    ("content", "headers", "error", "why"),
    [
        (b"<html>expired</html>", {"content-type": "text/html"}, PdfRefused, "not a PDF"),
        (b"PK\x03\x04zip", {"content-type": "application/pdf"}, PdfRefused, "not a PDF"),
        (b"x", {"content-length": str(MAX_PDF_BYTES + 1)}, PdfRefused, "20 MB"),
    ],
)
def test_files_that_are_not_acceptable_pdfs(
    content: bytes, headers: dict[str, str], error: type[Exception], why: str
) -> None:
    recorder = Recorder(lambda request: httpx.Response(200, content=content, headers=headers))
    with pytest.raises(error, match=why):
        fetcher(recorder).fetch("https://files.example.com/a.pdf", ALLOWED, False)


def test_a_stream_past_the_cap_is_cut_off() -> None:
    sent = 0

    def endless() -> httpx.SyncByteStream:
        class Stream(httpx.SyncByteStream):
            def __iter__(self):  # type: ignore[no-untyped-def]
                nonlocal sent
                yield b"%PDF-1.4\n"
                while sent < 3 * MAX_PDF_BYTES:
                    sent += 1 << 20
                    yield b"0" * (1 << 20)

        return Stream()

    recorder = Recorder(
        lambda request: httpx.Response(
            200, stream=endless(), headers={"content-type": "application/pdf"}
        )
    )
    with pytest.raises(PdfRefused, match="20 MB"):
        fetcher(recorder).fetch("https://files.example.com/a.pdf", ALLOWED, False)
    assert sent <= MAX_PDF_BYTES + (2 << 20)


@pytest.mark.parametrize(
    ("status", "error"), [(503, Transient), (429, Transient), (404, Permanent), (403, Permanent)]
)
def test_statuses(status: int, error: type[Exception]) -> None:
    recorder = Recorder(lambda request: httpx.Response(status))
    with pytest.raises(error):
        fetcher(recorder).fetch("https://files.example.com/a.pdf", ALLOWED, False)


def test_timeouts_are_transient() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(Transient):
        fetcher(Recorder(answer)).fetch("https://files.example.com/a.pdf", ALLOWED, False)


def test_the_next_checked_address_is_tried_when_one_does_not_answer() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:2800:220:1:248:1893:25c8:1946":
            raise httpx.ConnectError("no route", request=request)
        return httpx.Response(200, content=make_pdf(), headers={"content-type": "application/pdf"})

    recorder = Recorder(answer)
    ipv6_first = fetcher(recorder, "2606:2800:220:1:248:1893:25c8:1946", PUBLIC_IP)
    ipv6_first.fetch("https://files.example.com/a.pdf", ALLOWED, False).close()
    assert [r.url.host for r in recorder.requests] == [
        "2606:2800:220:1:248:1893:25c8:1946",
        PUBLIC_IP,
    ]


def test_an_explicit_host_port_is_trusted_but_still_pinned() -> None:
    recorder = Recorder()
    explicit = fetcher(recorder, "10.20.30.40")
    explicit.fetch("https://files.internal:8443/a.pdf", ("files.internal:8443",), True).close()
    [request] = recorder.requests
    assert request.url.host == "10.20.30.40"
    assert request.headers["host"] == "files.internal:8443"

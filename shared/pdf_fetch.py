"""Fetch a program PDF from the platform, refusing anything that could be SSRF.

Rules (DESIGN.md, issue 4): https only; the host must be on the connection's allow-list; no
userinfo; IP literals, and names resolving to private, loopback, link-local or otherwise
non-public addresses, are refused unless that exact host:port was listed explicitly by the
operator (`--pdf-hosts`, which is also the only way plain http is accepted, and then only for
a loopback host: how the sandbox runs). The connection is pinned to the address that was
checked (SNI and Host keep the name), so a DNS answer cannot change between check and use.
Redirects are followed by hand, each hop checked again. The body is streamed to a temporary
file and cut off at 20 MB (Halaxy's attachment limit), and must start with `%PDF-`.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin, urlsplit

import httpx

from shared.errors import Permanent, Transient
from shared.netutil import is_loopback_host

MAX_PDF_BYTES = 20_000_000  # Halaxy: 20 MB per attachment; decimal megabytes, the safe reading
MAX_REDIRECTS = 3
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PDF_TYPES = {
    "application/pdf",
    "application/x-pdf",
    "application/octet-stream",
    "binary/octet-stream",
    "",
}
CHUNK = 64 * 1024

Resolver = Callable[[str, int], list[str]]


class PdfRefused(Permanent):
    """The URL or the file breaks a rule; nothing was (or will be) fetched from it."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Transient(f"the PDF host name did not resolve ({exc.errno})") from None
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect, and under which name."""

    url: str
    host: str
    port: int
    address: str | None  # the pinned IP to connect to; None to connect by name (loopback)


def check_target(
    url: str,
    allowed: tuple[str, ...],
    explicit: bool,
    resolver: Resolver,
) -> Target:
    """The URL, checked against every rule; raise `PdfRefused` naming the broken one."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise PdfRefused("the PDF URL carries credentials (userinfo)")
    host = (parts.hostname or "").lower()
    if not host:
        raise PdfRefused("the PDF URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PdfRefused("the PDF URL has an invalid port") from None
    listed_with_port = explicit and f"{host}:{port}" in allowed
    listed = listed_with_port or (host in allowed and port == 443)
    if not listed:
        raise PdfRefused(f"the PDF host {host}:{port} is not on the connection's allow-list")
    if parts.scheme != "https" and not (
        parts.scheme == "http" and listed_with_port and is_loopback_host(host)
    ):
        raise PdfRefused("the PDF URL must use https")
    if _is_ip(host) and not listed_with_port:
        raise PdfRefused("the PDF URL is an IP address, which is not listed explicitly")
    if listed_with_port:
        return Target(url=url, host=host, port=port, address=None)  # the operator vouched
    addresses = resolver(host, port)
    if not addresses:
        raise Transient("the PDF host name resolved to no address")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not ip.is_global or ip.is_multicast:
            raise PdfRefused(f"the PDF host {host} resolves to a non-public address")
    return Target(url=url, host=host, port=port, address=addresses[0])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass
class FetchedPdf:
    file: IO[bytes]
    size: int

    def close(self) -> None:
        self.file.close()


class PdfFetcher:
    def __init__(self, http: httpx.Client, resolver: Resolver = system_resolver) -> None:
        self._http = http
        self._resolver = resolver

    def fetch(self, url: str, allowed: tuple[str, ...], explicit: bool) -> FetchedPdf:
        """Download the PDF at `url` into a temporary file; the caller closes it."""
        for _ in range(MAX_REDIRECTS + 1):
            target = check_target(url, allowed, explicit, self._resolver)
            response = self._open(target)
            try:
                if not response.is_redirect:
                    return self._read(response)
                url = urljoin(url, response.headers.get("location", ""))
            finally:
                response.close()
        raise PdfRefused(f"the PDF URL redirected more than {MAX_REDIRECTS} times")

    def _open(self, target: Target) -> httpx.Response:
        request_url = target.url
        headers = {"Accept": "application/pdf"}
        extensions = {}
        if target.address is not None:
            parts = urlsplit(target.url)
            ip = target.address if ":" not in target.address else f"[{target.address}]"
            request_url = parts._replace(netloc=f"{ip}:{target.port}").geturl()
            headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
            extensions["sni_hostname"] = target.host
        try:
            request = self._http.build_request(
                "GET", request_url, headers=headers, extensions=extensions, timeout=TIMEOUT
            )
            return self._http.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise Transient(f"the PDF download timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Transient(f"the PDF download failed ({type(exc).__name__})") from exc

    def _read(self, response: httpx.Response) -> FetchedPdf:
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise Transient(f"the PDF host answered {status}")
        if status != 200:
            raise Permanent(f"the PDF host answered {status} (the link may have expired)")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in PDF_TYPES:
            raise PdfRefused(f"the file is not a PDF (Content-Type {media_type})")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_PDF_BYTES:
            raise PdfRefused("the PDF is larger than Halaxy's 20 MB limit")
        spool = tempfile.TemporaryFile()  # noqa: SIM115  (handed to the caller, who closes it)
        size = 0
        try:
            for chunk in response.iter_bytes(CHUNK):
                size += len(chunk)
                if size > MAX_PDF_BYTES:
                    raise PdfRefused("the PDF is larger than Halaxy's 20 MB limit")
                spool.write(chunk)
            spool.seek(0)
            if spool.read(5) != b"%PDF-":
                raise PdfRefused("the file is not a PDF (no %PDF- header)")
            spool.seek(0)
        except httpx.TimeoutException as exc:
            spool.close()
            raise Transient(f"the PDF download timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            spool.close()
            raise Transient(f"the PDF download failed ({type(exc).__name__})") from exc
        except BaseException:
            spool.close()
            raise
        return FetchedPdf(file=spool, size=size)

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

from shared.infra.errors import Permanent, Transient
from shared.infra.netutil import is_loopback_host
from shared.telemetry import capability_url, note_upstream

MAX_PDF_BYTES = 20_000_000  # Halaxy: 20 MB per attachment; decimal megabytes, the safe reading
MAX_REDIRECTS = 3
# The platform's file store (therapy-platforms.md 2.3: an S3 URL) publishes no timing. Read is
# the longest wait for one chunk of the body, not for the whole PDF (docs/isolation.md).
TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=5.0)
PDF_TYPES = {
    "application/pdf",
    "application/x-pdf",
    "application/octet-stream",
    "binary/octet-stream",
    "",
}
CHUNK = 64 * 1024

Resolver = Callable[[str, int], list[str]]


class PdfNotThere(Permanent):
    """The PDF host has no file at the link (404, or S3's 403 for a missing object): gone,
    or, for a link Physitrack made a moment ago, not made yet (therapy-platforms.md 2.3)."""

    PREFIX = "the PDF host has no file at the link"


class PdfRefused(Permanent):
    """The URL or the file breaks a rule; nothing was (or will be) fetched from it."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Transient(f"the PDF host name did not resolve ({exc.errno})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # keep the preference order


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the checked addresses, in the resolver's order of
    preference), and under which name."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]  # empty: connect to the host as written (an IP literal)


@dataclass(frozen=True)
class Listed:
    host: str
    port: int
    explicit: bool  # the operator listed this exact host:port with --pdf-hosts


# Prefixes that embed an IPv4 address a public-looking IPv6 can hide (NAT64, 6to4).
EMBEDDING_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16")
)


def check_listed(url: str, allowed: tuple[str, ...], explicit: bool) -> Listed:
    """Every rule that needs no DNS: scheme, userinfo, allow-list, IP literals.

    The receiver applies it to a callback's `file_url` to refuse it at once (422)."""
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
    if not (listed_with_port or (host in allowed and port == 443)):
        raise PdfRefused(f"the PDF host {host}:{port} is not on the connection's allow-list")
    if parts.scheme != "https" and not (
        parts.scheme == "http" and listed_with_port and is_loopback_host(host)
    ):
        raise PdfRefused("the PDF URL must use https")
    if _is_ip(host) and not listed_with_port:
        raise PdfRefused("the PDF URL is an IP address, which is not listed explicitly")
    return Listed(host=host, port=port, explicit=listed_with_port)


def check_target(
    url: str,
    allowed: tuple[str, ...],
    explicit: bool,
    resolver: Resolver,
) -> Target:
    """The URL, checked against every rule; raise `PdfRefused` naming the broken one."""
    listed = check_listed(url, allowed, explicit)
    if _is_ip(listed.host):
        return Target(url=url, host=listed.host, port=listed.port, addresses=())
    addresses = resolver(listed.host, listed.port)
    if not addresses:
        raise Transient("the PDF host name resolved to no address")
    if not listed.explicit:  # an exact host:port the operator listed is trusted as it is
        for address in addresses:
            if not _public(ipaddress.ip_address(address)):
                raise PdfRefused(f"the PDF host {listed.host} resolves to a non-public address")
    return Target(url=url, host=listed.host, port=listed.port, addresses=tuple(addresses))


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _public(ip.ipv4_mapped)
        if any(ip in network for network in EMBEDDING_NETWORKS):
            return False
    return ip.is_global and not ip.is_multicast


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
        """Connect to the first checked address that answers (pinned: Host and SNI keep the
        name), or to the IP literal itself."""
        parts = urlsplit(target.url)
        attempts = target.addresses or (None,)
        for number, address in enumerate(attempts, start=1):
            headers = {"Accept": "application/pdf"}
            extensions: dict[str, str] = {}
            request_url = target.url
            if address is not None:
                ip = address if ":" not in address else f"[{address}]"
                request_url = parts._replace(netloc=f"{ip}:{target.port}").geturl()
                headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
                extensions["sni_hostname"] = target.host
            try:
                request = self._http.build_request(
                    "GET", request_url, headers=headers, extensions=extensions, timeout=TIMEOUT
                )
                with capability_url("pdf"):  # the event log notes the call, not the link
                    return self._http.send(request, stream=True, follow_redirects=False)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if number == len(attempts):
                    raise Transient(f"the PDF host did not answer ({type(exc).__name__})") from exc
            except httpx.TimeoutException as exc:
                raise Transient(f"the PDF download timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise Transient(f"the PDF download failed ({type(exc).__name__})") from exc
        raise AssertionError("unreachable")

    def _read(self, response: httpx.Response) -> FetchedPdf:
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise Transient(f"the PDF host answered {status}")
        if status in (403, 404):
            raise PdfNotThere(f"{PdfNotThere.PREFIX}: it answered {status} (the link expired?)")
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
            note_upstream("platform", None)  # its headers came: the client noted an answer
            raise Transient(f"the PDF download timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            spool.close()
            note_upstream("platform", None)
            raise Transient(f"the PDF download failed ({type(exc).__name__})") from exc
        except BaseException:
            spool.close()
            raise
        return FetchedPdf(file=spool, size=size)

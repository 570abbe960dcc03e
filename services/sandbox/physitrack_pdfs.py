"""The files of the fake Physitrack (therapy-platforms.md 2.1, 2.3): program PDFs served
the way S3 serves them.

A file answers `NoSuchKey` (404) while it is not made yet (its `polls_before_ready`) and from
24 hours after it was made, by the product clock (2.1: "the file is deleted 24 hours after
generation"); `file_faults` injects failures and `file_requests` records each request.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from services.sandbox.faults import Faults
from shared.infra import utcnow

FILE_LIFETIME = timedelta(hours=24)


@dataclass
class StoredFile:
    pdf: bytes
    generated: datetime
    polls_before_ready: int = 0


@dataclass
class PdfFiles:
    """The files `file_url` and the PDF endpoint's `url` point at, served at `/files/{name}`."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    file_faults: Faults = field(default_factory=Faults)
    file_requests: list[dict[str, Any]] = field(default_factory=list)

    def publish_pdf(
        self,
        pdf: bytes,
        name: str | None = None,
        when: datetime | None = None,
        polls_before_ready: int = 0,
    ) -> str:
        """Serve `pdf` for 24 hours from `when` (now), answering 404 to the first
        `polls_before_ready` requests; returns its path (join it to this server's URL for
        `file_url`)."""
        name = name or f"{secrets.token_hex(16)}.pdf"
        self.files[name] = StoredFile(pdf, when or utcnow(), polls_before_ready)
        return f"/files/{name}"

    async def _file(self, request: Request) -> Response:
        self.file_requests.append({"path": request.url.path, "received_at": time.monotonic()})
        fault = await self.file_faults.apply(b"unavailable", "text/plain")
        if fault is not None:
            return fault
        name = request.path_params["name"]
        stored = self.files.get(name)
        if stored is None or utcnow() >= stored.generated + FILE_LIFETIME:
            return _no_such_key(name)
        if stored.polls_before_ready > 0:
            stored.polls_before_ready -= 1
            return _no_such_key(name)
        return Response(stored.pdf, media_type="application/pdf")


def _no_such_key(name: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
        f"<Message>The specified key does not exist.</Message><Key>pdfs/{name}</Key></Error>"
    )
    return Response(body.encode(), status_code=404, media_type="application/xml")

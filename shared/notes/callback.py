"""The therapy platform's "program assigned" callback, and the note it becomes. Pure.

The body is Physitrack's PDF-webhook shape (therapy-platforms.md section 2.1): `api_key`,
`token` (the practitioner), `patient_id` (the id the bridge sent as `external_id`, the Halaxy
patient id), `file_url` (deleted 24 hours after generation), `name`, `date`, `date_iso`,
`updated`. It carries no event id, so the dedup key is derived from its fields, or is the
Standard Webhooks `webhook-id` when the connection signs its callbacks.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime, timedelta
from datetime import date as Date  # the callback has a field named `date`
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from shared.connections.model import Connection
from shared.infra.validation import validated

FILE_URL_LIFETIME = timedelta(hours=24)
PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_NOTE_ID_INPUT = 256


class ProgramCallback(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    api_key: str = Field(min_length=1, max_length=256)
    token: str = Field(min_length=1, max_length=256)
    patient_id: str
    file_url: str = Field(min_length=1, max_length=4096)
    name: str = Field(min_length=1, max_length=300)
    date: Date
    date_iso: datetime
    updated: StrictBool
    # Set by the events poll, which asks Physitrack for a fresh PDF (section 2.3): when that
    # link was made, so its 24 hours count from then, and the file may not be there yet.
    link_made_at: datetime | None = None

    @field_validator("patient_id")
    @classmethod
    def _patient_id(cls, value: str) -> str:
        if not PATIENT_ID.fullmatch(value):
            raise ValueError("must be the Halaxy patient id (letters, digits, '-', '.')")
        return value

    @field_validator("name", "token")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value or not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("date_iso")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a timezone (ISO 8601, e.g. 2026-11-21T09:00:00Z)")
        if not 2000 <= value.year <= 2100:
            raise ValueError("must be a time between the years 2000 and 2100")
        return value.astimezone(UTC)

    @field_validator("date")
    @classmethod
    def _plausible_date(cls, value: Date) -> Date:
        if not 2000 <= value.year <= 2100:
            raise ValueError("must be a date between the years 2000 and 2100")
        return value

    def link_expires_at(self) -> datetime:
        return (self.link_made_at or self.date_iso) + FILE_URL_LIFETIME


def parse_callback(data: dict[str, Any]) -> ProgramCallback:
    """Validate the callback; raise `InvalidInput` naming each bad field (never its value)."""
    return validated(ProgramCallback, data, "the program callback is invalid")


def note_id_for(connection_id: str, callback: ProgramCallback, webhook_id: str | None) -> str:
    """The note's id and dedup key: the signed `webhook-id`, else a hash of what identifies
    one assignment (connection, practitioner, patient, program, time, update flag)."""
    if webhook_id:
        material = f"{connection_id}|webhook-id|{webhook_id[:MAX_NOTE_ID_INPUT]}"
    else:
        material = "|".join(
            [
                connection_id,
                callback.token,
                callback.patient_id,
                callback.name,
                callback.date_iso.isoformat(),
                "updated" if callback.updated else "assigned",
            ]
        )
    return "nt_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def program_note_id(
    connection_id: str,
    practitioner: str,
    patient_id: str,
    program_name: str,
    moment: datetime,
    updated: bool,
) -> str:
    """A new note's id for a Physitrack program first seen at `moment` (to the second); a
    later arrival of the same program near that moment takes the same id
    (`shared.notes.claims`)."""
    material = "|".join(
        [
            program_identity(connection_id, practitioner, patient_id, program_name, updated),
            moment.astimezone(UTC).isoformat(timespec="seconds"),
        ]
    )
    return "nt_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def program_identity(
    connection_id: str, practitioner: str, patient_id: str, program_name: str, updated: bool
) -> str:
    """What names one program's assignment (or update) apart from its moment: connection,
    practitioner, patient, program name, kind. A digest: the parts are ids and a name."""
    material = "|".join(
        [
            connection_id,
            "physitrack-program",
            practitioner,
            patient_id,
            " ".join(program_name.split()),
            "updated" if updated else "assigned",
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def practitioner_identity(connection: Connection, token: str) -> str:
    """The practitioner a post's token names, for note ids: their Halaxy PR- id (stable when
    the token is rotated, and the same whether they are a record or in the author map), else
    the token itself (hashed into the id, never shown)."""
    practitioner = connection.practitioner_with_token(token)
    if practitioner is not None:
        return practitioner.halaxy_practitioner
    return connection.practitioners.get(token) or f"token:{token}"


def note_title(callback: ProgramCallback) -> str:
    verb = "updated" if callback.updated else "assigned"
    return f"Home program: {callback.name} ({verb} {callback.date.isoformat()})"


def pdf_file_name(callback: ProgramCallback) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", callback.name.lower()).strip("-")[:60] or "program"
    return f"{slug}-{callback.date.isoformat()}.pdf"


def author_for(connection: Connection, practitioner_token: str) -> str | None:
    """The PractitionerRole (PR-...) of the platform practitioner (a practitioner record, else
    the author map), else the connection's default author."""
    practitioner = connection.practitioner_with_token(practitioner_token)
    if practitioner is not None:
        return practitioner.halaxy_practitioner
    return connection.practitioners.get(practitioner_token) or connection.default_author


PDF_PLACEHOLDER = "@@PDF-BASE64@@"


def document_reference(
    connection: Connection,
    halaxy_patient_id: str,
    callback: ProgramCallback,
    author: str | None,
) -> dict[str, Any]:
    """The note, exactly in the shape halaxy-api.md section 6 recommends; the PDF's base64
    stands as `PDF_PLACEHOLDER`, to be streamed in (see `note_body_parts`)."""
    base = connection.halaxy_base_url.rstrip("/")
    verb = "updated" if callback.updated else "assigned"
    summary = (
        f"<p>Home exercise program <strong>{html.escape(callback.name)}</strong> {verb} on "
        f"{callback.date.isoformat()} in the therapy platform. The program is attached as a "
        "PDF.</p>"
    )
    note: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": connection.doc_status.value,
        "subject": {"type": "Patient", "reference": f"{base}/Patient/{halaxy_patient_id}"},
        "date": callback.date_iso.isoformat().replace("+00:00", "Z"),
        "description": note_title(callback),
        "content": [{"attachment": {"contentType": "text/html", "data": summary}}],
        "attachments": [
            {
                "contentType": "application/pdf",
                "data": PDF_PLACEHOLDER,
                "title": pdf_file_name(callback),
            }
        ],
    }
    if author is not None:
        # Halaxy documents author as required but accepts a note without one (live finding,
        # section 6); only a practice role PR-... may author.
        note["author"] = [
            {"type": "PractitionerRole", "reference": f"{base}/PractitionerRole/{author}"}
        ]
    return note


def note_body_parts(note: dict[str, Any]) -> tuple[bytes, bytes]:
    """The JSON before and after the PDF's base64, so the PDF can be streamed, not copied."""
    encoded = orjson.dumps(note)
    marker = orjson.dumps(PDF_PLACEHOLDER)
    head, sep, tail = encoded.partition(marker)
    if not sep:
        raise ValueError("the note has no PDF placeholder")
    return head + b'"', b'"' + tail


def is_link_expired(callback: ProgramCallback, now: datetime) -> bool:
    return now >= callback.link_expires_at()

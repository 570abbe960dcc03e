"""Conformance checked by a validator we did not write: `fhir.resources` (its R4B models, the
closest it ships to Halaxy's R4) validates every DocumentReference the note writer builds and
every Patient the sandbox serves.

Only Halaxy's two documented deviations from FHIR are allowed, each undone by name below
before validation, with the reference section that documents it (../shared/reference/
halaxy-api.md):

- `attachments[]`: a top-level array that is not FHIR (section 6, DocumentReference schema:
  "Halaxy-specific, non-FHIR top-level array"); the PDF travels there.
- the `text/html` note body: `content[].attachment.data` holds raw HTML, not base64 as
  FHIR's Attachment.data (base64Binary) requires (section 6, "Live findings": "raw HTML (not
  base64) in data"; and the schema: `contentType` supports only `text/html`).
"""

from __future__ import annotations

import base64
import binascii
import copy
from datetime import timedelta
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy, patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from shared.connections.model import Connection, DocStatus
from shared.infra.clock import utcnow
from shared.notes.callback import document_reference, note_body_parts, parse_callback
from tests.helpers import bearer_from
from tests.workers import Pipeline, Sandbox, sandbox_connection

BASE = "https://au-api.halaxy.com/main"


def without_halaxy_deviations(note: dict[str, Any]) -> dict[str, Any]:
    """The note as plain FHIR: each documented deviation checked, then undone."""
    fhir = copy.deepcopy(note)
    # Deviation 1 (halaxy-api.md section 6, schema): the non-FHIR top-level `attachments[]`.
    for attachment in fhir.pop("attachments", []):
        assert set(attachment) == {"contentType", "data", "title"}
        assert base64.b64decode(attachment["data"], validate=True)
    # Deviation 2 (section 6, live findings): the note body is raw text/html in `data`.
    for item in fhir["content"]:
        attachment = item["attachment"]
        assert attachment["contentType"] == "text/html"
        attachment["data"] = base64.b64encode(attachment["data"].encode()).decode()
    return fhir


def assert_conformant_note(note: dict[str, Any]) -> None:
    validate_document_reference(without_halaxy_deviations(note))


def validate_document_reference(fhir: dict[str, Any]) -> None:
    DocumentReference.model_validate(fhir)
    for item in fhir["content"]:  # fhir.resources does not check base64Binary itself
        try:
            base64.b64decode(item["attachment"]["data"], validate=True)
        except binascii.Error:
            pytest.fail("content[].attachment.data is not base64 once the deviation is undone")


def test_the_check_can_fail_each_deviation_left_in_is_refused() -> None:
    note = built_note(author="PR-1")
    with_attachments = without_halaxy_deviations(note) | {"attachments": note["attachments"]}
    with pytest.raises(ValueError, match="attachments"):
        DocumentReference.model_validate(with_attachments)
    with_html = without_halaxy_deviations(note) | {"content": note["content"]}
    # fhir.resources decodes base64Binary leniently (`<p>x</p>` passes); our own strict
    # check catches what it lets through.
    with pytest.raises((ValueError, pytest.fail.Exception), match=r"(?i)base64"):
        validate_document_reference(with_html)


def built_note(
    author: str | None, doc_status: DocStatus = DocStatus.FINAL, updated: bool = False
) -> dict[str, Any]:
    """A note exactly as the note writer posts it: `document_reference`, then the PDF's
    base64 streamed in between `note_body_parts` (shared/notes/writer.py)."""
    connection = Connection.model_construct(halaxy_base_url=BASE, doc_status=doc_status)
    callback = parse_callback(
        program_callback(
            api_key="k",
            file_url="https://files.example.com/p.pdf",
            patient_id="1001",
            name="Knee <Rehab> & Co",
            updated=updated,
            when=utcnow() - timedelta(minutes=5),
        )
    )
    head, tail = note_body_parts(document_reference(connection, "1001", callback, author))
    pdf = base64.b64encode(make_pdf("Knee Rehab Program"))
    body: dict[str, Any] = orjson.loads(head + pdf + tail)
    return body


@pytest.mark.parametrize("author", ["PR-2002", None])
@pytest.mark.parametrize("doc_status", list(DocStatus))
@pytest.mark.parametrize("updated", [False, True])
def test_every_note_the_writer_builds_is_a_fhir_document_reference(
    author: str | None, doc_status: DocStatus, updated: bool
) -> None:
    assert_conformant_note(built_note(author, doc_status, updated))


def test_the_notes_halaxy_received_from_the_worker_are_fhir_document_references(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: Any
) -> None:
    sandbox.halaxy.keep_note_bodies = True
    sandbox.halaxy.patients["1001"] = patient_resource("1001")
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    path = sandbox.physitrack.publish_pdf(make_pdf("Knee Rehab Program"))
    url = sandbox.physitrack_url.removesuffix("/api/v2") + path
    for updated in (False, True):
        callback = program_callback(
            api_key=conn.program_api_key.get_secret_value(),
            file_url=url,
            patient_id="1001",
            updated=updated,
        )
        assert pipeline.callback(conn, callback).status_code == 202
    pipeline.drain()
    assert len(sandbox.halaxy.note_bodies) == 2
    for body in sandbox.halaxy.note_bodies:
        assert_conformant_note(orjson.loads(body))


def sandbox_patients() -> list[dict[str, Any]]:
    return [
        patient_resource("1"),
        patient_resource("2", preferred=None, email=None, mobile=None, birth_date=None),
        patient_resource("3", birth_date="1990"),
        patient_resource("4", birth_date="1990-05", gender="other"),
        patient_resource("5", last_updated=utcnow().isoformat(timespec="seconds")),
        *(patient_resource(str(10 + i), status=s) for i, s in enumerate(STATUSES)),
        patient_resource("9", died=f"{utcnow().year - 1}-02-03T10:00:00+10:00"),
    ]


STATUSES = ["current", "contact", "claimant", "archived", "blocked", "deceased", "deleted"]


def test_every_patient_the_sandbox_serves_is_a_fhir_patient() -> None:
    halaxy = FakeHalaxy(page_size=100)
    for resource in sandbox_patients():
        halaxy.patients[resource["id"]] = resource
    with TestClient(halaxy.app(), headers={"User-Agent": "conformance"}) as http:
        auth = bearer_from(http, halaxy.add_key())
        for patient_id in halaxy.patients:
            served = http.get(f"/main/Patient/{patient_id}", headers=auth)
            assert served.status_code == 200
            Patient.model_validate(served.json())
        page = http.get("/main/Patient", headers=auth).json()
        Bundle.model_validate(page)
        assert len(page["entry"]) == len(halaxy.patients)

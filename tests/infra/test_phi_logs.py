"""The whole flow with recognisable patient data, failures and retries included, through the
real receiver and worker processes: no patient detail and no secret in their logs."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import orjson
import pytest

from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback
from services.sandbox.samples import notification
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from tests.helpers import auth, wait_until
from tests.test_processes import receiver, worker_log  # noqa: F401  (fixtures)
from tests.workers import Sandbox, sandbox_connection

pytestmark = pytest.mark.slow

PATIENT = {
    "given": "Zebediah",
    "family": "Quixotefield",
    "preferred": "Zeb",
    "email": "zebediah.q@example.org",
    "mobile": "+61498765432",
    "birth_date": "1971-03-09",
}
PHI = [*PATIENT.values(), "0498 765 432", "0498765432"]


@pytest.fixture
def debug_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")  # the most a process would ever write


def test_no_patient_detail_or_secret_reaches_the_logs(
    debug_logs: None,
    settings: Settings,
    store: ConnectionStore,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    receiver: str,  # noqa: F811
    worker_log: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    conn = sandbox_connection(store, sandbox, verify_key)
    sandbox.halaxy.patients["9001"] = patient_resource("9001", **PATIENT)  # type: ignore[arg-type]
    sandbox.halaxy.patients["9002"] = patient_resource("9002", **PATIENT)  # type: ignore[arg-type]
    sandbox.halaxy.faults.script = [503]  # the first read fails and is retried
    headers = {"Content-Type": "application/json", **auth(conn)}

    def webhook(event: str, patient_id: str) -> None:
        body = notification(conn.halaxy_base_url, "Patient", [patient_id])
        response = httpx.post(
            f"{receiver}/webhooks/halaxy/{conn.id}/{event}",
            content=orjson.dumps(body),
            headers=headers,
        )
        assert response.status_code == 202

    webhook("patient-created", "9001")
    wait_until(lambda: sandbox.physitrack.by_external_id("9001"), 60, "the patient synced")
    sandbox.halaxy.patients["9001"] = patient_resource(
        "9001",
        **{**PATIENT, "email": "zeb.new@example.org"},  # type: ignore[arg-type]
    )
    webhook("patient-updated", "9001")
    wait_until(
        lambda: sandbox.physitrack.by_external_id("9001")[0]["email"] == "zeb.new@example.org",
        60,
        "the update",
    )
    sandbox.physitrack.reject_with = [
        f'Client "{PATIENT["given"]} {PATIENT["family"]}" born {PATIENT["birth_date"]} '
        f"({PATIENT['email']}) already exists"
    ]
    webhook("patient-created", "9002")  # refused by the platform: a permanent failure
    url = sandbox.physitrack_url.removesuffix("/api/v2") + sandbox.physitrack.publish_pdf(
        make_pdf(f"Program for {PATIENT['given']} {PATIENT['family']}")
    )
    callback = program_callback(
        api_key=conn.program_api_key.get_secret_value(),
        file_url=url,
        patient_id="9001",
        name="Knee Rehab",
    )
    assert httpx.post(f"{receiver}/webhooks/programs/{conn.id}", json=callback).status_code == 202
    wait_until(lambda: sandbox.halaxy.notes, 60, "the note")
    assert (
        httpx.post(  # a wrong key is refused and logged as such
            f"{receiver}/webhooks/programs/{conn.id}", json={**callback, "api_key": "nope"}
        ).status_code
        == 401
    )

    def worker_text() -> str:
        return worker_log.read_text(errors="replace")

    wait_until(lambda: '"job.failed"' in worker_text(), 30, "the platform's refusal logged")
    logs = (tmp_path / "receiver.log").read_text(errors="replace") + worker_text()
    for expected in (
        "webhook.accepted",
        "patient.synced",
        "job.retrying",
        "job.failed",
        "note.posted",
        "callback.unauthorized",
    ):
        assert expected in logs  # the logs did see the whole flow
    secrets = [
        conn.webhook_secret.get_secret_value(),
        conn.program_api_key.get_secret_value(),
        conn.halaxy_client_secret.get_secret_value(),
        conn.platform_api_key.get_secret_value(),
        os.environ["BRIDGE_ADMIN_TOKEN"],
        os.environ["BRIDGE_SECRET_KEY"],
        *sandbox.halaxy.tokens,
        url,  # the PDF link is a capability
    ]
    leaked = [value for value in [*PHI, *secrets] if value in logs]
    print(f"\nPHI/secret check: {len(logs.splitlines())} log lines, {len(leaked)} leaks")
    assert leaked == []

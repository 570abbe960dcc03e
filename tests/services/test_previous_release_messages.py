"""Messages queued by the previous release still run: actor and queue names are a stored
contract (issue 18 moved every module; nothing a queued message names may move with them).

The messages are built here from literals, as the previous release's `DramatiqJobQueue` laid
them out (actor name, queue, keyword arguments), not from today's `Job` or `ActorName`."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest

from services.sandbox.halaxy import patient_resource
from shared.connections.onboarding import KeyVerifier
from tests.workers import Pipeline, Sandbox, sandbox_connection

# Every actor the previous release declared: a live one and its bulk twin per job.
PREVIOUS_ACTORS = {
    "sync_patient": "live",
    "sync_patient_bulk": "bulk",
    "sync_appointment": "live",
    "sync_appointment_bulk": "bulk",
    "record_invoice": "live",
    "record_invoice_bulk": "bulk",
    "write_program_note": "live",
    "write_program_note_bulk": "bulk",
}


def test_every_actor_of_the_previous_release_is_declared_on_its_queue() -> None:
    import services.workers  # noqa: F401  (declares the actors on the global broker)

    broker = dramatiq.get_broker()
    declared = {name: broker.get_actor(name).queue_name for name in broker.get_declared_actors()}
    assert {name: declared.get(name) for name in PREVIOUS_ACTORS} == PREVIOUS_ACTORS


@pytest.mark.redis
@pytest.mark.parametrize(
    ("actor_name", "queue"), [("sync_patient", "live"), ("sync_patient_bulk", "bulk")]
)
def test_a_sync_queued_by_the_previous_release_is_run(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, actor_name: str, queue: str
) -> None:
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    sandbox.halaxy.patients["1001"] = patient_resource("1001", given="Jane")
    kwargs: dict[str, Any] = {
        "connection_id": conn.id,
        "resource_id": "1001",
        "event": "patient-created",
        "event_id": "old-release-1",
    }
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue, actor_name=actor_name, args=(), kwargs=kwargs, options={}
    )
    pipeline.broker.enqueue(message)
    pipeline.broker.join(queue, timeout=30_000)
    pipeline.worker.join()
    [client] = sandbox.physitrack.by_external_id("1001")
    assert client["first_name"] == "Jane"
    assert pipeline.dead_letters() == []

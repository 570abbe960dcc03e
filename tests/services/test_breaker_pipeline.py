"""A clinic whose platform fails, end to end: the receiver, a real Dramatiq worker, the sandbox
Halaxy, Physitrack and REST platform over HTTP, real Redis.

Clinic A's Physitrack answers 503 to everything: after BRIDGE_BREAKER_FAILURES failures its
circuit opens and its messages are deferred (not dead-lettered, no retry counted), while
clinic B's messages go through. Physitrack recovers, the product's clock passes the
cooldown: the probe closes the circuit and A's deferred messages complete. `status --json`,
`/ops` and `/metrics` show each state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
import time_machine
from click.testing import CliRunner

from services.cli.main import cli
from services.sandbox.faults import Faults
from services.sandbox.halaxy import patient_resource
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.ops.dead_letters import DeadLetterStore
from shared.telemetry.definitions import REGISTRY
from shared.telemetry.event_log import EventLog, EventState
from tests.workers import Pipeline, Sandbox, sandbox_connection

A_PATIENTS = [str(n) for n in range(3001, 3007)]
B_PATIENTS = [str(n) for n in range(4001, 4004)]


def until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Wait for `condition` (a deadline against a hang, not a measure of speed)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


def counted(name: str, **labels: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def deferred_messages(pipeline: Pipeline, connection_id: str) -> list[dict[str, Any]]:
    """The connection's messages waiting in the live queue's delay queue."""
    raw = pipeline.redis.hvals(pipeline.keys.dramatiq_messages("live.DQ"))
    messages = [orjson.loads(m) for m in raw]
    return [m for m in messages if m["kwargs"].get("connection_id") == connection_id]


def dead_letters(pipeline: Pipeline, connection_id: str) -> list[Any]:
    """The connection's dead letters: the bridge's own, and Dramatiq's."""
    ours = DeadLetterStore(pipeline.redis, pipeline.keys).list()
    theirs = pipeline.dead_letters()
    return [d for d in ours if d.connection_id == connection_id] + [
        d for d in theirs if d["kwargs"].get("connection_id") == connection_id
    ]


def circuits(settings: Settings, connection_id: str) -> dict[str, dict[str, Any]]:
    env = {"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    shown = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    [row] = [r for r in orjson.loads(shown.stdout)["connections"] if r["id"] == connection_id]
    return {c["upstream"]: c for c in row["circuits"]}


def gauge(metrics: str, connection_id: str, upstream: str) -> float:
    found = re.search(
        rf'^halaxy_bridge_circuit_open\{{connection_id="{connection_id}",upstream="{upstream}"\}} '
        r"(\S+)$",
        metrics,
        re.MULTILINE,
    )
    assert found is not None, f"no circuit gauge for {connection_id} {upstream}"
    return float(found.group(1))


def test_a_failing_platform_opens_its_circuit_defers_its_clinic_and_a_probe_closes_it(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    for patient_id in A_PATIENTS + B_PATIENTS:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
    clinic_a = sandbox_connection(pipeline.store, sandbox, verify_key)
    clinic_b: Connection = sandbox_connection(pipeline.store, sandbox, verify_key, "rest")
    a_key = clinic_a.platform_api_key.get_secret_value()
    cooldown = timedelta(seconds=base_settings.breaker_cooldown_seconds)
    sandbox.physitrack.faults = Faults(error_rate=1.0, error_status=503)

    events = []
    for patient_id in A_PATIENTS:
        sent = pipeline.send(clinic_a, "patient-created", "Patient", [patient_id])
        events += sent.json()["accepted"]

    # Every message of A ends up waiting for the cooldown, none dead.
    def all_deferred() -> bool:
        waiting = deferred_messages(pipeline, clinic_a.id)
        later = epoch_seconds() * 1000 + 5_000
        return len(waiting) == len(A_PATIENTS) and all(m["options"]["eta"] > later for m in waiting)

    until(all_deferred, "clinic A's messages deferred by its open circuit")
    assert circuits(base_settings, clinic_a.id)["platform"]["state"] == "open"

    # Clinic B is not held up meanwhile.
    for patient_id in B_PATIENTS:
        pipeline.send(clinic_b, "patient-created", "Patient", [patient_id])
    until(
        lambda: (
            {r["path"].rsplit("/", 1)[1] for r in sandbox.rest.requests if r["status"] < 300}
            >= set(B_PATIENTS)
        ),
        "clinic B's patients written",
    )

    # Deferred, not failed: no dead letter, and the retry counts are the real failures only.
    assert dead_letters(pipeline, clinic_a.id) == []
    real_failures = counted(
        "halaxy_bridge_jobs_total", connection_id=clinic_a.id, outcome="retried"
    )
    assert real_failures >= base_settings.breaker_failures
    retries = sum(m["options"].get("retries", 0) for m in deferred_messages(pipeline, clinic_a.id))
    assert retries == real_failures
    assert counted(
        "halaxy_bridge_jobs_total", connection_id=clinic_a.id, outcome="deferred"
    ) >= len(A_PATIENTS)
    log = EventLog(pipeline.redis, pipeline.keys)
    states = {log.get(e, clinic_a.id)[0].status.state for e in events}
    assert states == {EventState.DEFERRED}

    # Every surface shows it.
    shown = circuits(base_settings, clinic_a.id)
    assert shown["platform"]["failures"] >= base_settings.breaker_failures
    assert shown["platform"]["retry_at"] is not None
    assert shown["halaxy"]["state"] == "closed"
    assert {c["state"] for c in circuits(base_settings, clinic_b.id).values()} == {"closed"}
    env = {"BRIDGE_REDIS_NAMESPACE": base_settings.redis_namespace}
    text = CliRunner().invoke(cli, ["status"], env=env).stdout
    [line] = [line for line in text.splitlines() if line.startswith(clinic_a.id) and "open" in line]
    assert line.split()[1:3] == ["platform", "open"]
    settings = pipeline.receiver.app.state.deps.settings
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    page = pipeline.receiver.get("/ops", headers=admin).text
    assert 'id="circuits"' in page
    assert "platform circuit open" in page
    own_page = pipeline.receiver.get(f"/ops/connections/{clinic_a.id}", headers=admin).text
    assert "platform circuit" in own_page
    assert "open since" in own_page
    metrics = pipeline.receiver.get("/metrics", headers=admin).text
    assert gauge(metrics, clinic_a.id, "platform") == 1.0
    assert gauge(metrics, clinic_b.id, "platform") == 0.0
    opened = {"connection_id": clinic_a.id, "upstream": "platform", "to": "open"}
    assert counted("halaxy_bridge_circuit_transitions_total", **opened) == 1

    # Physitrack recovers; past the cooldown one probe closes the circuit, and the messages
    # that waited (behind the probe too) complete.
    sandbox.physitrack.faults = Faults()
    step = cooldown + timedelta(seconds=cooldown.total_seconds() * 0.2 + 2)
    with time_machine.travel(utcnow() + step, tick=True) as traveller:
        for _ in range(6):
            synced = {c["external_id"] for c in sandbox.physitrack.clients_of(a_key)}
            if synced >= set(A_PATIENTS) and not deferred_messages(pipeline, clinic_a.id):
                break
            time.sleep(2)
            traveller.shift(step)
        until(
            lambda: not deferred_messages(pipeline, clinic_a.id),
            "clinic A's deferred messages run",
        )
        pipeline.drain()
        shown = circuits(base_settings, clinic_a.id)

    assert {c["external_id"] for c in sandbox.physitrack.clients_of(a_key)} >= set(A_PATIENTS)
    assert shown["platform"]["state"] == "closed"
    assert shown["platform"]["failures"] == 0
    closed = {**opened, "to": "closed"}
    assert counted("halaxy_bridge_circuit_transitions_total", **closed) == 1
    assert {log.get(e, clinic_a.id)[0].status.state for e in events} == {EventState.DONE}
    assert dead_letters(pipeline, clinic_a.id) == []

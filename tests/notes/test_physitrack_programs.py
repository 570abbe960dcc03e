"""Physitrack as it really works (issue 19's "Done when"), through the real receiver, a real
Dramatiq worker, the scheduler's poll, the sandbox Halaxy and a sandbox Physitrack that scopes
clients per practitioner key and serves the events API and program PDFs.

- One endpoint serves three connections with five practitioners; every program becomes
  exactly one note authored by the right PractitionerRole.
- With 30 % of callbacks dropped, the events poll recovers all of them (0 lost, 0 doubled).
- A patient booked with two practitioners is a client in both accounts and not in a third.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import time_machine

from services.sandbox.halaxy import appointment_resource, patient_resource
from services.sandbox.physitrack import FakePractitioner, program_callback
from services.scheduler.loop import Scheduler
from services.workers.messaging import DramatiqJobQueue
from services.workers.runtime import WorkerRuntime
from shared.connections import roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.infra.clock import utcnow
from shared.infra.store import LeaseRenewer
from shared.notes.outbox import NoteOutbox
from shared.patients.links import PatientLinks
from shared.platforms import Physitrack
from shared.platforms.base import PlatformAccount
from tests.helpers import audit_of
from tests.workers import Pipeline, Sandbox, sandbox_connection

ENDPOINT = "/webhooks/physitrack/programs"


def check_key(account: PlatformAccount) -> None:
    """The real key check: one authenticated page of the practitioner's clients."""
    with httpx.Client() as http:
        Physitrack(account, http, "halaxy-bridge-tests (ops@example.com)").verify()


@dataclass
class Seat:
    connection: Connection
    practitioner: FakePractitioner
    role: str  # the Halaxy PR- id


def add(pipeline: Pipeline, connection: Connection, fake: FakePractitioner, role: str) -> None:
    current = pipeline.store.get(connection.id)
    assert current is not None
    request = roster.parse_practitioner(
        {
            "token": fake.token,
            "halaxy_practitioner": role,
            "api_key": fake.api_key,
            **({"pms_name": fake.pms[0], "pms_key": fake.pms[1]} if fake.pms else {}),
        }
    )
    roster.add_practitioner(
        pipeline.store, check_key, current, request, utcnow(), audit_of(pipeline.store), "test"
    )


@pytest.fixture
def clinics(pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier) -> list[Seat]:
    """Three connections on one Physitrack deployment, with 2, 2 and 1 practitioners; one of
    them in Physitrack's second auth mode (key + PMS name + PMS key)."""
    seats = []
    number = 0
    for practitioners in (2, 2, 1):
        connection = sandbox_connection(pipeline.store, sandbox, verify_key)
        for _ in range(practitioners):
            number += 1
            pms = ("halaxy_bridge", f"PmsKey{number}x" + "Ab1" * 10) if number == 3 else None
            fake = sandbox.physitrack.add_practitioner(pms=pms)
            role = f"PR-{3000 + number}"
            add(pipeline, connection, fake, role)
            seats.append(Seat(connection, fake, role))
    return seats


def book(pipeline: Pipeline, sandbox: Sandbox, seat: Seat, patient_id: str) -> None:
    """Halaxy books the patient with the seat's practitioner: the appointment webhook."""
    sandbox.halaxy.patients.setdefault(patient_id, patient_resource(patient_id))
    appointment_id = f"A{patient_id}{seat.role}"
    sandbox.halaxy.appointments[appointment_id] = appointment_resource(
        appointment_id, patient_id, practitioner=seat.role
    )
    connection = pipeline.store.get(seat.connection.id)
    assert connection is not None
    pipeline.send(connection, "appointment-created", "Appointment", [appointment_id])


@pytest.fixture
def scheduler(pipeline: Pipeline) -> Iterator[Scheduler]:
    settings = pipeline.receiver.app.state.deps.settings
    runtime = WorkerRuntime(settings)
    scheduler = Scheduler(settings, runtime, DramatiqJobQueue(pipeline.broker))
    # Each `poll_all` stands for one poll interval (BRIDGE_PROGRAM_POLL_EVERY_SECONDS): the
    # clock is not moved, so the workers' retry times stay real.
    scheduler.poll_every = timedelta(0)
    yield scheduler
    scheduler.resign()  # the next test's scheduler leads at once
    runtime.close()


def poll_all(pipeline: Pipeline, scheduler: Scheduler) -> None:
    """One poll interval: the scheduler reads every practitioner's events once."""
    for connection in pipeline.store.list():
        scheduler.poll_programs(connection)


def notes_by_patient_and_author(sandbox: Sandbox) -> Counter[tuple[str, str]]:
    return Counter(
        (
            note["subject"]["reference"].rsplit("/", 1)[-1],
            note["author"][0]["reference"].rsplit("/", 1)[-1],
        )
        for note in sandbox.halaxy.notes
    )


def test_one_endpoint_serves_three_clinics_and_five_practitioners_one_note_each(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat]
) -> None:
    for number, seat in enumerate(clinics):
        book(pipeline, sandbox, seat, f"{5000 + number}")
    pipeline.drain()
    expected: Counter[tuple[str, str]] = Counter()
    for number, seat in enumerate(clinics):
        patient_id = f"{5000 + number}"
        # The patient is a client in their practitioner's account only.
        assert len(sandbox.physitrack.by_external_id(patient_id, seat.practitioner.api_key)) == 1
        assert len(sandbox.physitrack.by_external_id(patient_id)) == 1
        for name in ("Knee Rehab", "Shoulder Mobility"):
            assigned = sandbox.physitrack.assign(
                seat.practitioner,
                patient_id,
                name=name,
                deliver_to=ENDPOINT,
                http=pipeline.receiver,
            )
            assert assigned.callback is not None
            assert assigned.callback.status_code == 200
            assert assigned.callback.content == b""
            expected[(patient_id, seat.role)] += 1
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == expected
    assert len(sandbox.halaxy.notes) == 10


def test_with_30_percent_of_callbacks_dropped_the_poll_recovers_every_program(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat], scheduler: Scheduler
) -> None:
    for number, seat in enumerate(clinics):
        book(pipeline, sandbox, seat, f"{6000 + number}")
    pipeline.drain()
    poll_all(pipeline, scheduler)  # the first poll of each practitioner: nothing new yet
    chance = random.Random(19)
    expected: Counter[tuple[str, str]] = Counter()
    dropped = 0
    for round_number in range(6):
        for number, seat in enumerate(clinics):
            patient_id = f"{6000 + number}"
            drop = chance.random() < 0.3
            dropped += drop
            sandbox.physitrack.assign(
                seat.practitioner,
                patient_id,
                name=f"Program {round_number}",
                deliver_to=ENDPOINT,
                drop=drop,
                http=pipeline.receiver,
            )
            expected[(patient_id, seat.role)] += 1
    pipeline.drain()
    delivered = len(sandbox.halaxy.notes)
    # One poll interval later: every practitioner's events read once.
    poll_all(pipeline, scheduler)
    pipeline.drain()
    lost = sum((expected - notes_by_patient_and_author(sandbox)).values())
    doubled = sum((notes_by_patient_and_author(sandbox) - expected).values())
    print(
        f"\n30% drop: {sum(expected.values())} programs, {dropped} callbacks dropped, "
        f"{delivered} notes by callback, {len(sandbox.halaxy.notes)} after one poll; "
        f"lost {lost}, doubled {doubled}"
    )
    assert dropped > 0
    assert delivered == sum(expected.values()) - dropped
    assert lost == 0
    assert doubled == 0
    # The next poll finds nothing new.
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == expected


def test_a_patient_booked_with_two_practitioners_is_in_both_accounts_and_not_a_third(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat]
) -> None:
    first, second, third = clinics[0], clinics[1], clinics[2]
    assert first.connection.id == second.connection.id != third.connection.id
    book(pipeline, sandbox, first, "7001")
    book(pipeline, sandbox, second, "7001")
    pipeline.drain()
    assert len(sandbox.physitrack.by_external_id("7001", first.practitioner.api_key)) == 1
    assert len(sandbox.physitrack.by_external_id("7001", second.practitioner.api_key)) == 1
    assert sandbox.physitrack.by_external_id("7001", third.practitioner.api_key) == []
    # Each is updated on every change of the Patient.
    sandbox.halaxy.patients["7001"] = patient_resource("7001", family="Changed")
    pipeline.send(first.connection, "patient-updated", "Patient", ["7001"])
    pipeline.drain()
    for seat in (first, second):
        [client] = sandbox.physitrack.by_external_id("7001", seat.practitioner.api_key)
        assert client["last_name"] == "Changed"


def test_a_post_for_a_token_not_yet_added_is_kept_and_written_once_it_is(
    pipeline: Pipeline,
    sandbox: Sandbox,
    verify_key: KeyVerifier,
    scheduler: Scheduler,
) -> None:
    connection = sandbox_connection(pipeline.store, sandbox, verify_key)
    fake = sandbox.physitrack.add_practitioner()
    # Created in the practitioner's account before the bridge knows them (by hand, say).
    sandbox.physitrack.add_client(fake.api_key, external_id="8001", first_name="J", last_name="C")
    sandbox.halaxy.patients["8001"] = patient_resource("8001")
    assigned = sandbox.physitrack.assign(fake, "8001", deliver_to=ENDPOINT, http=pipeline.receiver)
    assert assigned.callback is not None
    assert assigned.callback.status_code == 200
    assert scheduler.unrouted.count() == 1
    scheduler.route_unrouted()
    assert scheduler.unrouted.count() == 1  # nobody knows the token yet: still kept
    add(pipeline, connection, fake, "PR-4001")
    scheduler.route_unrouted()
    pipeline.drain()
    assert scheduler.unrouted.count() == 0
    assert notes_by_patient_and_author(sandbox) == Counter({("8001", "PR-4001"): 1})
    # The poll reads the same program from the events API: still one note.
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert len(sandbox.halaxy.notes) == 1


def test_a_program_posted_to_a_clinics_own_url_and_found_by_the_poll_is_one_note(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat], scheduler: Scheduler
) -> None:
    """A clinic Physitrack registered on its own before (the per-connection URL) and the
    events poll name the program by the same note id."""
    seat = clinics[0]
    book(pipeline, sandbox, seat, "9001")
    pipeline.drain()
    assigned = sandbox.physitrack.assign(seat.practitioner, "9001", name="Own URL", drop=True)
    connection = pipeline.store.get(seat.connection.id)
    assert connection is not None
    response = pipeline.callback(
        connection,
        program_callback(
            api_key=connection.program_api_key.get_secret_value(),
            token=seat.practitioner.token,
            patient_id="9001",
            file_url=assigned.file_url,
            name="Own URL",
            when=assigned.created,
        ),
    )
    assert response.status_code == 202
    pipeline.drain()
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == Counter({("9001", seat.role): 1})


def test_a_pdf_physitrack_is_still_making_is_fetched_once_it_is_there(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat], scheduler: Scheduler
) -> None:
    """The PDF endpoint answers 202 and a URL whose file may not exist yet (§2.3): the note
    waits and retries, it does not fail."""
    seat = clinics[0]
    book(pipeline, sandbox, seat, "9101")
    pipeline.drain()
    poll_all(pipeline, scheduler)
    sandbox.physitrack.pdf_ready_after_polls = 2
    sandbox.physitrack.assign(seat.practitioner, "9101", name="Slow PDF", drop=True)
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == Counter({("9101", seat.role): 1})
    # Two answers of "not there yet", then the file.
    assert len(sandbox.physitrack.file_requests) >= 3


def test_a_program_for_a_patient_halaxy_does_not_have_ends_as_a_failed_note(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat]
) -> None:
    seat = clinics[0]
    sandbox.physitrack.add_client(
        seat.practitioner.api_key, external_id="9999", first_name="N", last_name="O"
    )
    assigned = sandbox.physitrack.assign(
        seat.practitioner, "9999", deliver_to=ENDPOINT, http=pipeline.receiver
    )
    assert assigned.callback is not None
    assert assigned.callback.status_code == 200
    pipeline.drain()
    assert sandbox.halaxy.notes == []
    settings = pipeline.receiver.app.state.deps.settings
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, settings.fernet)
    [failed] = [n for n in outbox.failed() if n.connection_id == seat.connection.id]
    assert "no patient 9999" in failed.reason


def test_a_practitioner_whose_key_is_the_connections_own_gets_no_second_client(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier
) -> None:
    """Every Physitrack key is some practitioner's: a clinic onboarded with Dr X's key has
    its patients in X's account already when X is added as a practitioner."""
    fake = sandbox.physitrack.add_practitioner()
    connection = sandbox_connection(
        pipeline.store, sandbox, verify_key, platform_api_key=fake.api_key
    )
    sandbox.halaxy.patients["9201"] = patient_resource("9201")
    pipeline.send(connection, "patient-created", "Patient", ["9201"])
    pipeline.drain()
    add(pipeline, connection, fake, "PR-4201")  # not default: the appointment routes to them
    sandbox.halaxy.appointments["A9201"] = appointment_resource(
        "A9201", "9201", practitioner="PR-4201"
    )
    pipeline.send(connection, "appointment-created", "Appointment", ["A9201"])
    sandbox.halaxy.patients["9201"] = patient_resource("9201", family="Changed")
    pipeline.send(connection, "patient-updated", "Patient", ["9201"])
    pipeline.drain()
    [client] = sandbox.physitrack.by_external_id("9201", fake.api_key)
    assert client["last_name"] == "Changed"


def test_a_kept_post_whose_link_expired_is_written_from_the_events_poll(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, scheduler: Scheduler
) -> None:
    """Kept unrouted past its link's 24 hours: routing it would fail the note, so the first
    poll of the practitioner, once added, reaches back to it and fetches a fresh PDF."""
    connection = sandbox_connection(pipeline.store, sandbox, verify_key)
    fake = sandbox.physitrack.add_practitioner()
    sandbox.halaxy.patients["9301"] = patient_resource("9301")
    with time_machine.travel(utcnow() - timedelta(hours=30), tick=True):
        sandbox.physitrack.add_client(
            fake.api_key, external_id="9301", first_name="J", last_name="C"
        )
        kept = sandbox.physitrack.assign(fake, "9301", deliver_to=ENDPOINT, http=pipeline.receiver)
    assert kept.callback is not None
    assert kept.callback.status_code == 200
    assert scheduler.unrouted.count() == 1
    add(pipeline, connection, fake, "PR-4301")
    # The bridge did not make that client: link it as a sync would have (the clinic's patient).
    current = pipeline.store.get(connection.id)
    assert current is not None
    PatientLinks(pipeline.redis, pipeline.keys, connection.id, LeaseRenewer()).save(
        "9301", str(kept.client_id), "fingerprint", seat="PR-4301"
    )
    scheduler.route_unrouted()
    assert scheduler.unrouted.count() == 1  # its link expired: not routed
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == Counter({("9301", "PR-4301"): 1})
    assert scheduler.unrouted.count() == 0


def test_a_note_failed_for_its_pdf_link_is_mended_by_the_poll(
    pipeline: Pipeline, sandbox: Sandbox, clinics: list[Seat], scheduler: Scheduler
) -> None:
    """The webhook's file was gone when the worker fetched it: the note failed. The poll asks
    Physitrack for a fresh PDF and queues the same note again: one note, not none."""
    seat = clinics[0]
    book(pipeline, sandbox, seat, "9401")
    pipeline.drain()
    poll_all(pipeline, scheduler)
    assigned = sandbox.physitrack.assign(seat.practitioner, "9401", name="Gone", drop=True)
    body = program_callback(
        api_key=sandbox.physitrack.webhook_api_key,
        token=seat.practitioner.token,
        patient_id="9401",
        file_url=assigned.file_url.rsplit("/", 1)[0] + "/missing.pdf",
        name="Gone",
        when=assigned.created,
    )
    assert pipeline.receiver.post(ENDPOINT, json=body).status_code == 200
    pipeline.drain()
    settings = pipeline.receiver.app.state.deps.settings
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, settings.fernet)
    assert [n.patient_id for n in outbox.failed() if n.connection_id == seat.connection.id] == [
        "9401"
    ]
    poll_all(pipeline, scheduler)
    pipeline.drain()
    assert notes_by_patient_and_author(sandbox) == Counter({("9401", seat.role): 1})
    assert [n for n in outbox.failed() if n.connection_id == seat.connection.id] == []

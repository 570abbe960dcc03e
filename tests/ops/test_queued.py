"""Each connection's unfinished messages and the age of its oldest, through the real receiver
and worker; what is counted goes once the message is finished, whether done, retried or dead;
and the dead-letter count is one number everywhere (status, /metrics, the page, the CLI)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import orjson
import redis
import time_machine
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from services.cli.main import cli
from services.sandbox.halaxy import patient_resource
from services.scheduler.loop import Scheduler
from services.webhook_receiver.ops_page import render
from services.workers.messaging import DramatiqEventIntake, DramatiqJobQueue, build_broker
from services.workers.runtime import WorkerRuntime
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.halaxy.events import HALAXY_EVENTS
from shared.halaxy.notifications import ChangedResource
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.infra.jobs import ActorName, Job, QueueName
from shared.infra.store import Keys, as_bytes, async_redis_client
from shared.notes.outbox import NoteOutbox
from shared.ops.queued import PRUNE_GRACE, QueuedMessages
from shared.ops.status import status
from shared.telemetry.collect import exposition, gauges
from tests.ops.test_dead_letters import admin
from tests.services.test_ops_page import Page
from tests.workers import Pipeline, Sandbox, sandbox_connection


def gather(pipeline: Pipeline, settings: Settings) -> dict[str, Any]:
    outbox = NoteOutbox(pipeline.redis, pipeline.keys, settings.fernet)
    return status(pipeline.redis, pipeline.keys, pipeline.store, outbox)


def row(found: dict[str, Any], connection: Connection) -> dict[str, Any]:
    [match] = [r for r in found["connections"] if r["id"] == connection.id]
    return match


def tracked(client: redis.Redis, keys: Keys, connection: Connection) -> dict[str, int]:
    return {q.value: client.zcard(keys.queued_messages(connection.id, q.value)) for q in QueueName}


def metric_samples(snapshot: dict[str, Any]) -> list[Any]:
    text = exposition(list(gauges(snapshot, 86_400, epoch_seconds()))).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def unique(name: str) -> str:
    return f"{name} {secrets.token_hex(4)}"


def add_patients(sandbox: Sandbox, *ids: str) -> list[str]:
    for patient_id in ids:
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id)
    return list(ids)


def test_each_connections_queued_messages_and_the_age_of_its_oldest(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    # Names of their own: the pipeline's namespace holds every pipeline test's connections.
    first = sandbox_connection(pipeline.store, sandbox, verify_key, name=unique("First"))
    second = sandbox_connection(pipeline.store, sandbox, verify_key, name=unique("Second"))
    pipeline.worker.pause()
    try:
        pipeline.send(first, "patient-created", "Patient", add_patients(sandbox, "1", "2", "3"))
        pipeline.send(second, "patient-updated", "Patient", add_patients(sandbox, "9"))
        found = gather(pipeline, base_settings)
        live = row(found, first)["queues"]["live"]
        assert (live["queued"], live["delayed"]) == (3, 0)
        assert 0 <= live["oldest_age_seconds"] <= 5
        assert row(found, second)["queues"]["live"]["queued"] == 1
        assert row(found, first)["queues"]["bulk"] == {
            "queued": 0,
            "delayed": 0,
            "oldest_age_seconds": None,
        }
        # The connections' counts add up to the queue's (only these two have messages in it;
        # earlier tests' connections in this shared namespace may keep stale entries until the
        # scheduler prunes them).
        [live_queue] = [q for q in found["queues"] if q["queue"] == "live"]
        assert (
            live_queue["queued"]
            == live_queue["depth"] + live_queue["taken"] + live_queue["delayed"]
        )
        assert live_queue["queued"] == sum(
            row(found, c)["queues"]["live"]["queued"] for c in (first, second)
        )

        with time_machine.travel(utcnow() + timedelta(minutes=6), tick=False):
            later = gather(pipeline, base_settings)
        age = row(later, first)["queues"]["live"]["oldest_age_seconds"]
        assert 360 <= age <= 366
        page = Page(render(later))
        assert page.row("connections", first.name)[0] == "attention"
        assert "live message old" in page.cell("connections", first.name, "state")
        assert page.cell("connections", first.name, "live queued") == "3"
        assert page.cell("connections", first.name, "live oldest").startswith("6m")
        samples = {
            (s.name, s.labels.get("queue"), s.labels.get("state")): s.value
            for s in metric_samples(later)
            if s.labels.get("connection_id") == first.id
        }
        assert samples[("halaxy_bridge_connection_queue_messages", "live", "due")] == 3
        assert samples[("halaxy_bridge_connection_queue_messages", "live", "delayed")] == 0
        assert samples[("halaxy_bridge_connection_oldest_message_age_seconds", "live", None)] == age
    finally:
        pipeline.worker.resume()
    pipeline.drain()
    done = gather(pipeline, base_settings)
    assert row(done, first)["queues"]["live"]["queued"] == 0
    assert row(done, first)["queues"]["live"]["oldest_age_seconds"] is None
    assert tracked(pipeline.redis, pipeline.keys, first) == {"live": 0, "storm": 0, "bulk": 0}
    assert tracked(pipeline.redis, pipeline.keys, second) == {"live": 0, "storm": 0, "bulk": 0}


def test_retried_and_dead_messages_are_counted_until_they_are_finished(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    """A retry is a new enqueue (through the delay queue, then back): counted once at a time,
    and nothing is left behind once the job succeeds or dies."""
    conn = sandbox_connection(pipeline.store, sandbox, verify_key)
    add_patients(sandbox, "21")
    sandbox.halaxy.patients["22"] = patient_resource("22", birth_date=None)  # dies at once
    sandbox.halaxy.faults.script = [503, 503]  # the first fetches fail: retried
    pipeline.send(conn, "patient-created", "Patient", ["21", "22"])
    pipeline.drain()
    assert len(sandbox.physitrack.clients) == 1  # 21, after its retries
    found = gather(pipeline, base_settings)
    assert row(found, conn)["queues"]["live"]["queued"] == 0
    assert tracked(pipeline.redis, pipeline.keys, conn) == {"live": 0, "storm": 0, "bulk": 0}
    assert row(found, conn)["dead_letters"] == 1  # 22


def test_the_intake_and_the_job_queue_count_what_they_queue(
    settings: Settings,
    store: ConnectionStore,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    record = as_bytes(store.redis.get(keys.connection(connection.id)) or b"")
    changed = [ChangedResource("e1", "Patient", "p-1"), ChangedResource("e2", "Patient", "p-2")]
    before = epoch_seconds()

    async def accept() -> None:
        client = async_redis_client(settings)
        try:
            intake = DramatiqEventIntake(client, keys)
            await intake.accept(record, connection.id, HALAXY_EVENTS["patient-created"], changed)
            # The same events again are duplicates: nothing more queued, nothing more counted.
            await intake.accept(record, connection.id, HALAXY_EVENTS["patient-created"], changed)
        finally:
            await client.aclose()

    asyncio.run(accept())
    live = keys.queued_messages(connection.id, "live")
    members = redis_server_client.zrange(live, 0, -1, withscores=True)
    assert sorted(m for m, _ in members) == sorted(
        redis_server_client.lrange(keys.dramatiq_queue("live"), 0, -1)
    )
    assert all(before <= score <= epoch_seconds() for _, score in members)
    # Live work puts its connection in fair share's index, in the same step.
    index = keys.live_connections()
    indexed_at = redis_server_client.zscore(index, connection.id)
    assert indexed_at is not None
    assert before <= indexed_at <= epoch_seconds()
    redis_server_client.zrem(index, connection.id)

    queue = DramatiqJobQueue(build_broker(settings, redis_server_client))
    queue.enqueue([Job(ActorName.SYNC_PATIENT, QueueName.BULK, {"connection_id": connection.id})])
    [bulk_id] = redis_server_client.lrange(keys.dramatiq_queue("bulk"), 0, -1)
    assert redis_server_client.zrange(keys.queued_messages(connection.id, "bulk"), 0, -1) == [
        bulk_id
    ]
    assert redis_server_client.zscore(index, connection.id) is None  # bulk work: not indexed
    # A live job queued through Dramatiq (a replay, a program note, a retry) is.
    queue.enqueue([Job(ActorName.SYNC_PATIENT, QueueName.LIVE, {"connection_id": connection.id})])
    assert redis_server_client.zscore(index, connection.id) is not None
    # A job without a connection is not counted for any.
    queue.enqueue([Job(ActorName.SYNC_PATIENT, QueueName.BULK, {})])
    assert redis_server_client.zcard(keys.queued_messages(connection.id, "bulk")) == 1


def test_the_scheduler_drops_counted_messages_that_are_no_longer_queued(
    settings: Settings,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
) -> None:
    queued = QueuedMessages(redis_server_client, keys)
    now = epoch_seconds()
    # Lost (its removal never landed), old enough to be looked at: dropped.
    queued.add(connection.id, "live", "lost", now - PRUNE_GRACE - 5)
    # Just added, its message not written yet: kept.
    queued.add(connection.id, "live", "fresh", now)
    # Still queued (in the delay queue's hash), however old: kept.
    redis_server_client.hset(keys.dramatiq_messages("bulk.DQ"), "waiting", b"{}")
    queued.add(connection.id, "bulk.DQ", "waiting", now - 3600)
    Scheduler(settings, WorkerRuntime(settings)).tick()
    assert redis_server_client.zrange(keys.queued_messages(connection.id, "live"), 0, -1) == [
        b"fresh"
    ]
    assert redis_server_client.zrange(keys.queued_messages(connection.id, "bulk"), 0, -1) == [
        b"waiting"
    ]


def test_dead_letters_are_one_number_everywhere(
    pipeline: Pipeline, sandbox: Sandbox, verify_key: KeyVerifier, base_settings: Settings
) -> None:
    """Dramatiq keeps its own copy of each dead message (`.XQ`, 7 days), which a replay or a
    purge does not remove and a job dying twice (once more after its replay) adds to: counted
    as the queues' dead letters they disagreed with the bridge's own (2+1 against 2). Every
    surface now counts the bridge's dead letters only."""
    # The pipeline's namespace is the run's: forget earlier tests' dead letters.
    pipeline.redis.delete(pipeline.keys.dead_letters(), pipeline.keys.dead_letter_times())
    conn = sandbox_connection(pipeline.store, sandbox, verify_key, name=unique("Clinic"))
    for patient_id in ("31", "32"):
        sandbox.halaxy.patients[patient_id] = patient_resource(patient_id, birth_date=None)
    pipeline.send(conn, "patient-created", "Patient", ["31", "32"])
    pipeline.drain()
    letters = pipeline.receiver.get(
        "/ops/dead-letters", params={"connection": conn.id}, headers=admin()
    ).json()["dead_letters"]
    replayed = [x["id"] for x in letters if x["resource_id"] == "31"]
    answer = pipeline.receiver.post(
        "/ops/dead-letters/replay", json={"ids": replayed}, headers=admin()
    )
    assert answer.json() == {"replayed": replayed}
    pipeline.broker.join("bulk", timeout=30_000)  # and it dies again, as bulk work
    pipeline.worker.join()
    namespace = pipeline.keys.dramatiq_namespace()
    dramatiq_copies = {q: pipeline.redis.zcard(f"{namespace}:{q}.XQ") for q in ("live", "bulk")}
    assert dramatiq_copies == {"live": 2, "bulk": 1}  # what the queues used to show

    found = gather(pipeline, base_settings)
    dead = {q["queue"]: q["dead"] for q in found["queues"]}
    assert dead == {"live": 1, "storm": 0, "bulk": 1}
    assert found["dead_letters"] == 2 == sum(dead.values())
    assert row(found, conn)["dead_letters"] == 2
    assert (
        sum(r["dead_letters"] for r in found["connections"]) + found["dead_letters_unlisted"]
        == found["dead_letters"]
    )

    samples = metric_samples(found)
    per_connection = {
        s.labels["connection_id"]: s.value
        for s in samples
        if s.name == "halaxy_bridge_dead_letters"
    }
    per_queue = {
        s.labels["queue"]: s.value
        for s in samples
        if s.name == "halaxy_bridge_queue_messages" and s.labels["state"] == "dead"
    }
    assert per_connection[conn.id] == 2
    assert per_queue == {"live": 1, "storm": 0, "bulk": 1}

    html = render(found)
    page = Page(html)
    assert (
        '<li>Dead letters: <a href="/ops/dead-letters" aria-label="Dead letters: the list">2</a>'
        in html
    )
    assert page.cell("connections", conn.name, "dead letters") == "2"
    assert page.cell("queues", "live", "dead letters") == "1"
    assert page.cell("queues", "bulk", "dead letters") == "1"

    result = CliRunner().invoke(
        cli, ["status", "--json"], env={"BRIDGE_REDIS_NAMESPACE": pipeline.keys.namespace}
    )
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.stdout)
    assert shown["dead_letters"] == 2
    assert {q["queue"]: q["dead"] for q in shown["queues"]} == dead
    text = CliRunner().invoke(
        cli, ["status"], env={"BRIDGE_REDIS_NAMESPACE": pipeline.keys.namespace}
    )
    assert "dead letters: 2 " in text.stdout

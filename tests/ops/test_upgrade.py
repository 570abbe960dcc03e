"""What an earlier version stored, brought up to date by the scheduler once, on real Redis."""

from __future__ import annotations

from datetime import timedelta

import orjson
import redis

from services.sandbox.halaxy import FakeHalaxy
from services.scheduler.loop import Scheduler
from services.workers.runtime import WorkerRuntime
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from shared.notes.outbox import DONE_TTL, NoteOutbox, NoteState
from shared.ops.upgrade import upgrade_stored_data
from tests.conftest import make_connection
from tests.helpers import queued_messages, recorded_note

TOKEN = "pt-tok-41c9e0d7b2"  # a practitioner token: it can sign in as the practitioner


def legacy_note(client: redis.Redis, keys: Keys, outbox: NoteOutbox, name: str, state: str) -> str:
    """A note as the version before left it: off the watch and the failed index, the token
    in clear, a failed note's link erased."""
    note_id = recorded_note(outbox, "cn_old", name, utcnow() - timedelta(hours=1), TOKEN)
    record = keys.note("cn_old", note_id)
    client.hset(record, mapping={"state": state, "practitioner_token": TOKEN})
    client.hdel(record, "link_expires_at")
    if state == "failed":
        client.hset(record, "callback", "")
        client.expire(record, int(DONE_TTL.total_seconds()) - 3600)  # failed an hour ago
    client.zrem(keys.unsettled_notes(), f"cn_old/{note_id}")
    return note_id


def test_the_scheduler_brings_an_earlier_versions_data_up_to_date_once(
    settings: Settings,
    redis_server_client: redis.Redis,
    keys: Keys,
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
) -> None:
    outbox = NoteOutbox(redis_server_client, keys, settings.fernet)
    notes = {
        state: legacy_note(redis_server_client, keys, outbox, state.title(), state)
        for state in ("queued", "fetching", "posting", "failed", "parked", "posted")
    }
    connection = make_connection(store, fake_halaxy, verify_key, practitioners={TOKEN: "PR-2"})
    record = orjson.loads(redis_server_client.get(keys.connection(connection.id)) or b"")
    record["practitioners"] = {TOKEN: "PR-2"}  # as the version before stored it: in clear
    del record["practitioners_sealed"]
    redis_server_client.set(keys.connection(connection.id), orjson.dumps(record))

    reverse_links = f"{keys.namespace}:patient-links-rev:{connection.id}"
    redis_server_client.hset(reverse_links, "7961", "1001")  # no longer read: deleted

    Scheduler(settings, WorkerRuntime(settings)).tick()

    assert not redis_server_client.exists(reverse_links)

    # Notes not settled are watched, due at once: the same tick queued their jobs again.
    unsettled = {notes[s] for s in ("queued", "fetching", "posting")}
    watched = redis_server_client.zrange(keys.unsettled_notes(), 0, -1)
    assert {m.decode() for m in watched} == {f"cn_old/{n}" for n in unsettled}
    requeued = queued_messages(redis_server_client, keys)
    assert {m["kwargs"]["note_id"] for m in requeued} == unsettled
    # The failed note is listed, indexed by when it failed, and can be dropped, not retried.
    [failed] = outbox.failed()
    assert failed.note_id == notes["failed"]
    failed_at = redis_server_client.zscore(keys.failed_notes(), f"cn_old/{notes['failed']}")
    assert failed_at is not None
    assert abs(failed_at - (epoch_seconds() - 3600)) < 60
    # The parked note's link goes when it expires, a day from now at the latest.
    link_expiry = redis_server_client.zscore(keys.waiting_note_links(), f"cn_old/{notes['parked']}")
    assert link_expiry is not None
    assert epoch_seconds() < link_expiry <= epoch_seconds() + 24 * 3600
    # No token left in clear, in notes or in the connection.
    for note_id in notes.values():
        assert not redis_server_client.hexists(keys.note("cn_old", note_id), "practitioner_token")
    stored = redis_server_client.get(keys.connection(connection.id)) or b""
    assert TOKEN.encode() not in stored
    reopened = store.get(connection.id)
    assert reopened is not None
    assert reopened.practitioners == {TOKEN: "PR-2"}
    posted = outbox.get("cn_old", notes["posted"])
    assert posted is not None
    assert posted.state is NoteState.POSTED  # settled notes are left as they were

    # Once through, never again: a note left off the watch now stays off.
    redis_server_client.zrem(keys.unsettled_notes(), f"cn_old/{notes['queued']}")
    assert upgrade_stored_data(redis_server_client, keys, store) is None
    assert redis_server_client.zscore(keys.unsettled_notes(), f"cn_old/{notes['queued']}") is None

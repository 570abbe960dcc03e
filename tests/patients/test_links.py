"""Patient links and the audit entries written with them, against real Redis."""

from __future__ import annotations

import pytest
import redis
from structlog.testing import capture_logs

from shared.infra.audit import AuditTrail
from shared.infra.errors import StoreUnavailable
from shared.infra.store import Keys, LeaseRenewer
from shared.patients.links import PatientLinks
from tests.redis_server import free_port


def test_a_save_records_the_link_both_ways_and_its_audit_entry(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    links = PatientLinks(redis_server_client, keys, "cn_a", renewer)
    audit = AuditTrail(redis_server_client, keys)
    entry = audit.pending_write("platform.patient_created", "cn_a", "Patient/1 platform:p-9")
    links.save("1", "p-9", "digest", audit=entry)
    link = links.get("1")
    assert link is not None
    assert (link.platform_id, link.fingerprint, link.creating) == ("p-9", "digest", False)
    [recorded] = audit.entries()
    assert (recorded.actor, recorded.action, recorded.connection_id, recorded.resource_ids) == (
        "worker",
        "platform.patient_created",
        "cn_a",
        "Patient/1 platform:p-9",
    )
    assert recorded.outcome == "ok"


def test_a_save_redis_missed_logs_the_audit_entry_and_fails_the_job(
    renewer: LeaseRenewer,
) -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    keys = Keys("nowhere")
    entry = AuditTrail(unreachable, keys).pending_write(
        "platform.patient_created", "cn_x", "Patient/1 platform:p-9"
    )
    with capture_logs() as logs, pytest.raises(StoreUnavailable):
        PatientLinks(unreachable, keys, "cn_x", renewer).save("1", "p-9", "digest", audit=entry)
    assert [(e["event"], e["action"], e["resource_ids"]) for e in logs] == [
        ("audit.not_recorded", "platform.patient_created", "Patient/1 platform:p-9")
    ]


def test_an_audit_entry_refused_alone_is_logged_and_the_link_is_saved(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    redis_server_client.set(keys.audit(), "not a stream")  # XADD answers WRONGTYPE
    links = PatientLinks(redis_server_client, keys, "cn_a", renewer)
    entry = AuditTrail(redis_server_client, keys).pending_write("a", "cn_a", "Patient/1")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        links.save("1", "p-9", "digest", audit=entry)  # as AuditTrail.record would raise
    link = links.get("1")
    assert link is not None
    assert link.platform_id == "p-9"


def test_reading_a_link_can_mark_a_patient_without_one_as_being_created(
    redis_server_client: redis.Redis, keys: Keys, renewer: LeaseRenewer
) -> None:
    links = PatientLinks(redis_server_client, keys, "cn_a", renewer)
    assert links.get("1", mark_creating=True) is None
    marked = links.get("1")
    assert marked is not None
    assert marked.creating
    assert marked.platform_id is None
    links.save("1", "p-9", "digest")
    linked = links.get("1", mark_creating=True)  # a link is never overwritten by a marker
    assert linked is not None
    assert (linked.platform_id, linked.creating) == ("p-9", False)
    assert links.get("2") is None
    assert links.get("2") is None  # a plain read marks nothing
    assert links.count() == 1

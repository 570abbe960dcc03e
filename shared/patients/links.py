"""Which platform patient each Halaxy patient became, per connection, and what was written.

One Redis hash per connection: Halaxy patient id -> {platform id, fingerprint, time}. The
fingerprint lets an update of an unchanged patient write nothing. A `creating` marker is set
before a create so that a worker dying between the platform's answer and this record is
noticed, and the platform is searched instead of creating a duplicate. A patient who left
good standing after being written (deceased, archived) keeps the link, with `stopped` saying
why nothing is written for them any more.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from shared.infra.audit import PendingEntry
from shared.infra.clock import iso_now
from shared.infra.codec import RecordCodec
from shared.infra.errors import StoreUnavailable
from shared.infra.store import Keys, LeaseRenewer, as_bytes, held_lease, translate_redis_errors

LOCK_TTL = 30.0  # renewed while the sync runs; lapses soon after its holder dies
LOCK_WAIT = 5.0


@dataclass(frozen=True)
class PatientLink:
    platform_id: str | None
    fingerprint: str | None
    synced_at: str
    creating: bool = False
    stopped: str | None = None  # why the patient is no longer written (a `Standing`)


PATIENT_LINK = RecordCodec(PatientLink)


class PatientLinks:
    def __init__(
        self, client: redis.Redis, keys: Keys, connection_id: str, renewer: LeaseRenewer
    ) -> None:
        self._redis = client
        self._keys = keys
        self._renewer = renewer
        self.connection_id = connection_id
        self._key = keys.patient_links(connection_id)

    def get(self, patient_id: str, mark_creating: bool = False) -> PatientLink | None:
        """The patient's link. With `mark_creating`, a patient without one is marked
        `creating` in the same round trip (and None is still returned)."""
        with translate_redis_errors():
            if mark_creating:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hget(self._key, patient_id)
                pipe.hsetnx(self._key, patient_id, _creating())
                raw, _ = pipe.execute()
            else:
                raw = self._redis.hget(self._key, patient_id)
        if raw is None:
            return None
        return PATIENT_LINK.decode(as_bytes(raw))

    def save(
        self,
        patient_id: str,
        platform_id: str,
        fingerprint: str,
        audit: PendingEntry | None = None,
    ) -> None:
        """Record the link, in one round trip with `audit`'s entry (sent first, and
        a failure to record it is logged, never raised, as `AuditTrail.record` does)."""
        link = PatientLink(platform_id, fingerprint, iso_now())
        pipe = self._redis.pipeline(transaction=False)
        if audit is not None:
            audit.add_to(pipe)
        pipe.hset(self._key, patient_id, PATIENT_LINK.encode(link))
        try:
            with translate_redis_errors():
                replies = pipe.execute(raise_on_error=False)
        except StoreUnavailable as exc:
            if audit is not None:
                audit.settle(exc)
            raise
        if audit is not None:
            audit.settle(replies.pop(0))
        for reply in replies:
            if isinstance(reply, Exception):
                with translate_redis_errors():
                    raise reply

    def stop(self, patient_id: str, link: PatientLink, why: str) -> None:
        """Record on `link` (read under the patient's lock) why the patient is no longer
        written. The fingerprint goes, so a patient back in good standing (a record
        corrected in Halaxy) is written again, and that write (`save`) clears `stopped`."""
        stopped = PatientLink(link.platform_id, None, iso_now(), stopped=why)
        with translate_redis_errors():
            self._redis.hset(self._key, patient_id, PATIENT_LINK.encode(stopped))

    def mark_creating(self, patient_id: str) -> None:
        with translate_redis_errors():
            self._redis.hset(self._key, patient_id, _creating())

    def count(self) -> int:
        with translate_redis_errors():
            return int(self._redis.hlen(self._key))

    def locked(self, patient_id: str) -> AbstractContextManager[None]:
        """Only one worker at a time works on one patient (else two creates could race)."""
        return held_lease(
            self._redis,
            self._keys.patient_lock(self.connection_id, patient_id),
            ttl=LOCK_TTL,
            wait=LOCK_WAIT,
            busy="another worker is syncing this patient",
            renewer=self._renewer,
        )


def _creating() -> bytes:
    return PATIENT_LINK.encode(PatientLink(None, None, iso_now(), creating=True))

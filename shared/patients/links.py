"""Which platform patient each Halaxy patient became, per connection and platform account.

One Redis hash per connection: Halaxy patient id -> {platform id, fingerprint, time}, the
field being `{patient id}@{PR-…}` for a practitioner's own account (a patient seen by two
practitioners is a client in both accounts, therapy-platforms.md 1.3) and the bare patient id
for the connection's own account, as before practitioners had accounts. The
fingerprint lets an update of an unchanged patient write nothing. A `creating` marker is set
before a create so that a worker dying between the platform's answer and this record is
noticed, and the platform is searched instead of creating a duplicate. A patient who left
good standing after being written (deceased, archived) keeps the link, with `stopped` saying
why nothing is written for them any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from shared.infra.audit import PendingEntry
from shared.infra.clock import iso_now
from shared.infra.codec import RecordCodec
from shared.infra.errors import StoreUnavailable
from shared.infra.replication import confirm_replicated
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
    # The Patient's `meta.lastUpdated` when it was written: an older version read later (a
    # delivery out of order, a lagging read) never overwrites it.
    source_updated: str | None = None


PATIENT_LINK = RecordCodec(PatientLink)


class PatientLinks:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        connection_id: str,
        renewer: LeaseRenewer,
        replica_ack_ms: int = 0,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._renewer = renewer
        self._replica_ack_ms = replica_ack_ms  # BRIDGE_REPLICA_ACK_MS; 0: off
        self.connection_id = connection_id
        self._key = keys.patient_links(connection_id)

    def get(
        self, patient_id: str, mark_creating: bool = False, seat: str | None = None
    ) -> PatientLink | None:
        """The patient's link in the account of `seat` (a practitioner's PR- id; None: the
        connection's own). With `mark_creating`, a patient without one is marked `creating`
        in the same round trip (and None is still returned)."""
        field = link_field(patient_id, seat)
        with translate_redis_errors():
            if mark_creating:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hget(self._key, field)
                pipe.hsetnx(self._key, field, _creating())
                raw, _ = pipe.execute()
            else:
                raw = self._redis.hget(self._key, field)
        if raw is None:
            return None
        return PATIENT_LINK.decode(as_bytes(raw))

    def of_seats(
        self, patient_id: str, seats: Sequence[str | None]
    ) -> dict[str | None, PatientLink]:
        """The patient's links in each of `seats` that has one, in one round trip."""
        if not seats:
            return {}
        with translate_redis_errors():
            raws = self._redis.hmget(self._key, [link_field(patient_id, s) for s in seats])
        return {
            seat: PATIENT_LINK.decode(as_bytes(raw))
            for seat, raw in zip(seats, raws, strict=True)
            if raw is not None
        }

    def save(
        self,
        patient_id: str,
        platform_id: str,
        fingerprint: str,
        audit: PendingEntry | None = None,
        seat: str | None = None,
        source_updated: str | None = None,
    ) -> None:
        """Record the link, in one round trip with `audit`'s entry (sent first, and
        a failure to record it is logged, never raised, as `AuditTrail.record` does)."""
        link = PatientLink(platform_id, fingerprint, iso_now(), source_updated=source_updated)
        pipe = self._redis.pipeline(transaction=False)
        if audit is not None:
            audit.add_to(pipe)
        pipe.hset(self._key, link_field(patient_id, seat), PATIENT_LINK.encode(link))
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

    def stop(self, patient_id: str, link: PatientLink, why: str, seat: str | None = None) -> None:
        """Record on `link` (read under the patient's lock) why the patient is no longer
        written. The fingerprint goes, so a patient back in good standing (a record
        corrected in Halaxy) is written again, and that write (`save`) clears `stopped`."""
        stopped = PatientLink(
            link.platform_id, None, iso_now(), stopped=why, source_updated=link.source_updated
        )
        with translate_redis_errors():
            self._redis.hset(self._key, link_field(patient_id, seat), PATIENT_LINK.encode(stopped))

    def mark_creating(self, patient_id: str, seat: str | None = None) -> None:
        with translate_redis_errors():
            self._redis.hset(self._key, link_field(patient_id, seat), _creating())

    def unmark_creating(self, patient_id: str, seat: str | None = None) -> None:
        """Forget the `creating` marker of a create the platform refused (nothing was made):
        under the patient's lock, like every write of a link."""
        with translate_redis_errors():
            self._redis.hdel(self._key, link_field(patient_id, seat))

    def confirm_replicated(self) -> None:
        """Return once a replica holds every write made so far (`NotReplicated` if none
        does within BRIDGE_REPLICA_ACK_MS; at once when that is off)."""
        confirm_replicated(self._redis, self._keys, self._replica_ack_ms)

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


def link_field(patient_id: str, seat: str | None) -> str:
    """The hash field of a patient's link in one account ('@' is in no Halaxy id)."""
    return patient_id if seat is None else f"{patient_id}@{seat}"


def _creating() -> bytes:
    return PATIENT_LINK.encode(PatientLink(None, None, iso_now(), creating=True))

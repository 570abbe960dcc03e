"""The outbox of clinical notes: one durable record per program assignment.

Halaxy cannot delete or search notes (halaxy-api.md sections 6 and 7), so a note must be
posted at most once. Every note moves through

    queued -> fetching -> posting -> posted
                   \\          \\-> parked  (the POST ended ambiguously: a person decides)
                    \\-> failed            (provably not written; the reason says why)

and a person settles a parked or failed note: it was posted after all, retry it, or drop it.
Each move is a compare-and-set in Redis, so two workers can never both take a note into
`posting`. The callback's `file_url` (a 24-hour capability to the PDF) is sealed with Fernet
like a secret, and erased once the note is posted or dropped; a parked or failed note keeps it
while the link lasts, so that a person can retry it (`forget_expired` erases it after).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import redis
import structlog
from cryptography.fernet import InvalidToken, MultiFernet

from shared.infra.clock import epoch_seconds, iso_now, utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import UnreadableRecord
from shared.infra.replication import confirm_replicated
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import FILE_URL_LIFETIME, ProgramCallback, note_title

log = structlog.get_logger("halaxy_bridge.notes")

DONE_TTL = timedelta(days=180)  # posted/failed/dropped records: the dedup memory for repeats
# A note not settled is queued again by the scheduler if nothing moves it for this long: its
# job may be lost. A note no worker has taken up yet waits the shorter time; one a worker took
# up may be waiting out a retry, so it waits longer than Dramatiq's longest retry wait
# (services/workers/policy.py: 6 hours), or each requeue would start a second retry chain.
# How many notes a listing (`notes parked|failed`, `/ops/notes/*`) shows unless asked, and
# at most; offsets past OFFSET_MAX are refused before Redis (which takes up to 2**63 - 1).
PAGE_DEFAULT = 100
PAGE_MAX = 1000
OFFSET_MAX = 1_000_000_000
WATCH_NEW = timedelta(minutes=10)
WATCH_TAKEN_UP = timedelta(hours=6, minutes=10)

# KEYS: record, parked index, unsettled index, failed index, waiting notes' link expiries.
# ARGV: allowed states (comma list), new state, index member, now (seconds), ttl for terminal
# states, the watch's due time for a note a person sent back and for one a worker took up, the
# link's expiry for a record that does not say (one made before it was recorded: at the
# latest a day from now), then field/value pairs.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
local allowed = false
for state in string.gmatch(ARGV[1], '[^,]+') do
  if state == current then allowed = true end
end
if not allowed then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 9))
redis.call('HDEL', KEYS[1], 'practitioner_token')  -- kept in clear by an earlier version
-- the notes waiting for a person: each state in an index of its own, and every such note
-- keeps its PDF link until the link expires
local waiting = {parked = KEYS[2], failed = KEYS[4]}
if waiting[current] and current ~= ARGV[2] then
  redis.call('ZREM', waiting[current], ARGV[3])
  redis.call('ZREM', KEYS[5], ARGV[3])
end
if waiting[ARGV[2]] then
  redis.call('ZADD', waiting[ARGV[2]], ARGV[4], ARGV[3])
  local expires = redis.call('HGET', KEYS[1], 'link_expires_at') or ARGV[8]
  redis.call('ZADD', KEYS[5], expires, ARGV[3])
end
if ARGV[2] == 'posted' or ARGV[2] == 'failed' or ARGV[2] == 'dropped' then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])  -- a failed note a person sent back is live again
end
if ARGV[2] == 'queued' or ARGV[2] == 'fetching' or ARGV[2] == 'posting' then
  -- not settled: if nothing moves it by the due time, the scheduler queues its job again
  local due = ARGV[7]
  if current == 'parked' or current == 'failed' then due = ARGV[6] end
  redis.call('ZADD', KEYS[3], due, ARGV[3])
else
  redis.call('ZREM', KEYS[3], ARGV[3])  -- settled, or a person's to settle (parked, failed)
end
return {1, current}
"""


# KEYS: waiting notes' link expiries. ARGV: now, how many at most, the record keys' prefix.
FORGET_LINKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local record = ARGV[3] .. string.gsub(member, '/', ':', 1)
  local state = redis.call('HGET', record, 'state')
  if state == 'parked' or state == 'failed' then
    redis.call('HSET', record, 'callback', '')
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


# One command, so a note is never half-recorded; a record without a state counts as absent.
# KEYS: record, unsettled index. ARGV: the watch's due time and member, then field/value pairs.
CREATE = """
if redis.call('HEXISTS', KEYS[1], 'state') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


class NoteState(StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    POSTING = "posting"
    POSTED = "posted"
    PARKED = "parked"
    FAILED = "failed"
    DROPPED = "dropped"


@dataclass(frozen=True)
class NoteRecord:
    """What the outbox keeps: ids, the title, times, the outcome. No patient details."""

    note_id: str
    connection_id: str
    state: NoteState
    patient_id: str
    title: str
    program_date_iso: str
    updated: bool
    created_at: str
    updated_at: str
    attempts: int = 0
    docref_id: str = ""
    reason: str = ""
    resolved_by: str = ""
    resolved_at: str = ""
    resolution: str = ""

    def shown(self) -> dict[str, Any]:
        """The record as ops tools show it. The practitioner's token, which can sign in as the
        practitioner, is not in it: only the sealed callback holds it."""
        return asdict(self)


NOTE_RECORD = RecordCodec(NoteRecord)
CALLBACK = RecordCodec(ProgramCallback)  # sealed with Fernet beside the record


class NoteOutbox:
    def __init__(
        self, client: redis.Redis, keys: Keys, fernet: MultiFernet, replica_ack_ms: int = 0
    ) -> None:
        self._redis = client
        self._keys = keys
        self._fernet = fernet
        self._replica_ack_ms = replica_ack_ms  # BRIDGE_REPLICA_ACK_MS; 0: off
        self._transition = client.register_script(TRANSITION)
        self._create = client.register_script(CREATE)
        self._forget_links = client.register_script(FORGET_LINKS)

    def confirm_replicated(self) -> None:
        """Return once a replica holds every write made so far (`NotReplicated` if none
        does within BRIDGE_REPLICA_ACK_MS; at once when that is off)."""
        confirm_replicated(self._redis, self._keys, self._replica_ack_ms)

    def create(self, connection_id: str, note_id: str, callback: ProgramCallback) -> bool:
        """Record a new note as `queued`; False if the note exists already."""
        now = iso_now()
        note = NoteRecord(
            note_id=note_id,
            connection_id=connection_id,
            state=NoteState.QUEUED,
            patient_id=callback.patient_id,
            title=note_title(callback),
            program_date_iso=callback.date_iso.isoformat(),
            updated=callback.updated,
            created_at=now,
            updated_at=now,
        )
        record = {
            **NOTE_RECORD.encode_fields(note),
            # Beside the record, never shown by it: the sealed callback and its link's expiry.
            "link_expires_at": str(int(callback.link_expires_at().timestamp())),
            "callback": self._fernet.encrypt(CALLBACK.encode(callback)).decode(),
        }
        pairs: list[Any] = []
        for name, value in record.items():
            pairs += [name, value]
        with translate_redis_errors():
            created = self._create(
                keys=[self._keys.note(connection_id, note_id), self._keys.unsettled_notes()],
                args=[_due(WATCH_NEW), f"{connection_id}/{note_id}", *pairs],
            )
        return bool(created)

    def renew(self, connection_id: str, note_id: str, callback: ProgramCallback) -> bool:
        """Queue again a failed note with a fresh callback (a new PDF link the events poll
        asked for); False if the note is not failed (any more)."""
        moved, _ = self.move(
            connection_id,
            note_id,
            {NoteState.FAILED},
            NoteState.QUEUED,
            reason="",
            link_expires_at=str(int(callback.link_expires_at().timestamp())),
            callback=self._fernet.encrypt(CALLBACK.encode(callback)).decode(),
        )
        return moved

    def get(self, connection_id: str, note_id: str) -> NoteRecord | None:
        with translate_redis_errors():
            raw = self._redis.hgetall(self._keys.note(connection_id, note_id))
        decoded = {as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()}
        return NOTE_RECORD.load(decoded) if "state" in decoded else None

    def callback(self, connection_id: str, note_id: str) -> ProgramCallback | None:
        """The callback as received (its file_url unsealed), while the note still needs it."""
        with translate_redis_errors():
            sealed = self._redis.hget(self._keys.note(connection_id, note_id), "callback")
        if not sealed:  # never stored, or erased once the note was settled or its link died
            return None
        try:
            return CALLBACK.decode(self._fernet.decrypt(as_bytes(sealed)))
        except (InvalidToken, UnreadableRecord):
            # Sealed under a BRIDGE_SECRET_KEY no longer given, or not a callback this version
            # can read: as good as gone.
            log.warning("note.callback_unreadable", connection_id=connection_id, note_id=note_id)
            return None

    def forget_expired(self, limit: int = 500) -> int:
        """Erase the PDF links of parked and failed notes once they have expired (a retry
        could only fail then), and the failed index's entries of records gone with DONE_TTL.
        How many links were looked at (a batch of `limit` at most)."""
        with translate_redis_errors():
            done = self._forget_links(
                keys=[self._keys.waiting_note_links()],
                args=[int(epoch_seconds()), limit, self._keys.note_prefix()],
            )
            self._redis.zremrangebyscore(
                self._keys.failed_notes(), "-inf", epoch_seconds() - DONE_TTL.total_seconds()
            )
        return int(done)

    def move(
        self,
        connection_id: str,
        note_id: str,
        allowed: set[NoteState],
        to: NoteState,
        **values: str,
    ) -> tuple[bool, NoteState | None]:
        """Compare-and-set the state; returns (moved, the state found)."""
        pairs: list[str] = []
        for name, value in {**values, "updated_at": iso_now()}.items():
            pairs += [name, value]
        if to in (NoteState.POSTED, NoteState.DROPPED):
            pairs += ["callback", ""]  # the PDF link is not needed any more: drop it
        with translate_redis_errors():
            moved, found = self._transition(
                keys=[
                    self._keys.note(connection_id, note_id),
                    self._keys.parked_notes(),
                    self._keys.unsettled_notes(),
                    self._keys.failed_notes(),
                    self._keys.waiting_note_links(),
                ],
                args=[
                    ",".join(sorted(s.value for s in allowed)),
                    to.value,
                    f"{connection_id}/{note_id}",
                    int(utcnow().timestamp()),
                    int(DONE_TTL.total_seconds()),
                    _due(WATCH_NEW),
                    _due(WATCH_TAKEN_UP),
                    _due(FILE_URL_LIFETIME),
                    *pairs,
                ],
            )
        state = as_bytes(found).decode()
        return bool(moved), NoteState(state) if state else None

    def add_attempt(self, connection_id: str, note_id: str) -> int:
        with translate_redis_errors():
            return int(self._redis.hincrby(self._keys.note(connection_id, note_id), "attempts"))

    def stalled(self, limit: int = 500) -> list[tuple[str, str]]:
        """Notes not settled (queued, fetching, posting) that nothing has moved by their due
        time (WATCH_NEW, WATCH_TAKEN_UP): their job may have been lost (the enqueue after the
        record failed; a retry Dramatiq could not queue while Redis was away; a delayed
        message left with a worker). Returned as (connection id, note id), and due again
        WATCH_NEW later, so each comes back once a period at most."""
        with translate_redis_errors():
            members: list[Any] = self._redis.zrangebyscore(
                self._keys.unsettled_notes(), "-inf", epoch_seconds(), 0, limit
            )
            if members:
                again = dict.fromkeys(members, _due(WATCH_NEW))
                self._redis.zadd(self._keys.unsettled_notes(), again, xx=True)
        pairs = [as_bytes(m).decode().partition("/") for m in members]
        return [(connection_id, note_id) for connection_id, _, note_id in pairs]

    def parked(self) -> list[NoteRecord]:
        return self.page(NoteState.PARKED).notes

    def failed(self) -> list[NoteRecord]:
        """The failed notes whose records are kept (DONE_TTL), oldest first."""
        return self.page(NoteState.FAILED).notes

    def page(self, state: NoteState, *, offset: int = 0, limit: int | None = None) -> NotesPage:
        """The parked or failed (`state`) notes, oldest first: `limit` of them (all without
        one) from the `offset`-th on, and how many there are in all. Only those are read."""
        index, since = self._index(state)
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)  # the count and the page agree
            pipe.zcount(index, since, "+inf")
            pipe.zrangebyscore(
                index, since, "+inf", start=offset, num=-1 if limit is None else limit
            )
            total, members = pipe.execute()
        found = []
        for member in members:
            connection_id, _, note_id = as_bytes(member).decode().partition("/")
            record = self.get(connection_id, note_id)
            if record is not None and record.state is state:
                found.append(record)
        return NotesPage(notes=found, total=int(total), offset=offset, limit=limit)

    def waiting(self, state: NoteState, note_id: str) -> NoteRecord | None:
        """The parked or failed (`state`) note with this id, its record read alone."""
        for member in self._waiting_members(state):
            connection_id, _, found_id = member.partition("/")
            if found_id == note_id:
                record = self.get(connection_id, note_id)
                return record if record is not None and record.state is state else None
        return None

    def per_connection(self, state: NoteState) -> Counter[str]:
        """How many parked or failed (`state`) notes each connection has, from the index alone
        (no record read)."""
        return Counter(m.partition("/")[0] for m in self._waiting_members(state))

    def _waiting_members(self, state: NoteState) -> list[str]:
        index, since = self._index(state)
        with translate_redis_errors():
            members: list[Any] = self._redis.zrangebyscore(index, since, "+inf")
        return [as_bytes(m).decode() for m in members]

    def _index(self, state: NoteState) -> tuple[str, float | str]:
        """The index of parked or failed notes, and the lowest score still listed: a failed
        record expires DONE_TTL after it failed, its index entry is left out from then on and
        removed by `forget_expired`."""
        if state is NoteState.PARKED:
            return self._keys.parked_notes(), "-inf"
        return self._keys.failed_notes(), epoch_seconds() - DONE_TTL.total_seconds()


@dataclass(frozen=True)
class NotesPage:
    notes: list[NoteRecord]
    total: int  # in the index, all pages
    offset: int
    limit: int | None

    def shown(self) -> dict[str, Any]:
        """What a listing answers: the notes as `NoteRecord.shown`, and where they stand."""
        return {
            "notes": [record.shown() for record in self.notes],
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
        }


def _due(after: timedelta) -> int:
    return int(epoch_seconds() + after.total_seconds())

"""The per-event delivery log: what happened to each Halaxy delivery event and each program.

Every event the bridge takes in gets a record: its id, connection, source, type, resource id
(and note id for a program), when it was received, each attempt a worker made at it (when,
which job, what it called, the outcome, the last HTTP status, how long), and its state now.
Ids and outcomes only: no patient detail, no URL, no message text a remote system wrote.

States (a closed set; `EventState`):

    queued ──▶ done | skipped-unchanged | skipped | parked | failed | dropped
       │ ▲ ▲
       │ │ └── held (its connection paused; back when resumed)
       ▼ │ (replay)
    retrying ──▶ dead          unrouted ──▶ routed (a Physitrack post no connection knew yet)

Layout in Redis, per connection (`Keys.event_log_*`; everything of a connection under one
prefix, so `erase_connection` can find all of it):

- `…:event:{digest}`: a hash, `record` (the `EventRecord`, written once) and `status` (the
  `EventStatus`, overwritten as the state moves); expires RETENTION after it was received.
- `…:attempts:{digest}`: a list of `Attempt`s, the last MAX_ATTEMPTS, expiring with the record.
- `…:index`: a sorted set whose members all score 0 and sort by text:
  `{received ms, 13 digits}:{connection id}:{digest}`. Newest first is a reverse range by
  text, a time range is a range of prefixes, and a member is a cursor that orders the same
  across connections (a search over all connections merges their indexes).

`{digest}` is a hash of the event id, so an event is found by id in one look per connection.
The index is trimmed on each write: entries older than RETENTION on the product clock, then
the oldest beyond the connection's bound, each with its record and attempts. A read leaves out
what is past RETENTION on the product clock even before the next write trims it.

Writes never fail what they log: losing a log record is better than a 5xx for a durable event
or a job retried for its log line. A failed write is logged (`event_log.not_recorded`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import redis
import structlog

from shared.infra.clock import utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import InvalidInput, UnreadableRecord
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.telemetry.attempts import Call

log = structlog.get_logger("halaxy_bridge.event_log")

RETENTION = timedelta(days=30)
MAX_ATTEMPTS = 20
DEFAULT_MAX_PER_CONNECTION = 10_000
# The log of Physitrack posts no connection took ("unrouted" is no connection's id: cn_...).
UNROUTED = "unrouted"

PAGE_DEFAULT = 50
PAGE_MAX = 200
# A search reads at most this many index entries before it answers with what it found and a
# cursor to go on from: a rare filter over a long log is paged, never one long read.
SCAN_BUDGET = 5_000
READ_BATCH = 200
CURSOR_PREFIX = "ev1."
CONNECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MEMBER = re.compile(r"([0-9]{13}):([A-Za-z0-9_-]{1,64}):([0-9a-f]{40})")
MAX_EVENT_ID = 512
DURATION = re.compile(r"(\d{1,6})([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
LATEST_MS = 10**13 - 1  # members carry 13 digits of milliseconds: until the year 2286


class EventState(StrEnum):
    QUEUED = "queued"  # taken in (or replayed, or sent back by a person): a worker will run it
    RETRYING = "retrying"  # the last attempt failed or was deferred; it will be tried again
    DONE = "done"  # written: a patient created or updated, a note posted, an invoice recorded
    SKIPPED_UNCHANGED = "skipped-unchanged"  # nothing to write: the platform already had it
    SKIPPED = "skipped"  # not written by the rules: archived, deceased, an enquiry, stale...
    DEAD = "dead"  # failed for good: its dead letter (`dead_letter_id`) can be replayed
    PARKED = "parked"  # a note's POST ended ambiguously: a person decides (notes resolve)
    FAILED = "failed"  # a note provably not written (PDF or Halaxy refused): a person decides
    DROPPED = "dropped"  # its connection was disabled or gone, or a person dropped the note
    UNROUTED = "unrouted"  # a Physitrack post no enabled connection knows the token of: kept
    ROUTED = "routed"  # an unrouted post taken by a connection since: its note is `note_id`
    HELD = "held"  # its connection is paused: its job is kept, and runs once it is resumed
    DEFERRED = "deferred"  # an upstream's circuit is open: its job waits, no retry counted


class EventSource(StrEnum):
    HALAXY_WEBHOOK = "halaxy-webhook"
    PROGRAM_CALLBACK = "program-callback"  # a connection's own program URL
    PHYSITRACK_WEBHOOK = "physitrack-webhook"  # the deployment's one Physitrack URL
    PROGRAM_POLL = "program-poll"  # the scheduler's read of Physitrack's events
    UNROUTED = "unrouted"  # a kept Physitrack post, routed once a connection knew its token
    CONSOLE = "console"  # a test event an operator sent from /ops


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"  # failed, will be retried
    DEFERRED = "deferred"  # rate limited, or a circuit open: run again after the wait
    DEAD = "dead"  # failed for good: dead-lettered
    DROPPED = "dropped"  # the connection was disabled or gone when the job ran
    REPLAYED = "replayed"  # a person queued its dead letter again
    RESOLVED = "resolved"  # a person settled its parked or failed note
    HELD = "held"  # not run: its connection is paused (run again once it is resumed)


@dataclass(frozen=True)
class EventRecord:
    """What an event was; written once, when it was taken in."""

    event_id: str
    connection_id: str
    source: EventSource
    event_type: str  # a Halaxy event name, or program-assigned / program-updated
    resource_id: str  # the Halaxy resource (for a program: the patient)
    received_at: datetime
    note_id: str = ""
    routed_from: str = ""  # the unrouted id a routed Physitrack post was kept under


@dataclass(frozen=True)
class EventStatus:
    state: EventState
    at: datetime
    dead_letter_id: str = ""
    detail: str = ""  # the last outcome reported (unchanged, skipped_inactive, unknown_token...)
    note_id: str = ""  # for a routed post: the note it became


@dataclass(frozen=True)
class Attempt:
    """One go at the event: a worker's job, or a person's replay or resolution."""

    at: datetime
    outcome: AttemptOutcome
    actor: str  # the job's actor (sync_patient, write_program_note_bulk...), or ops-replay...
    detail: str = ""  # what the job reported, or the error's class
    status_code: int | None = None  # of the last request that was answered
    seconds: float = 0.0
    calls: tuple[Call, ...] = ()
    calls_not_kept: int = 0
    message_id: str = ""


EVENT_RECORD = RecordCodec(EventRecord)
EVENT_STATUS = RecordCodec(EventStatus)
ATTEMPT = RecordCodec(Attempt)


@dataclass(frozen=True)
class EventView:
    """A record as read: what it was, its state, its attempts (oldest first)."""

    record: EventRecord
    status: EventStatus
    attempts: tuple[Attempt, ...] = ()
    position: str = ""  # its index member: the cursor that goes on after it

    def shown(self) -> dict[str, Any]:
        record, status = self.record, self.status
        return {
            "event_id": record.event_id,
            "connection_id": record.connection_id,
            "source": record.source.value,
            "event_type": record.event_type,
            "resource_id": record.resource_id,
            "note_id": record.note_id or status.note_id or None,
            "routed_from": record.routed_from or None,
            "received_at": _iso(record.received_at),
            "state": status.state.value,
            "state_at": _iso(status.at),
            "detail": status.detail or None,
            "dead_letter_id": status.dead_letter_id or None,
            "attempts": [_attempt_shown(a) for a in self.attempts],
        }


def _attempt_shown(attempt: Attempt) -> dict[str, Any]:
    data = asdict(attempt)
    data["at"] = _iso(attempt.at)
    data["outcome"] = attempt.outcome.value
    data["calls"] = [asdict(call) for call in attempt.calls]
    return data


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class EventPage:
    events: list[EventView]
    next_cursor: str | None
    scanned: int  # index entries read for this page
    complete: bool  # False: the scan budget ran out first; the cursor goes on from there

    def shown(self) -> dict[str, Any]:
        return {
            "events": [view.shown() for view in self.events],
            "next_cursor": self.next_cursor,
            "scanned": self.scanned,
            "complete": self.complete,
        }


def event_digest(event_id: str) -> str:
    return hashlib.sha256(event_id.encode()).hexdigest()[:40]


def _ms(moment: datetime) -> int:
    return min(max(int(moment.timestamp() * 1000), 0), LATEST_MS)


def index_member(record: EventRecord) -> str:
    digest = event_digest(record.event_id)
    return f"{_ms(record.received_at):013d}:{record.connection_id}:{digest}"


# Functions the intake script and the log's own scripts share. Each write is `pcall`ed: a log
# write that fails (out of memory, say) leaves what it logs alone.
LOG_FUNCTIONS = """
local function log_failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
-- Record one event, once: its record, its status, its place in its connection's index.
-- 1 if a write failed (the caller logs it), else 0.
local function log_event(index, connections, connection_id, record_key, ttl, record, status, member)
  local exists = redis.pcall('EXISTS', record_key)
  if log_failed(exists) then return 1 end
  if exists ~= 0 then return 0 end
  local failed = 0
  for _, reply in ipairs({
    redis.pcall('HSET', record_key, 'record', record, 'status', status),
    redis.pcall('EXPIRE', record_key, ttl),
    redis.pcall('ZADD', index, 0, member),
    redis.pcall('EXPIRE', index, ttl),
    redis.pcall('SADD', connections, connection_id),
  }) do
    if log_failed(reply) then failed = 1 end
  end
  return failed
end
-- Drop a connection's entries older than `oldest` (a member bound), then the oldest beyond
-- `max`, each with its record and attempts (the last 40 characters of a member: its digest).
local function trim_log(index, record_prefix, attempts_prefix, max, oldest)
  local gone = redis.pcall('ZRANGEBYLEX', index, '-', '(' .. oldest, 'LIMIT', 0, 1000)
  if log_failed(gone) then return end
  local count = redis.pcall('ZCARD', index)
  if log_failed(count) then return end
  local excess = math.min(count - #gone - tonumber(max), 1000)
  if excess > 0 then
    local more = redis.pcall('ZRANGE', index, #gone, #gone + excess - 1)
    if not log_failed(more) then
      for _, member in ipairs(more) do gone[#gone + 1] = member end
    end
  end
  for _, member in ipairs(gone) do
    local digest = string.sub(member, -40)
    redis.pcall('DEL', record_prefix .. digest, attempts_prefix .. digest)
    redis.pcall('ZREM', index, member)
  end
end
"""

# KEYS: the connection's index, the set of connections, the record. ARGV: connection id, ttl,
# record, status, member, then trim_log's record prefix, attempts prefix, max, oldest.
RECEIVE = (
    LOG_FUNCTIONS
    + """
local failed = log_event(KEYS[1], KEYS[2], ARGV[1], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
trim_log(KEYS[1], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return failed
"""
)

# KEYS: the record, its attempts. ARGV: the attempt ('' for none), the status ('' to leave it),
# how many attempts are kept. Nothing is written for a record that is not (any more) there:
# an event older than the log, a reconcile's job, a connection erased since.
ATTEMPTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class LoggedEvent:
    """One event's write, for a script that logs it (`log_event`'s record key and args)."""

    record_key: str
    record: bytes
    status: bytes
    member: str


@dataclass(frozen=True)
class Trim:
    """`trim_log`'s arguments for one connection."""

    index: str
    record_prefix: str
    attempts_prefix: str
    max_entries: int
    oldest: str


class EventLogLayout:
    """Where a connection's log lives and what a write of it passes to a script: the
    receiver's intake script logs Halaxy events through it, in its own round trip."""

    def __init__(self, keys: Keys, max_per_connection: int = DEFAULT_MAX_PER_CONNECTION) -> None:
        self.keys = keys
        self.max_per_connection = max_per_connection
        self.ttl_seconds = int(RETENTION.total_seconds())

    def logged(self, record: EventRecord, status: EventStatus | None = None) -> LoggedEvent:
        status = status or EventStatus(EventState.QUEUED, record.received_at)
        return LoggedEvent(
            record_key=self.keys.event_log_record(
                record.connection_id, event_digest(record.event_id)
            ),
            record=EVENT_RECORD.encode(record),
            status=EVENT_STATUS.encode(status),
            member=index_member(record),
        )

    def trim(self, connection_id: str, now: datetime) -> Trim:
        return Trim(
            index=self.keys.event_log_index(connection_id),
            record_prefix=self.keys.event_log_record(connection_id, ""),
            attempts_prefix=self.keys.event_log_attempts(connection_id, ""),
            max_entries=self.max_per_connection,
            oldest=f"{_ms(now - RETENTION):013d}",
        )


class EventLog:
    """Writes (each a single round trip, never raising) and searches of the event log."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        max_per_connection: int = DEFAULT_MAX_PER_CONNECTION,
        scan_budget: int = SCAN_BUDGET,
        read_batch: int = READ_BATCH,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._scan_budget = scan_budget
        self._read_batch = read_batch
        self.layout = EventLogLayout(keys, max_per_connection)
        self._receive = client.register_script(RECEIVE)
        self._attempted = client.register_script(ATTEMPTED)

    # Writes.

    def received(self, record: EventRecord, status: EventStatus | None = None) -> bool:
        """Log an event taken in (once: an event logged already keeps its record). False if
        the write failed (logged)."""
        try:
            logged = self.layout.logged(record, status)
            trim = self.layout.trim(record.connection_id, utcnow())
            with translate_redis_errors():
                failed = self._receive(
                    keys=[trim.index, self._keys.event_log_connections(), logged.record_key],
                    args=[
                        record.connection_id,
                        self.layout.ttl_seconds,
                        logged.record,
                        logged.status,
                        logged.member,
                        trim.record_prefix,
                        trim.attempts_prefix,
                        trim.max_entries,
                        trim.oldest,
                    ],
                )
        except Exception as exc:  # never the caller's failure
            not_recorded(type(exc).__name__, record.connection_id, record.event_id)
            return False
        if failed:
            not_recorded("RedisRefused", record.connection_id, record.event_id)
            return False
        return True

    def attempted(
        self,
        connection_id: str,
        event_id: str,
        attempt: Attempt | None,
        status: EventStatus | None,
    ) -> bool:
        """Add an attempt and/or move the state of a logged event. False if the event is not
        logged (older than the log, or never) or the write failed (logged)."""
        digest = event_digest(event_id)
        try:
            with translate_redis_errors():
                done = self._attempted(
                    keys=[
                        self._keys.event_log_record(connection_id, digest),
                        self._keys.event_log_attempts(connection_id, digest),
                    ],
                    args=[
                        b"" if attempt is None else ATTEMPT.encode(attempt),
                        b"" if status is None else EVENT_STATUS.encode(status),
                        MAX_ATTEMPTS,
                    ],
                )
        except Exception as exc:
            not_recorded(type(exc).__name__, connection_id, event_id)
            return False
        return bool(done)

    def erase_connection(self, connection_id: str) -> int:
        """Remove every record, attempt and index entry of the connection's log (a clinic's
        offboarding); how many keys were deleted."""
        prefix = _glob_escape(self._keys.event_log_of(connection_id))
        deleted = 0
        with translate_redis_errors():
            self._redis.srem(self._keys.event_log_connections(), connection_id)
            batch: list[bytes] = []
            for key in self._redis.scan_iter(match=prefix + "*", count=1000):
                batch.append(as_bytes(key))
                if len(batch) >= 500:
                    deleted += int(self._redis.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(self._redis.unlink(*batch))
        log.info("event_log.erased", connection_id=connection_id, keys_deleted=deleted)
        return deleted

    def erase_events(self, connection_id: str, event_ids: Sequence[str]) -> int:
        """Remove these events of one connection's log (or of `UNROUTED`): records, attempts
        and index entries; how many records were there."""
        erased = 0
        for event_id in event_ids:
            digest = event_digest(event_id)
            record_key = self._keys.event_log_record(connection_id, digest)
            with translate_redis_errors():
                raw = self._redis.hget(record_key, "record")
                pipe = self._redis.pipeline(transaction=True)
                if raw is not None:
                    try:
                        member = index_member(EVENT_RECORD.decode(as_bytes(raw)))
                        pipe.zrem(self._keys.event_log_index(connection_id), member)
                    except UnreadableRecord:
                        pass  # its index entry goes with the next trim
                pipe.delete(record_key, self._keys.event_log_attempts(connection_id, digest))
                pipe.execute()
            erased += raw is not None
        return erased

    # Reads.

    def get(self, event_id: str, connection_id: str | None = None) -> list[EventView]:
        """The event's records (one per connection that logged this id; usually one), with
        their attempts, newest first. Without a connection, every connection's log is looked
        at in one round trip."""
        connections = [connection_id] if connection_id else self.connections()
        digest = event_digest(event_id)
        refs = [(c, digest) for c in connections]
        views = [v for v in self._read(refs, with_attempts=True) if v is not None]
        views = [v for v in views if v.record.event_id == event_id]
        return sorted(views, key=lambda v: v.position, reverse=True)

    def connections(self) -> list[str]:
        """The connections with a log (and `UNROUTED`, once a post was kept)."""
        with translate_redis_errors():
            members = cast(set[bytes], self._redis.smembers(self._keys.event_log_connections()))
        return sorted(as_bytes(m).decode() for m in members)

    def search(self, query: EventQuery) -> EventPage:
        """The records that match, newest first, `query.limit` at most, and the cursor that
        goes on after the last one read (None when there is no more)."""
        if query.event_id is not None:
            return self._by_event_id(query)
        connections = [query.connection_id] if query.connection_id else self.connections()
        upper, lower = _bounds(query, utcnow())
        found: list[EventView] = []
        scanned = 0
        last = None
        entries = self._walk(connections, upper, lower)
        while True:
            chunk = _take(entries, min(self._read_batch, self._scan_budget - scanned))
            if not chunk:
                return self._page(found, None, scanned, complete=True)
            views = self._read([_ref(m) for m in chunk], with_attempts=False)
            for n, (member, view) in enumerate(zip(chunk, views, strict=True)):
                scanned += 1
                last = member
                if view is not None and query.matches(view):
                    found.append(view)
                    if len(found) == query.limit:
                        more = n + 1 < len(chunk) or next(entries, None) is not None
                        return self._page(found, member if more else None, scanned, complete=True)
            if scanned >= self._scan_budget:
                return self._page(found, last, scanned, complete=False)

    def _by_event_id(self, query: EventQuery) -> EventPage:
        assert query.event_id is not None
        views = [
            v
            for v in self.get(query.event_id, query.connection_id)
            if query.matches(v) and (query.cursor is None or v.position < query.cursor)
        ]
        shown = views[: query.limit]
        more = len(views) > query.limit
        cursor = encode_cursor(shown[-1].position) if more else None
        return EventPage(shown, cursor, len(views), complete=True)

    def _page(
        self, found: list[EventView], last: str | None, scanned: int, *, complete: bool
    ) -> EventPage:
        with_attempts = self._attempts_of(found)
        return EventPage(
            with_attempts, None if last is None else encode_cursor(last), scanned, complete
        )

    def _walk(self, connections: list[str], upper: str, lower: str) -> Iterator[str]:
        """The index entries of `connections` between the bounds, newest first: each index
        read in batches, merged by member (which orders the same in every index)."""
        buffers: dict[str, list[str]] = {c: [] for c in connections}
        after = dict.fromkeys(connections, upper)
        exhausted: set[str] = set()
        heap: list[tuple[_Newest, str]] = []
        while True:
            empty = [c for c in connections if not buffers[c] and c not in exhausted]
            if empty:
                pipe = self._redis.pipeline(transaction=False)
                for c in empty:
                    pipe.zrevrangebylex(
                        self._keys.event_log_index(c), after[c], lower, 0, self._read_batch
                    )
                with translate_redis_errors():
                    replies = pipe.execute()
                for c, members in zip(empty, replies, strict=True):
                    got = [as_bytes(m).decode() for m in members]
                    if len(got) < self._read_batch:
                        exhausted.add(c)
                    if got:
                        after[c] = "(" + got[-1]
                        buffers[c] = got[::-1]  # popped from the end: newest first
                        heapq.heappush(heap, (_Newest(buffers[c].pop()), c))
            if not heap:
                return
            # Every index not exhausted has its next entry in the heap: the top is the newest.
            member, connection = heapq.heappop(heap)
            yield str(member)
            if buffers[connection]:
                heapq.heappush(heap, (_Newest(buffers[connection].pop()), connection))
            # else: refilled at the top of the loop (unless exhausted) before the next pop

    def _read(
        self, refs: Sequence[tuple[str, str]], *, with_attempts: bool
    ) -> list[EventView | None]:
        if not refs:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for connection_id, digest in refs:
            pipe.hmget(self._keys.event_log_record(connection_id, digest), ["record", "status"])
            if with_attempts:
                pipe.lrange(self._keys.event_log_attempts(connection_id, digest), 0, -1)
        with translate_redis_errors():
            replies = pipe.execute()
        step = 2 if with_attempts else 1
        oldest = utcnow() - RETENTION
        views: list[EventView | None] = []
        for n in range(len(refs)):
            fields = replies[n * step]
            attempts = replies[n * step + 1] if with_attempts else []
            views.append(_view(fields, attempts, oldest))
        return views

    def _attempts_of(self, views: list[EventView]) -> list[EventView]:
        if not views:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for view in views:
            digest = event_digest(view.record.event_id)
            pipe.lrange(self._keys.event_log_attempts(view.record.connection_id, digest), 0, -1)
        with translate_redis_errors():
            replies = pipe.execute()
        return [
            replace(view, attempts=_attempts(raw)) for view, raw in zip(views, replies, strict=True)
        ]


class _Newest(str):
    """An index member that sorts first when it is the newest (a max-heap of members)."""

    def __lt__(self, other: object) -> bool:
        return str.__gt__(self, cast(str, other))


def _take(entries: Iterator[str], count: int) -> list[str]:
    taken: list[str] = []
    for member in entries:
        taken.append(member)
        if len(taken) >= count:
            break
    return taken


def _ref(member: str) -> tuple[str, str]:
    """(connection id, digest) of an index member."""
    _, connection_id, digest = member.split(":")
    return connection_id, digest


def _view(fields: list[Any], raw_attempts: list[Any], oldest: datetime) -> EventView | None:
    raw_record, raw_status = fields
    if raw_record is None or raw_status is None:
        return None  # trimmed or expired since the index was read
    try:
        record = EVENT_RECORD.decode(as_bytes(raw_record))
        status = EVENT_STATUS.decode(as_bytes(raw_status))
    except UnreadableRecord as exc:
        log.warning("event_log.unreadable", detail=str(exc))
        return None
    if record.received_at < oldest:
        return None  # past retention on the product clock; the next write trims it
    return EventView(record, status, _attempts(raw_attempts), index_member(record))


def _attempts(raw: list[Any]) -> tuple[Attempt, ...]:
    attempts = []
    for item in raw:
        try:
            attempts.append(ATTEMPT.decode(as_bytes(item)))
        except UnreadableRecord as exc:
            log.warning("event_log.unreadable", detail=str(exc))
    return tuple(attempts)


def not_recorded(error: str, connection_id: str, event_id: str) -> None:
    """Log an event log write that failed (the event itself went on)."""
    log.warning(
        "event_log.not_recorded", connection_id=connection_id, event_id=event_id, error=error
    )


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# Searching.


@dataclass(frozen=True)
class EventQuery:
    """A search of the log: every filter given must match."""

    connection_id: str | None = None
    state: EventState | None = None
    event_id: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = PAGE_DEFAULT
    cursor: str | None = None  # an index member: only records older than it

    def matches(self, view: EventView) -> bool:
        record = view.record
        return (
            (self.connection_id is None or record.connection_id == self.connection_id)
            and (self.state is None or view.status.state is self.state)
            and (self.event_id is None or record.event_id == self.event_id)
            and (self.resource_id is None or record.resource_id == self.resource_id)
            and (self.since is None or record.received_at >= self.since)
            and (self.until is None or record.received_at <= self.until)
        )

    def shown(self) -> dict[str, str]:
        """The query as the parameters that give it (for a link to the same search)."""
        shown = {
            "connection": self.connection_id,
            "state": None if self.state is None else self.state.value,
            "event": self.event_id,
            "resource": self.resource_id,
            "since": None if self.since is None else _iso(self.since),
            "until": None if self.until is None else _iso(self.until),
            "limit": None if self.limit == PAGE_DEFAULT else str(self.limit),
        }
        return {name: value for name, value in shown.items() if value is not None}


QUERY_PARAMETERS = ("connection", "state", "event", "resource", "since", "until", "limit", "cursor")


def parse_query(raw: Mapping[str, str | None], now: datetime) -> EventQuery:
    """A search from its parameters as text (a query string, CLI options); empty ones are
    left out. Raises `InvalidInput` naming every bad parameter (never echoing its value)."""
    problems: list[str] = []
    values = {k: v.strip() for k, v in raw.items() if v is not None and v.strip()}
    for name in sorted(set(values) - set(QUERY_PARAMETERS)):
        problems.append(f"{name[:40]!r} is not a search parameter ({', '.join(QUERY_PARAMETERS)})")

    def check(name: str, parse: Any) -> Any:
        if name not in values:
            return None
        try:
            return parse(values[name])
        except InvalidInput as exc:
            problems.append(f"{name}: {exc}")
            return None

    query = EventQuery(
        connection_id=check("connection", _connection_id),
        state=check("state", _state),
        event_id=check("event", _event_id),
        resource_id=check("resource", _resource_id),
        since=check("since", lambda t: parse_moment(t, now)),
        until=check("until", lambda t: parse_moment(t, now)),
        limit=check("limit", _limit) or PAGE_DEFAULT,
        cursor=check("cursor", decode_cursor),
    )
    if query.since is not None and query.until is not None and query.since > query.until:
        problems.append("since: is after until")
    if problems:
        raise InvalidInput("the event search is invalid", problems)
    return query


def parse_moment(text: str, now: datetime) -> datetime:
    """An ISO 8601 time with its offset, or a duration back from now: 30m, 24h, 7d."""
    text = text.strip()
    match = DURATION.fullmatch(text)
    if match:
        try:
            return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise InvalidInput("reaches back too far; give an ISO 8601 time") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "must be an ISO 8601 time (2026-11-21T09:00:00Z) or a duration like 30m, 24h, 7d"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput("must carry a timezone, e.g. 2026-11-21T09:00:00Z")
    try:
        moment.astimezone(UTC).timestamp()
    except (OverflowError, ValueError, OSError):
        raise InvalidInput("is out of range") from None
    return moment.astimezone(UTC)


def _connection_id(text: str) -> str:
    if not CONNECTION_ID.fullmatch(text):
        raise InvalidInput("not a connection id (letters, digits, '_' or '-')")
    return text


def _state(text: str) -> EventState:
    try:
        return EventState(text)
    except ValueError:
        raise InvalidInput(f"one of {', '.join(s.value for s in EventState)}") from None


def _event_id(text: str) -> str:
    if len(text) > MAX_EVENT_ID or not text.isprintable():
        raise InvalidInput(f"an event id is printable text of at most {MAX_EVENT_ID} characters")
    return text


def _resource_id(text: str) -> str:
    if not RESOURCE_ID.fullmatch(text):
        raise InvalidInput("not a Halaxy resource id (letters, digits, '-', '.')")
    return text


def _limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= PAGE_MAX:
        raise InvalidInput(f"a whole number from 1 to {PAGE_MAX}")
    return int(text)


def encode_cursor(member: str) -> str:
    return CURSOR_PREFIX + base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> str:
    """The index member a cursor stands for; `InvalidInput` for anything else."""
    refused = InvalidInput("not a cursor this search gave (copy next_cursor as it is)")
    if not text.startswith(CURSOR_PREFIX) or len(text) > 200:
        raise refused
    body = text[len(CURSOR_PREFIX) :]
    if not body.isascii() or not re.fullmatch(r"[A-Za-z0-9_-]*", body):
        raise refused
    try:
        member = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    if not MEMBER.fullmatch(member) or encode_cursor(member) != text:
        raise refused
    return member


def _bounds(query: EventQuery, now: datetime) -> tuple[str, str]:
    """The index range a search reads, as ZREVRANGEBYLEX bounds: (upper, lower)."""
    lower_moment = now - RETENTION
    if query.since is not None and query.since > lower_moment:
        lower_moment = query.since
    lower = f"[{_ms(lower_moment):013d}"
    upper = "+"
    if query.until is not None:
        upper = f"({min(_ms(query.until) + 1, LATEST_MS):013d}"
    if query.cursor is not None and (upper == "+" or query.cursor < upper[1:]):
        upper = "(" + query.cursor
    return upper, lower

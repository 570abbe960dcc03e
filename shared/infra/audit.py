"""The audit trail: an append-only Redis stream of writes to outside systems and ops actions.

Each entry: time (the stream id), who, what, connection, resource ids, outcome. Ids only,
never patient details. Entries older than the retention (a year by default) are trimmed as new
ones arrive.

The entries form a hash chain, so an edited or removed entry shows (`AuditTrail.verify`):
each carries its sequence number (`seq`), the hash of the entry before it (`prev`) and its own
`hash`, over `prev`, `seq`, its stream id and its fields (`chain_hash`). They are computed in
the same Lua script that appends the entry, so concurrent writers (every worker, the receiver,
the CLI) cannot fork the chain. Beside the stream a chain head (`Keys.audit_head`) keeps the
newest entry's seq, hash and id, so removing the newest entries shows too, and the last entry
the retention trimmed (`floor_seq`, `floor_hash`), so the trimmed start is not taken for a
removal. Entries written before the chain was kept have no hash: they are reported as before
the chain, not as broken.

What it proves: nobody edited, removed or inserted an entry without rewriting every entry
after it and the head. Anyone who can write to Redis can do that, so the chain is anchored
outside Redis by `audit export` (JSON lines with the hashes) into a SIEM: a rewritten chain no
longer matches the hashes exported before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

import redis
import structlog
from pydantic import Field, TypeAdapter, ValidationError

from shared.infra.clock import utcnow
from shared.infra.codec import RecordCodec
from shared.infra.config import Settings
from shared.infra.errors import BridgeError, InvalidInput
from shared.infra.store import Keys, as_bytes, translate_redis_errors

DEFAULT_RETENTION = timedelta(days=365)
WORKER = "worker"

# Who acts, as a person names themselves (`--by`, `"by"`): any name, on one line. Control
# characters (C0, DEL, C1) and the Unicode line and paragraph separators are refused: each
# can start a new line in a log viewer or an export.
Actor = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"),
]
_ACTOR = TypeAdapter(Actor)


def checked_actor(name: str, given_as: str) -> str:
    """`name` if it can stand as who acts in the trail; else `InvalidInput` naming `given_as`
    (the option or field it came from), without echoing it."""
    try:
        return _ACTOR.validate_python(name)
    except ValidationError:
        raise InvalidInput(f"{given_as}: a name of 1 to 100 characters on one line") from None


log = structlog.get_logger("halaxy_bridge.audit")


@dataclass(frozen=True)
class AuditFields:
    """What one stream entry holds; its time is the stream id."""

    actor: str = ""
    action: str = ""
    connection_id: str = ""
    resource_ids: str = ""
    outcome: str = ""


AUDIT_FIELDS = RecordCodec(AuditFields)

# The chain's own fields, after an entry's fields; absent from entries older than the chain.
CHAIN_FIELDS = ("seq", "prev", "hash")
GENESIS = "0" * 40  # the `prev` of the chain's first entry
CHAIN_VERSION = "hb-audit-1"  # the first part hashed: names this way of hashing


@dataclass(frozen=True)
class StoredAuditFields(AuditFields):
    """An entry as the stream holds it: its fields and its link in the chain (none when it
    was written before the chain was kept)."""

    seq: int | None = None
    prev: str = ""
    hash: str = ""


STORED_AUDIT_FIELDS = RecordCodec(StoredAuditFields)


@dataclass(frozen=True)
class ChainHead:
    """`Keys.audit_head`, written by `APPEND`: the newest entry's seq, hash and stream id, and
    the last entry the retention trimmed (0 and "" while none was)."""

    seq: int = 0
    hash: str = ""
    id: str = ""
    floor_seq: int = 0
    floor_hash: str = ""


CHAIN_HEAD = RecordCodec(ChainHead)

# An entry's stream id is its time on the bridge's clock, not on Redis's (XADD's `*`): the
# retention and `--since` compare that clock with the ids, and a Redis whose clock differs
# from the bridge's must not trim entries as soon as they are written, or hide them. Ids must
# grow, so a writer whose clock is behind the stream's newest id takes that id's millisecond
# and the next sequence number in it. The id is worked out here, not left to XADD, because
# the entry's hash covers it; it follows the stream's last generated id (XINFO), which a
# deleted newest entry does not lower, so an XDEL can never make the next append fail.
#
# The hash is SHA-1 because `redis.sha1hex` is the one hash a Redis script has, and the chain
# must be computed inside the script that appends, atomically, for every writer at once. What
# the chain needs is second-preimage resistance (an edited entry cannot be made to keep its
# hash), which SHA-1 still has; its known weakness is collisions, which need the attacker to
# write both colliding entries beforehand, and every entry's fields are the bridge's own (ids,
# action names, checked actor names). Anyone who can write to Redis can rewrite the chain
# anyway: the anchor against that is the export to a SIEM, not the hash function.
#
# What is hashed: `CHAIN_VERSION`, prev, seq, the id, then each field name and value in the
# order stored, each as `<byte length>:<bytes>` joined by ",", so no two entries hash the
# same text (`chain_hash` is the same in Python, for `verify` and for a SIEM).
#
# fakeredis (the in-process stand-in `demo` runs on where no Redis answers) has no
# `redis.sha1hex`: there the entry is appended without a chain, as before this change. Every
# Redis server has it.
#
# KEYS: the trail, its chain head. ARGV: now (ms), the oldest time kept (ms), then
# field/value pairs. Returns the new entry's id.
APPEND = (
    """
local ms = tonumber(ARGV[1])
local last_ms, last_seq = -1, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local a, b = string.match(info[i + 1], '^(%d+)-(%d+)$')
      last_ms, last_seq = tonumber(a), tonumber(b)
    end
  end
end
local id
if ms > last_ms then
  id = string.format('%d-0', ms)
else
  id = string.format('%d-%d', last_ms, last_seq + 1)
end
if not redis.sha1hex then
  return redis.call('XADD', KEYS[1], 'MINID', ARGV[2], id, unpack(ARGV, 3))
end
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = tostring((tonumber(head[1]) or 0) + 1)
local prev = head[2] or '"""
    + GENESIS
    + """'
local parts = {'"""
    + CHAIN_VERSION
    + """', prev, seq, id}
for i = 3, #ARGV do parts[#parts + 1] = ARGV[i] end
for i = 1, #parts do parts[i] = #parts[i] .. ':' .. parts[i] end
local hash = redis.sha1hex(table.concat(parts, ','))
if tonumber(ARGV[2]) > 0 then
  local doomed = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[2] .. '-0', '-', 'COUNT', 1)[1]
  if doomed then
    local fields = {}
    for i = 1, #doomed[2], 2 do fields[doomed[2][i]] = doomed[2][i + 1] end
    if fields['hash'] and fields['seq'] then
      redis.call('HSET', KEYS[2], 'floor_seq', fields['seq'], 'floor_hash', fields['hash'])
    end
  end
end
local command = {'XADD', KEYS[1], 'MINID', ARGV[2], id}
for i = 3, #ARGV do command[#command + 1] = ARGV[i] end
for _, part in ipairs({'seq', seq, 'prev', prev, 'hash', hash}) do
  command[#command + 1] = part
end
redis.call(unpack(command))
redis.call('HSET', KEYS[2], 'seq', seq, 'hash', hash, 'id', id)
return id
"""
)


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: str
    actor: str
    action: str
    connection_id: str
    resource_ids: str
    outcome: str
    seq: int | None = None  # its place in the chain; None: written before the chain was kept
    prev: str = ""
    hash: str = ""


PAGE = 1000  # entries read at a time by `verify` and `export`
VERIFY_ATTEMPTS = 3


class AuditTrail:
    def __init__(
        self, client: redis.Redis, keys: Keys, retention: timedelta = DEFAULT_RETENTION
    ) -> None:
        self._redis = client
        self.key = keys.audit()
        self.head_key = keys.audit_head()
        self.retention = retention
        self.append = client.register_script(APPEND)

    def record(
        self,
        *,
        actor: str,
        action: str,
        connection_id: str = "",
        resource_ids: str = "",
        outcome: str = "ok",
    ) -> None:
        """Append an entry. What it records has already happened (a note is in Halaxy, a secret
        was rotated) and must not be reported as failed, or undone by a retry, because Redis
        missed the entry: a failure to record is logged at ERROR with the same fields."""
        entry = PendingEntry(self, actor, action, connection_id, resource_ids, outcome)
        try:
            with translate_redis_errors():
                entry.add_to(self._redis)
        except BridgeError as exc:
            entry.settle(exc)

    def pending_write(
        self, action: str, connection_id: str, resource_ids: str, outcome: str = "ok"
    ) -> PendingEntry:
        """A worker's write to an outside system, to be recorded in the round trip of other
        commands (`PendingEntry.add_to` a pipeline, then `settle` with its reply)."""
        return PendingEntry(self, WORKER, action, connection_id, resource_ids, outcome)

    def record_write(
        self, action: str, connection_id: str, resource_ids: str, outcome: str = "ok"
    ) -> None:
        """A worker's write to an outside system."""
        self.record(
            actor=WORKER,
            action=action,
            connection_id=connection_id,
            resource_ids=resource_ids,
            outcome=outcome,
        )

    def entries(
        self,
        *,
        connection_id: str | None = None,
        since: datetime | None = None,
        action: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """The newest `limit` entries matching the filters, oldest first."""
        start = _start(since)
        found: list[AuditEntry] = []
        end = "+"
        with translate_redis_errors():
            while len(found) < limit:
                page = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self._redis.xrevrange(self.key, max=end, min=start, count=500),
                )
                for stream_id, fields in page:
                    entry = _entry(as_bytes(stream_id).decode(), fields)
                    if (connection_id is None or entry.connection_id == connection_id) and (
                        action is None or entry.action.startswith(action)
                    ):
                        found.append(entry)
                        if len(found) == limit:
                            break
                if len(page) < 500:
                    break
                end = "(" + as_bytes(page[-1][0]).decode()
        return found[::-1]

    def export(self, since: datetime | None = None) -> Iterator[AuditEntry]:
        """Every entry from `since` (all kept by default), oldest first, with its link in the
        chain, read a page at a time."""
        start = _start(since)
        while True:
            with translate_redis_errors():
                page = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self._redis.xrange(self.key, min=start, max="+", count=PAGE),
                )
            for stream_id, fields in page:
                yield _entry(as_bytes(stream_id).decode(), fields)
            if len(page) < PAGE:
                return
            start = "(" + as_bytes(page[-1][0]).decode()

    def verify(self) -> ChainReport:
        """Walk the whole trail, oldest first, and report whether its chain holds, or the first
        entry where it breaks. Run beside the writers: each page is read with the chain head in
        one transaction, and a walk that the retention overtook (it trimmed entries the walk
        had still to read) is started again."""
        report = ChainReport(holds=True)
        for _ in range(VERIFY_ATTEMPTS):
            report, floor_moved = self._walk()
            if report.holds or not floor_moved:
                return report
        return report

    def _walk(self) -> tuple[ChainReport, bool]:
        start = "-"
        walk: ChainWalk | None = None
        first_floor = 0
        while True:
            page, head = self._page_and_head(start)
            if walk is None:
                first_floor = head.floor_seq if head is not None else 0
                walk = ChainWalk(head)
            for stream_id, fields in page:
                if not walk.add(stream_id, fields):
                    break
            if walk.broken or len(page) < PAGE:
                floor_moved = (head.floor_seq if head is not None else 0) != first_floor
                return walk.finish(head), floor_moved
            start = "(" + page[-1][0]

    def _page_and_head(
        self, start: str
    ) -> tuple[list[tuple[str, dict[bytes, bytes]]], ChainHead | None]:
        with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.xrange(self.key, min=start, max="+", count=PAGE)
            pipe.hgetall(self.head_key)
            page, raw_head = pipe.execute()
        entries = [(as_bytes(stream_id).decode(), fields) for stream_id, fields in page]
        if not raw_head:
            return entries, None
        return entries, CHAIN_HEAD.load(
            {as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw_head.items()}
        )


def chain_hash(
    prev: str | bytes, seq: str | bytes, stream_id: str | bytes, fields: list[tuple[Any, Any]]
) -> str:
    """An entry's hash, as `APPEND` computes it: SHA-1 (see there why) of `CHAIN_VERSION`,
    `prev`, `seq`, the stream id, then each field's name and value in the order stored (the
    chain's own fields left out), each as `<byte length>:<bytes>`, joined by ","."""
    parts = [CHAIN_VERSION, prev, seq, stream_id, *(part for pair in fields for part in pair)]
    text = b",".join(b"%d:%s" % (len(raw), raw) for raw in map(_raw, parts))
    return hashlib.sha1(text).hexdigest()  # noqa: S324  (APPEND says why SHA-1)


def _raw(part: str | bytes) -> bytes:
    return part if isinstance(part, bytes) else str(part).encode()


@dataclass(frozen=True)
class ChainReport:
    """What `AuditTrail.verify` found. `broken_id` names the first broken entry; it is None
    when what is missing is the newest entries (nothing is left to name)."""

    holds: bool
    entries: int = 0  # entries of the chain checked
    before_chain: int = 0  # entries written before the chain was kept (no hash)
    first_seq: int | None = None  # where the chain kept starts
    first_id: str | None = None
    last_seq: int | None = None
    last_id: str | None = None
    trimmed_through: int = 0  # the retention trimmed the chain up to this seq (0: none)
    broken_seq: int | None = None
    broken_id: str | None = None
    problem: str | None = None

    def describe(self) -> str:
        if not self.holds:
            where = " ".join(
                part
                for part in (
                    f"entry {self.broken_id}" if self.broken_id else "",
                    f"(seq {self.broken_seq})" if self.broken_seq is not None else "",
                )
                if part
            )
            return f"The audit chain is broken at {where or 'its head'}: {self.problem}."
        lines = []
        if self.entries:
            lines.append(
                f"The audit chain holds: {self.entries} entries, from seq {self.first_seq} "
                f"({self.first_id}) to seq {self.last_seq} ({self.last_id})."
            )
        else:
            lines.append("The audit chain holds: it has no entry yet.")
        if self.trimmed_through:
            lines.append(
                f"The retention trimmed seq 1 to {self.trimmed_through}: "
                f"the chain kept starts at seq {self.first_seq}."
            )
        if self.before_chain:
            lines.append(
                f"{self.before_chain} older entries were written before the chain was kept "
                "(they have no hash)."
            )
        return "\n".join(lines)


@dataclass
class _Link:
    seq: int
    hash: str
    id: str


class ChainWalk:
    """Checks a trail's entries in stream order, one at a time (`add`), against the chain
    head read with the first of them (for where the retention left the chain's start); then
    `finish` with the head read with the last of them."""

    def __init__(self, head: ChainHead | None) -> None:
        self.floor_seq = head.floor_seq if head is not None else 0
        self.floor_hash = head.floor_hash if head is not None else ""
        self.before_chain = 0
        self.entries = 0
        self.first: _Link | None = None
        self.last: _Link | None = None
        self.broken: tuple[str | None, int | None, str] | None = None

    def add(self, stream_id: str, fields: dict[bytes, bytes]) -> bool:
        """Check one entry; False once the chain is broken (the rest need not be read)."""
        raw_seq, raw_prev, raw_hash = (fields.get(name.encode()) for name in CHAIN_FIELDS)
        if raw_hash is None:
            if self.last is None:
                self.before_chain += 1
                return True
            return self._break(stream_id, None, "it has no hash: it was added by hand")
        try:
            seq, prev, stored = int(raw_seq or b""), (raw_prev or b"").decode(), raw_hash.decode()
        except (ValueError, UnicodeDecodeError):
            return self._break(stream_id, None, "its chain fields are unreadable")
        content = [(k, v) for k, v in fields.items() if k.decode("latin-1") not in CHAIN_FIELDS]
        if chain_hash(raw_prev or b"", raw_seq or b"", stream_id, content) != stored:
            return self._break(stream_id, seq, "its fields do not match its hash: it was edited")
        if self.last is None:
            problem = self._start_problem(seq, prev)
            if problem:
                return self._break(stream_id, seq, problem)
        elif seq != self.last.seq + 1 or prev != self.last.hash:
            return self._break(stream_id, seq, self._gap(seq))
        link = _Link(seq, stored, stream_id)
        self.first = self.first or link
        self.last = link
        self.entries += 1
        return True

    def _start_problem(self, seq: int, prev: str) -> str | None:
        if seq == 1 and prev == GENESIS:
            return None
        if self.floor_seq and seq == self.floor_seq + 1 and prev == self.floor_hash:
            return None  # the entries before it were trimmed by the retention
        expected = self.floor_seq + 1
        if seq > expected:
            return f"{_removed(expected, seq - 1)}, and not by the retention"
        return "it does not follow the last entry the retention trimmed"

    def _gap(self, seq: int) -> str:
        assert self.last is not None
        if seq > self.last.seq + 1:
            return _removed(self.last.seq + 1, seq - 1)
        return f"it does not follow the entry before it (seq {self.last.seq}, {self.last.id})"

    def _break(self, stream_id: str | None, seq: int | None, problem: str) -> bool:
        self.broken = (stream_id, seq, problem)
        return False

    def finish(self, head: ChainHead | None) -> ChainReport:
        """The report, given the chain head read with the last entries."""
        if self.broken is None:
            self._check_end(head)
        first, last = self.first, self.last
        kept = ChainReport(
            holds=self.broken is None,
            entries=self.entries,
            before_chain=self.before_chain,
            first_seq=first.seq if first else None,
            first_id=first.id if first else None,
            last_seq=last.seq if last else None,
            last_id=last.id if last else None,
            trimmed_through=self.floor_seq if first and first.seq > 1 else 0,
        )
        if self.broken is None:
            return kept
        broken_id, broken_seq, problem = self.broken
        return replace(kept, broken_id=broken_id, broken_seq=broken_seq, problem=problem)

    def _check_end(self, head: ChainHead | None) -> None:
        last = self.last
        if head is None:
            if last is not None:
                self._break(None, last.seq + 1, "the chain head is missing: it was deleted")
            return
        if last is None:
            self._break(
                None,
                self.floor_seq + 1,
                f"the newest entries were removed: the head is at seq {head.seq} ({head.id}) "
                "and no entry of the chain is left",
            )
        elif last.seq < head.seq:
            self._break(
                None,
                last.seq + 1,
                f"the newest entries were removed: seq {last.seq + 1} to {head.seq} "
                f"({head.id}) are missing; the last one left is seq {last.seq} ({last.id})",
            )
        elif (last.seq, last.hash) != (head.seq, head.hash):
            self._break(
                last.id,
                last.seq,
                f"the chain head says seq {head.seq} ({head.id}): entries were added by hand "
                "after it, or the head was edited",
            )


def _removed(first: int, last: int) -> str:
    if first == last:
        return f"the entry before it (seq {first}) was removed"
    return f"the {last - first + 1} entries before it (seq {first} to {last}) were removed"


@dataclass(frozen=True)
class PendingEntry:
    """An audit entry on its way: `AuditTrail.record` sends it alone; `add_to` a pipeline and
    `settle` with the reply sends it with other commands, with the same guarantees."""

    trail: AuditTrail
    actor: str
    action: str
    connection_id: str
    resource_ids: str
    outcome: str

    def add_to(self, client: redis.Redis) -> None:
        """Send the entry through `client`, or queue it there when it is a pipeline."""
        now = utcnow()
        stored = AuditFields(
            self.actor, self.action, self.connection_id, self.resource_ids, self.outcome
        )
        pairs = [part for item in AUDIT_FIELDS.encode_fields(stored).items() for part in item]
        # MINID exact, not approximate: nothing past the retention is ever shown.
        self.trail.append(
            keys=[self.trail.key, self.trail.head_key],
            args=[_ms(now), _ms(now - self.trail.retention), *pairs],
            client=client,
        )

    def settle(self, reply: object) -> None:
        """Log the entry as not recorded when `reply` is the error Redis gave instead. An error
        that is not Redis being unavailable is raised, as `AuditTrail.record` would."""
        if not isinstance(reply, Exception):
            return
        try:
            with translate_redis_errors():
                raise reply
        except BridgeError:
            log.error(
                "audit.not_recorded",
                actor=self.actor,
                action=self.action,
                connection_id=self.connection_id,
                resource_ids=self.resource_ids,
                outcome=self.outcome,
            )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def audit_trail(client: redis.Redis, settings: Settings) -> AuditTrail:
    return AuditTrail(
        client, Keys(settings.redis_namespace), timedelta(days=settings.audit_retention_days)
    )


def _start(since: datetime | None) -> str:
    return "-" if since is None else str(max(0, int(since.timestamp() * 1000)))


def _entry(stream_id: str, fields: dict[bytes, bytes]) -> AuditEntry:
    stored = STORED_AUDIT_FIELDS.load(
        {as_bytes(k).decode(): as_bytes(v).decode() for k, v in fields.items()}
    )
    moment = datetime.fromtimestamp(int(stream_id.split("-")[0]) / 1000, UTC)
    return AuditEntry(id=stream_id, at=moment.isoformat(timespec="milliseconds"), **asdict(stored))

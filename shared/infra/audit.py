"""The audit trail: an append-only Redis stream of writes to outside systems and ops actions.

Each entry: time (the stream id), who, what, connection, resource ids, outcome. Ids only,
never patient details. Entries older than the retention (a year by default) are trimmed as new
ones arrive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, cast

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

# An entry's stream id is its time on the bridge's clock, not on Redis's (XADD's `*`): the
# retention and `--since` compare that clock with the ids, and a Redis whose clock differs
# from the bridge's must not trim entries as soon as they are written, or hide them. Ids must
# grow, so a writer whose clock is behind the newest entry's takes that entry's millisecond.
# KEYS: the trail. ARGV: now (ms), the oldest time kept (ms), then field/value pairs.
APPEND = """
local ms = tonumber(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if newest then
  local newest_ms = tonumber(string.match(newest[1], '^(%d+)'))
  if newest_ms > ms then ms = newest_ms end
end
return redis.call('XADD', KEYS[1], 'MINID', ARGV[2], string.format('%d-*', ms), unpack(ARGV, 3))
"""


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: str
    actor: str
    action: str
    connection_id: str
    resource_ids: str
    outcome: str


class AuditTrail:
    def __init__(
        self, client: redis.Redis, keys: Keys, retention: timedelta = DEFAULT_RETENTION
    ) -> None:
        self._redis = client
        self.key = keys.audit()
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
        start = "-" if since is None else str(max(0, int(since.timestamp() * 1000)))
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
            keys=[self.trail.key],
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


def _entry(stream_id: str, fields: dict[bytes, bytes]) -> AuditEntry:
    stored = AUDIT_FIELDS.load(
        {as_bytes(k).decode(): as_bytes(v).decode() for k, v in fields.items()}
    )
    moment = datetime.fromtimestamp(int(stream_id.split("-")[0]) / 1000, UTC)
    return AuditEntry(id=stream_id, at=moment.isoformat(timespec="milliseconds"), **asdict(stored))

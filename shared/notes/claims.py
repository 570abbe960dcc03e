"""One note per Physitrack program, whether its webhook, the events poll or both bring it.

Neither names the other's ids: the webhook has no program id or access code, the event no
`date_iso` (therapy-platforms.md 2.1, 2.2). Both carry the practitioner, the patient, the
program's name, whether it was assigned or updated, and a moment: the webhook's `date_iso`,
the event's `created`, not documented to be the same instant. So each program (connection,
practitioner, patient, name, kind) keeps the moments its notes were claimed at, in a Redis
sorted set, and an arrival within `WINDOW` of one takes that note's id; one further away is a
new assignment or update, with a note of its own. One Lua step looks and claims, so a webhook
and a poll arriving together get one id. A second update of one program within `WINDOW` of
the first adds no note (the first stands: Halaxy cannot update a note, halaxy-api.md 6).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis

from shared.connections.model import Connection
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import (
    ProgramCallback,
    note_id_for,
    practitioner_identity,
    program_identity,
    program_note_id,
)
from shared.notes.outbox import DONE_TTL
from shared.platforms import PlatformKind

WINDOW = timedelta(minutes=10)

# KEYS: the program's claimed moments. ARGV: moment (s), window (s), new note id, ttl (s).
CLAIM = """
local moment = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local near = redis.call('ZRANGEBYSCORE', KEYS[1], moment - window, moment + window, 'LIMIT', 0, 1)
if near[1] then return near[1] end
redis.call('ZADD', KEYS[1], moment, ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ARGV[3]
"""


class ProgramClaims:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._keys = keys
        self._claim = client.register_script(CLAIM)

    def note_id(
        self,
        connection_id: str,
        practitioner: str,
        patient_id: str,
        program_name: str,
        moment: datetime,
        updated: bool,
    ) -> str:
        """The id of this program's note: one claimed within `WINDOW` of `moment`, else a new
        one, claimed now. Kept as long as the outbox remembers notes (DONE_TTL)."""
        identity = program_identity(connection_id, practitioner, patient_id, program_name, updated)
        new = program_note_id(
            connection_id, practitioner, patient_id, program_name, moment, updated
        )
        with translate_redis_errors():
            found = self._claim(
                keys=[self._keys.program_moments(connection_id, identity)],
                args=[
                    int(moment.timestamp()),
                    int(WINDOW.total_seconds()),
                    new,
                    int(DONE_TTL.total_seconds()),
                ],
            )
        return as_bytes(found).decode()

    def for_post(self, connection: Connection, callback: ProgramCallback) -> str:
        """The note id of a Physitrack PDF-webhook post to `connection`."""
        return self.note_id(
            connection.id,
            practitioner_identity(connection, callback.token),
            callback.patient_id,
            callback.name,
            callback.date_iso,
            callback.updated,
        )

    def for_callback(
        self, connection: Connection, callback: ProgramCallback, webhook_id: str | None
    ) -> str:
        """The note id of a post to a connection's own callback URL: a signed post's
        `webhook-id`; a Physitrack post's, as the events poll gives the same program; else
        `note_id_for`."""
        if webhook_id is None and connection.platform is PlatformKind.PHYSITRACK:
            return self.for_post(connection, callback)
        return note_id_for(connection.id, callback, webhook_id)

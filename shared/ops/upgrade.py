"""Bringing what an earlier version stored up to what this one expects: run by the
scheduler's leader until it has gone through once.

Every step can run twice, or be cut short and run again, without harm:
- notes not settled (queued, fetching, posting) that an earlier version did not watch go on
  the unsettled-notes watch, due at once: if their job was lost, the watch queues it again;
- failed notes an earlier version did not index are indexed, so `notes failed` lists them
  (their PDF link was erased when they failed: they can be dropped, not retried);
- parked notes' PDF links are set to be erased when they expire (a day from now at the
  latest, for a record that does not say when);
- the practitioner token an earlier version kept in clear in each note record is removed;
- practitioner maps an earlier version kept in clear in connection records are sealed;
- the reverse patient-link hashes an earlier version kept (platform id to Halaxy id) and no
  longer reads are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.connections.store import ConnectionStore
from shared.infra.clock import epoch_seconds
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import FILE_URL_LIFETIME
from shared.notes.outbox import DONE_TTL

# Raise it when a step is added: stores that went through an earlier list go through again.
VERSION = 1
SCAN_COUNT = 1000

# KEYS: note record, unsettled index, failed index, waiting notes' link expiries. ARGV: index
# member, now, DONE_TTL (s), the latest a link can expire.
MEND_NOTE = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('HDEL', KEYS[1], 'practitioner_token')
if state == 'parked' or state == 'failed' then
  local expires = redis.call('HGET', KEYS[1], 'link_expires_at') or ARGV[4]
  redis.call('ZADD', KEYS[4], 'NX', expires, ARGV[1])
end
if state == 'queued' or state == 'fetching' or state == 'posting' then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
elseif state == 'failed' then
  -- indexed by when it failed, as a failed note is: its record expires DONE_TTL after that
  local ttl = redis.call('TTL', KEYS[1])
  local failed_at = tonumber(ARGV[2])
  if ttl > 0 then failed_at = failed_at - (tonumber(ARGV[3]) - ttl) end
  redis.call('ZADD', KEYS[3], 'NX', failed_at, ARGV[1])
end
return state or ''
"""


@dataclass(frozen=True)
class Upgraded:
    notes: int
    connections_sealed: int
    keys_deleted: int


def upgrade_stored_data(
    client: redis.Redis, keys: Keys, connections: ConnectionStore
) -> Upgraded | None:
    """Go through the stored data once; None if it went through this version's steps before."""
    with translate_redis_errors():
        done = client.get(keys.stored_data_version())
    if done is not None and int(as_bytes(done)) >= VERSION:
        return None
    mend = client.register_script(MEND_NOTE)
    prefix = keys.note_prefix()
    notes, cursor = 0, None
    now = int(epoch_seconds())
    kept = int(DONE_TTL.total_seconds())
    latest_link_expiry = now + int(FILE_URL_LIFETIME.total_seconds())
    with translate_redis_errors():
        while cursor != 0:
            # One pipeline per page of the scan: a store of many notes goes through quickly.
            cursor, found = client.scan(cursor or 0, match=f"{prefix}*", count=SCAN_COUNT)
            pipe = client.pipeline(transaction=False)
            for key in found:
                connection_id, _, note_id = as_bytes(key).decode()[len(prefix) :].partition(":")
                mend(
                    keys=[
                        key,
                        keys.unsettled_notes(),
                        keys.failed_notes(),
                        keys.waiting_note_links(),
                    ],
                    args=[f"{connection_id}/{note_id}", now, kept, latest_link_expiry],
                    client=pipe,
                )
            pipe.execute()
            notes += len(found)
    with translate_redis_errors():
        unread = list(client.scan_iter(match=f"{keys.namespace}:patient-links-rev:*"))
        if unread:
            client.unlink(*unread)
    sealed = sum(connections.seal_plain_practitioners(c.id) for c in connections.list())
    with translate_redis_errors():
        client.set(keys.stored_data_version(), VERSION)
    return Upgraded(notes=notes, connections_sealed=sealed, keys_deleted=len(unread))

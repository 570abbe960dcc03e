"""Program posts no connection could take: kept, shown to ops, and written once someone maps
their token.

Physitrack posts every program of every clinic to one endpoint and names the practitioner only
by `token` (therapy-platforms.md 2.1); it retries a failed delivery once and cannot be asked
again (2.2). So a post whose token no enabled connection knows (a practitioner not added yet, a
connection disabled) is answered 200 and kept here, sealed whole with Fernet (its `file_url` is
a 24-hour capability to the PDF, its token signs in as the practitioner). The scheduler routes
each one as soon as a connection knows its token (`route_unrouted`); one nobody claims is
dropped after `KEPT_FOR`, and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import cast

import redis
import structlog
from cryptography.fernet import InvalidToken, MultiFernet

from shared.connections.model import Connection, token_hint
from shared.infra.clock import utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import BridgeError
from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.notes.callback import ProgramCallback, is_link_expired

log = structlog.get_logger("halaxy_bridge.notes")

KEPT_FOR = timedelta(days=30)
LISTED_AT_MOST = 1000


class UnroutedReason(StrEnum):
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105  (a reason, not a secret): no connection has a practitioner with this token
    CONNECTION_DISABLED = "connection_disabled"  # the token's connection is disabled


@dataclass(frozen=True)
class UnroutedProgram:
    id: str
    received_at: datetime
    reason: UnroutedReason
    callback: ProgramCallback

    def shown(self) -> dict[str, object]:
        """What ops see: ids and times, never the token, the link or the program's name."""
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "reason": self.reason.value,
            "token_ends_with": token_hint(self.callback.token),
            "patient_id": self.callback.patient_id,
            "kind": "updated" if self.callback.updated else "assigned",
            "link_expires_at": self.callback.link_expires_at().isoformat(),
        }


UNROUTED = RecordCodec(UnroutedProgram)


def unrouted_id(callback: ProgramCallback) -> str:
    """The same post twice (Physitrack's retry) is kept once."""
    material = "|".join(
        [
            callback.token,
            callback.patient_id,
            callback.name,
            callback.date_iso.isoformat(),
            "updated" if callback.updated else "assigned",
        ]
    )
    return "up_" + hashlib.sha256(material.encode()).hexdigest()[:24]


class UnroutedPrograms:
    def __init__(self, client: redis.Redis, keys: Keys, fernet: MultiFernet) -> None:
        self._redis = client
        self._keys = keys
        self._fernet = fernet

    def keep(self, callback: ProgramCallback, reason: UnroutedReason) -> str:
        """Keep the post (once); its id. Raises `StoreUnavailable` if Redis did not take it."""
        now = utcnow()
        program = UnroutedProgram(unrouted_id(callback), now, reason, callback)
        sealed = self._fernet.encrypt(UNROUTED.encode(program))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(self._keys.unrouted_programs(), program.id, sealed)
        pipe.zadd(self._keys.unrouted_program_times(), {program.id: now.timestamp()}, nx=True)
        pipe.sadd(self._token_index(callback.token), program.id)
        with translate_redis_errors():
            pipe.execute()
        return program.id

    def count(self) -> int:
        return count_unrouted(self._redis, self._keys)

    def oldest_first(self, limit: int = LISTED_AT_MOST) -> list[UnroutedProgram]:
        """The oldest first, at most `limit`; one that cannot be opened is left out (logged)."""
        with translate_redis_errors():
            members = self._redis.zrange(self._keys.unrouted_program_times(), 0, limit - 1)
        return self._open_all([as_bytes(m).decode() for m in cast(list[bytes], members)])

    def of_tokens(self, tokens: Sequence[str]) -> list[UnroutedProgram]:
        """The kept posts naming any of `tokens` (an index per token: no other is opened)."""
        if not tokens:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for token in tokens:
            pipe.smembers(self._token_index(token))
        with translate_redis_errors():
            found = pipe.execute()
        ids = sorted({as_bytes(i).decode() for members in found for i in members})
        return self._open_all(ids)

    def remove(self, program: UnroutedProgram) -> None:
        self._remove(program.id, program.callback.token)

    def forget_old(self, now: datetime) -> int:
        """Drop the posts kept longer than `KEPT_FOR`; how many."""
        cutoff = (now - KEPT_FOR).timestamp()
        with translate_redis_errors():
            old = self._redis.zrangebyscore(
                self._keys.unrouted_program_times(), "-inf", cutoff, start=0, num=500
            )
        ids = [as_bytes(i).decode() for i in cast(list[bytes], old)]
        opened = {program.id: program for program in self._open_all(ids)}
        for program_id in ids:
            program = opened.get(program_id)
            self._remove(program_id, None if program is None else program.callback.token)
        if ids:
            log.warning("programs.unrouted_dropped", count=len(ids), kept_days=KEPT_FOR.days)
        return len(ids)

    def _remove(self, program_id: str, token: str | None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._keys.unrouted_programs(), program_id)
        pipe.zrem(self._keys.unrouted_program_times(), program_id)
        if token is not None:
            pipe.srem(self._token_index(token), program_id)
        with translate_redis_errors():
            pipe.execute()

    def _open_all(self, ids: list[str]) -> list[UnroutedProgram]:
        if not ids:
            return []
        with translate_redis_errors():
            raws = self._redis.hmget(self._keys.unrouted_programs(), ids)
        found = []
        for program_id, raw in zip(ids, raws, strict=True):
            program = self._open(program_id, raw)
            if program is not None:
                found.append(program)
        return sorted(found, key=lambda p: p.received_at)

    def _open(self, program_id: str, raw: bytes | str | None) -> UnroutedProgram | None:
        if raw is None:
            return None
        try:
            return UNROUTED.decode(self._fernet.decrypt(as_bytes(raw)))
        except (InvalidToken, BridgeError):
            log.warning("programs.unrouted_unreadable", unrouted_id=program_id)
            return None

    def _token_index(self, token: str) -> str:
        """The set of kept posts naming one token, keyed by the token's digest."""
        return self._keys.unrouted_programs_of(hashlib.sha256(token.encode()).hexdigest()[:32])


def count_unrouted(client: redis.Redis, keys: Keys) -> int:
    """How many posts are kept unrouted (no secret needed to count them)."""
    with translate_redis_errors():
        return int(client.zcard(keys.unrouted_program_times()))


def owner_of(connections: Sequence[Connection], token: str) -> Connection | None:
    """The connection one of whose practitioners has this token (tokens are unique across
    the deployment: `roster.token_refusal`)."""
    for connection in connections:
        if connection.knows_token(token):
            return connection
    return None


Accept = Callable[[Connection, ProgramCallback], object]


def route_unrouted(
    unrouted: UnroutedPrograms, connections: Sequence[Connection], accept: Accept, now: datetime
) -> int:
    """Hand each kept post whose token an enabled connection now knows to `accept` (which
    records and queues its note), then forget it; how many were routed. A post whose PDF link
    has expired stays kept: its practitioner's first events poll reaches back to it and fetches
    a fresh PDF (`forget_polled`). A failure leaves the post kept for the next try."""
    owners = {
        token: connection
        for connection in connections
        if connection.enabled
        for token in connection.tokens()
    }
    routed = 0
    # One look at the kept posts of every known token a tick, however many connections.
    for program in unrouted.of_tokens(list(owners)):
        if is_link_expired(program.callback, now):
            continue
        owner = owners[program.callback.token]
        accept(owner, program.callback)
        unrouted.remove(program)
        routed += 1
        log.info("programs.unrouted_routed", unrouted_id=program.id, connection_id=owner.id)
    return routed


def forget_polled(unrouted: UnroutedPrograms, token: str, now: datetime) -> int:
    """After a practitioner's events poll: their kept posts whose links expired were read
    from the events (the poll's first floor reached back to them); forget them."""
    gone = [p for p in unrouted.of_tokens([token]) if is_link_expired(p.callback, now)]
    for program in gone:
        unrouted.remove(program)
    return len(gone)

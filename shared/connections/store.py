"""Connections in Redis, with every secret sealed by Fernet under BRIDGE_SECRET_KEY.

A connection is one JSON document under its own key; each secret field holds a Fernet token
instead of the secret, so a dump of Redis carries no secret in clear. The practitioner map is
sealed whole: its keys are the platform's practitioner tokens, and a token can sign in as its
practitioner (therapy-platforms.md 1.7: the PTSSO API's `data[token]`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from cryptography.fernet import InvalidToken, MultiFernet
from pydantic import SecretStr

from shared.connections.model import Connection
from shared.connections.practitioner import Practitioner
from shared.infra.codec import RecordCodec
from shared.infra.errors import ConfigError, InvalidInput, Transient
from shared.infra.store import Keys, as_bytes, translate_redis_errors

SEALED_FIELDS = (
    "halaxy_client_secret",
    "platform_api_key",
    "platform_pms_key",
    "webhook_secret",
    "program_api_key",
    "signing_secret",
)
SEALED_RETIRED_FIELDS = ("retired_webhook_secret", "retired_program_api_key")
CONNECTION = RecordCodec(Connection)
PRACTITIONER = RecordCodec(Practitioner)


OPENED_KEPT = 512  # decrypted connections kept per process
CREATE_ATTEMPTS = 20  # reads of every connection before a checked write gives up on a busy store

Refusal = Callable[[Connection, Sequence[Connection]], None]
"""Called with a connection about to be stored and every other stored one; raises to refuse.
The store calls it inside the same atomic step as the write (see `create`)."""


class ConnectionChangedMeanwhile(InvalidInput):
    """The stored connection is not the one a change was made to."""


class ConnectionStore:
    """Create, read and update connections; the only code that touches their keys."""

    def __init__(self, client: redis.Redis, keys: Keys, fernet: MultiFernet) -> None:
        self.redis = client
        self.keys = keys
        self._fernet = fernet
        # Every webhook and job reads its connection: decrypt each stored version once. Keyed
        # by the whole record, so a rotation or a disable is seen at the next read.
        self.open_record = functools.lru_cache(maxsize=OPENED_KEPT)(self._decrypt_record)

    def create(self, connection: Connection, refuse: Refusal | None = None) -> None:
        """Store a new connection. `refuse` sees every stored connection first, and its check
        and the write are one atomic step: the index and every record are WATCHed, so of two
        adds at once (or an add and a rotation) the later one reads everything again and is
        checked against the earlier, instead of both being stored."""
        record = self._seal(connection)
        for _ in range(CREATE_ATTEMPTS):
            with translate_redis_errors(), self.redis.pipeline() as pipe:
                try:
                    stored = self._watch_all(pipe)
                    if refuse is not None:
                        refuse(connection, stored)
                    pipe.multi()
                    pipe.set(self.keys.connection(connection.id), record, nx=True)
                    pipe.sadd(self.keys.connection_index(), connection.id)
                    created, _ = pipe.execute()
                except redis.WatchError:
                    continue
            if not created:
                raise ValueError(f"connection {connection.id} exists already")
            return
        raise Transient("connections kept changing while this one was checked; try again")

    def save(self, connection: Connection) -> None:
        with translate_redis_errors():
            self.redis.set(self.keys.connection(connection.id), self._seal(connection), xx=True)

    def replace(self, current: Connection, new: Connection, refuse: Refusal | None = None) -> None:
        """Store `new` in place of `current`, only if the stored record still is `current`:
        of two people rotating at once, each must not be shown a secret only one stored.
        `refuse`, if given, sees every other stored connection, atomically as in `create`: when
        another connection changed meanwhile (two adds of one practitioner token to two
        connections at once), it is read and checked again, so the later is refused by name."""
        key = self.keys.connection(current.id)
        changed = ConnectionChangedMeanwhile(
            f"connection {current.id} changed since it was read; look at it again and retry"
        )
        for _ in range(CREATE_ATTEMPTS):
            with translate_redis_errors(), self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    record = pipe.get(key)
                    if record is None or self.open_record(as_bytes(record)) != current:
                        raise changed
                    if refuse is not None:
                        others = [c for c in self._watch_all(pipe) if c.id != current.id]
                        refuse(new, others)
                    pipe.multi()
                    pipe.set(key, self._seal(new), xx=True)
                    pipe.execute()
                    return
                except redis.WatchError:
                    if refuse is None:  # only this record was watched: it changed
                        raise changed from None
        raise Transient("connections kept changing while this one was checked; try again")

    def delete(self, current: Connection) -> None:
        """Erase the connection's record and its place in the index (offboarding), only if
        the stored record still is `current`: a connection enabled again meanwhile is kept."""
        key = self.keys.connection(current.id)
        with translate_redis_errors(), self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                record = pipe.get(key)
                if record is None or self.open_record(as_bytes(record)) != current:
                    raise ConnectionChangedMeanwhile(
                        f"connection {current.id} changed since it was read; look at it again "
                        "and retry"
                    )
                pipe.multi()
                pipe.delete(key)
                pipe.srem(self.keys.connection_index(), current.id)
                pipe.execute()
            except redis.WatchError:
                raise ConnectionChangedMeanwhile(
                    f"connection {current.id} changed since it was read; look at it again and retry"
                ) from None

    def seal_plain_practitioners(self, connection_id: str) -> bool:
        """Seal a practitioner map an earlier version stored in clear. False if there was
        none, or if the record changed meanwhile (whoever saved it sealed it)."""
        with translate_redis_errors():
            record = self.redis.get(self.keys.connection(connection_id))
        if record is None or not orjson.loads(record).get("practitioners"):
            return False
        connection = self.open_record(as_bytes(record))
        try:
            self.replace(connection, connection)
        except ConnectionChangedMeanwhile:
            return False
        return True

    def get(self, connection_id: str) -> Connection | None:
        with translate_redis_errors():
            record = self.redis.get(self.keys.connection(connection_id))
        return None if record is None else self.open_record(as_bytes(record))

    def list(self) -> list[Connection]:
        with translate_redis_errors():
            members = self.redis.smembers(self.keys.connection_index())
            ids = sorted(as_bytes(m).decode() for m in members)
            records = self.redis.mget([self.keys.connection(i) for i in ids]) if ids else []
        found = [self.open_record(as_bytes(r)) for r in records if r is not None]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def _watch_all(self, pipe: Any) -> tuple[Connection, ...]:
        """Every stored connection, read by `pipe` in its immediate mode after WATCHing the
        index and then each record, so a change to any of them fails the EXEC that follows."""
        index = self.keys.connection_index()
        pipe.watch(index)
        ids = sorted(as_bytes(m).decode() for m in pipe.smembers(index))
        if not ids:
            return ()
        keys = [self.keys.connection(i) for i in ids]
        pipe.watch(*keys)
        return tuple(self.open_record(as_bytes(r)) for r in pipe.mget(keys) if r is not None)

    def _seal(self, connection: Connection) -> bytes:
        data: dict[str, Any] = CONNECTION.dump(connection)
        for name in SEALED_FIELDS:
            secret = getattr(connection, name)
            data[name] = None if secret is None else self._encrypt(secret)
        for name in SEALED_RETIRED_FIELDS:
            retired = getattr(connection, name)
            if retired is not None:
                data[name]["value"] = self._encrypt(retired.value)
        if connection.physitrack_practitioners:
            # Sealed whole: tokens, keys and PMS keys all sign in as the practitioner.
            records = [
                {
                    **PRACTITIONER.dump(p),
                    "token": p.token.get_secret_value(),
                    "api_key": p.api_key.get_secret_value(),
                    "pms_key": None if p.pms_key is None else p.pms_key.get_secret_value(),
                }
                for p in connection.physitrack_practitioners
            ]
            data["physitrack_practitioners"] = []
            data["physitrack_practitioners_sealed"] = self._fernet.encrypt(
                orjson.dumps(records)
            ).decode()
        if connection.practitioners:
            # Beside an empty plain map, not in its place: a process of the version before
            # (a rolling deploy, a rollback) still opens the record, with the default author.
            sealed = self._fernet.encrypt(orjson.dumps(connection.practitioners))
            data["practitioners"] = {}
            data["practitioners_sealed"] = sealed.decode()
        return orjson.dumps(data)

    def _decrypt_record(self, record: bytes) -> Connection:
        data = orjson.loads(record)
        for name in SEALED_FIELDS:
            if data.get(name) is not None:
                data[name] = self._decrypt(data[name])
        for name in SEALED_RETIRED_FIELDS:
            if data.get(name) is not None:
                data[name]["value"] = self._decrypt(data[name]["value"])
        sealed_records = data.pop("physitrack_practitioners_sealed", None)
        if sealed_records is not None:
            data["physitrack_practitioners"] = orjson.loads(self._decrypt(sealed_records))
        sealed = data.pop("practitioners_sealed", None)
        if sealed is not None:  # else a plain map, as a record saved before holds it
            data["practitioners"] = orjson.loads(self._decrypt(sealed))
        return CONNECTION.load(data)

    def _encrypt(self, secret: SecretStr) -> str:
        return self._fernet.encrypt(secret.get_secret_value().encode()).decode()

    def _decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a connection secret cannot be decrypted with BRIDGE_SECRET_KEY: the key "
                "changed; put the old key after the new one (comma-separated)"
            ) from None

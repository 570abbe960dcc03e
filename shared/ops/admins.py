"""Named admin credentials: who may use the admin API, `/ops` and `/metrics`, and in which role.

A person (or a program such as Prometheus) is added with a name, a role and an expiry, and
gets a random token, shown once (`AdminStore.add`). Redis keeps only the token's SHA-256
digest, beside the name, role, expiry and who added it; a revoked or expired credential stays
listed (and is refused saying so) until its name is given a new token.

Roles, each allowing what the one before it does: `viewer` reads (`/ops`, status, dead-letter
and note listings, the event log, `/metrics`), `operator` acts on the work (replay and purge
dead letters, resolve notes, pause, resume, disable and enable a connection, send a test
event), `admin` changes connections, practitioners and secrets (add, edit, rotate, offboard).

`BRIDGE_ADMIN_TOKEN` stays as the bootstrap admin: role admin, named `bootstrap-admin` in the
audit trail, checked without Redis. Once named admins exist it may be unset.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import redis
from pydantic import SecretStr

from shared.infra.audit import WORKER, AuditTrail, checked_actor
from shared.infra.clock import utcnow
from shared.infra.codec import RecordCodec
from shared.infra.errors import BridgeError, InvalidInput, Permanent
from shared.infra.store import Keys, as_bytes, translate_redis_errors


class Role(StrEnum):
    """What a credential may do; each role allows everything the ones before it do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, required: Role) -> bool:
        """This role may do what `required` may."""
        order = list(Role)
        return order.index(self) >= order.index(required)


BOOTSTRAP_NAME = "bootstrap-admin"  # who BRIDGE_ADMIN_TOKEN is, in the audit trail
# Names that already stand for something in the audit trail: the bootstrap admin, the
# workers, and the shared actor every admin API call was recorded as before named admins.
RESERVED_NAMES = frozenset({BOOTSTRAP_NAME, WORKER, "admin-api"})
DEFAULT_LIFETIME = timedelta(days=90)
MAX_LIFETIME = timedelta(days=366)
# Lets a secret scanner (and a person) tell an admin token apart.
TOKEN_PREFIX = "hbadm_"  # noqa: S105  (a prefix, not a secret)
# Short, one line, no spaces or case to confuse two names: it is who acts in the trail.
NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
LIFETIME = re.compile(r"([0-9]{1,6})([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
TRANSACTION_ATTEMPTS = 20


class AdminState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class AdminRecord:
    """One named credential, as `Keys.admins` keeps it (by name)."""

    name: str
    role: Role
    token_digest: str  # SHA-256 of the token, hex; the token itself is never stored
    added_at: datetime
    added_by: str
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def state(self, now: datetime) -> AdminState:
        if self.revoked_at is not None:
            return AdminState.REVOKED
        if self.expires_at <= now:
            return AdminState.EXPIRED
        return AdminState.ACTIVE

    def shown(self, now: datetime) -> dict[str, Any]:
        """What `admins list` shows: everything but the digest."""
        return {
            "name": self.name,
            "role": self.role.value,
            "state": self.state(now).value,
            "added_at": self.added_at.isoformat(),
            "added_by": self.added_by,
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "revoked_by": self.revoked_by,
        }


ADMIN_RECORD = RecordCodec(AdminRecord)


@dataclass(frozen=True)
class Admin:
    """Who is calling, authenticated: a named admin or the bootstrap admin."""

    name: str
    role: Role


class Refusal(StrEnum):
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"


class CredentialRefused(BridgeError):
    """A token that is not (or no longer) an admin's. `name` is whose it was, when known (a
    revoked or expired credential), for the audit trail; the token is never in the message."""

    def __init__(self, reason: Refusal, name: str | None = None, when: datetime | None = None):
        self.reason = reason
        self.name = name
        if reason is Refusal.UNKNOWN or name is None:
            message = "unknown admin token"
        elif reason is Refusal.REVOKED:
            message = f"the admin token of {name} was revoked"
        else:
            at = "" if when is None else f" at {when.isoformat(timespec='seconds')}"
            message = f"the admin token of {name} expired{at}"
        super().__init__(message)


class UnknownAdmin(Permanent):
    """No admin has that name."""


def token_digest(token: str) -> str:
    """The stored form of a token. A token is 256 random bits (`new_token`), so a fast hash is
    the right one: a slow password hash guards guessable secrets, and this one cannot be
    guessed; every admin request computes it once."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def checked_name(name: str) -> str:
    """`name` if it can be an admin's; else `InvalidInput` saying what a name may be."""
    if not NAME.fullmatch(name):
        raise InvalidInput(
            "NAME: 1 to 64 characters: lower-case letters, digits, '.', '_', '-' or '@', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise InvalidInput(f"NAME: {name} is reserved; choose another")
    return name


def parse_lifetime(text: str) -> timedelta:
    """`--expires-in`: a whole number of minutes, hours or days (30m, 12h, 90d), up to 366d."""
    match = LIFETIME.fullmatch(text.strip())
    if not match:
        raise InvalidInput("expires-in: a duration like 90d, 12h or 30m")
    lifetime = timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise InvalidInput(f"expires-in: more than 0 and at most {MAX_LIFETIME.days}d")
    return lifetime


class AdminStore:
    """Adds, lists, revokes and authenticates admins; the only code that touches their keys."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        audit: AuditTrail,
        bootstrap_token: SecretStr | None = None,
    ) -> None:
        self._redis = client
        self._key = keys.admins()
        self._tokens = keys.admin_tokens()
        self._audit = audit
        self._bootstrap = bootstrap_token

    @property
    def has_bootstrap(self) -> bool:
        return self._bootstrap is not None

    def add(self, name: str, role: Role, expires_at: datetime, by: str) -> str:
        """Add `name` with `role` until `expires_at` and answer its token: the only time it is
        seen. A name whose credential is still active is refused; a revoked or expired one is
        given the new token (its old one stays refused, as revoked)."""
        name, by, role = checked_name(name), checked_actor(by, "by"), Role(role)
        now = utcnow()
        if not now < expires_at <= now + MAX_LIFETIME:
            raise InvalidInput(f"the expiry must be in the next {MAX_LIFETIME.days} days")
        token = new_token()
        record = AdminRecord(name, role, token_digest(token), now, by, expires_at)

        def added(current: AdminRecord | None) -> AdminRecord:
            if current is not None and current.state(now) is AdminState.ACTIVE:
                raise InvalidInput(f"{name} already has an active token; revoke it first")
            return record

        self._write(name, added, index_token=True)
        self._audit.record(
            actor=by,
            action="admin.added",
            resource_ids=f"admin:{name} role:{role.value} "
            f"expires:{expires_at.isoformat(timespec='seconds')}",
        )
        return token

    def revoke(self, name: str, by: str) -> AdminRecord:
        """Revoke `name`'s credential: its token is refused from now on."""
        by = checked_actor(by, "by")
        now = utcnow()

        def revoked(current: AdminRecord | None) -> AdminRecord:
            if current is None:
                raise UnknownAdmin(f"no admin is named {name}")
            if current.revoked_at is not None:
                raise InvalidInput(f"{name} was already revoked")
            return replace(current, revoked_at=now, revoked_by=by)

        record = self._write(name, revoked)
        self._audit.record(actor=by, action="admin.revoked", resource_ids=f"admin:{name}")
        return record

    def list(self) -> list[AdminRecord]:
        with translate_redis_errors():
            raw = self._redis.hgetall(self._key)
        return sorted((ADMIN_RECORD.decode(as_bytes(v)) for v in raw.values()), key=_by_name)

    def authenticate(self, presented: str) -> Admin:
        """Who `presented` is; `CredentialRefused` saying why not (unknown, revoked, expired).
        The bootstrap token is checked first, in constant time and without Redis."""
        if self._bootstrap is not None and hmac.compare_digest(
            presented.encode(), self._bootstrap.get_secret_value().encode()
        ):
            return Admin(BOOTSTRAP_NAME, Role.ADMIN)
        digest = token_digest(presented)
        with translate_redis_errors():
            name = self._redis.hget(self._tokens, digest)
            raw = None if name is None else self._redis.hget(self._key, name)
        if raw is None:
            raise CredentialRefused(Refusal.UNKNOWN)
        record = ADMIN_RECORD.decode(as_bytes(raw))
        if record.revoked_at is not None or not hmac.compare_digest(record.token_digest, digest):
            raise CredentialRefused(Refusal.REVOKED, record.name)  # or given a newer token
        if record.expires_at <= utcnow():
            raise CredentialRefused(Refusal.EXPIRED, record.name, record.expires_at)
        return Admin(record.name, record.role)

    def _write(
        self,
        name: str,
        change: Callable[[AdminRecord | None], AdminRecord],
        index_token: bool = False,
    ) -> AdminRecord:
        """`change(current record or None)` stored under `name` (with its token's digest in the
        index when `index_token`), checked and written in one atomic step (the hash is
        WATCHed): of two changes at once, the later sees the earlier."""
        for _ in range(TRANSACTION_ATTEMPTS):
            with translate_redis_errors(), self._redis.pipeline() as pipe:
                try:
                    pipe.watch(self._key)  # type: ignore[no-untyped-call]
                    raw = pipe.hget(self._key, name)
                    current = None if raw is None else ADMIN_RECORD.decode(as_bytes(raw))
                    record: AdminRecord = change(current)
                    pipe.multi()
                    pipe.hset(self._key, name, ADMIN_RECORD.encode(record))
                    if index_token:
                        pipe.hset(self._tokens, record.token_digest, name)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue
        raise InvalidInput(f"{name} kept changing meanwhile; try again")


def _by_name(record: AdminRecord) -> str:
    return record.name

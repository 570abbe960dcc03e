"""Adding, rotating and removing a connection's Physitrack practitioners.

The CLI (`halaxy-bridge practitioners …`) and the admin API both call these. A practitioner's
Physitrack token names them in every program post to the one deployment-wide endpoint
(therapy-platforms.md 2.1), so a token is unique across the deployment: the check and the write
are one atomic step (`ConnectionStore.replace` with a refusal). Each key is checked against
Physitrack when it is added or rotated (an authenticated read of the practitioner's clients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.connections import model as c
from shared.connections.model import Connection
from shared.connections.practitioner import Practitioner, practitioner_account
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.errors import AlreadyConnected, BridgeError, InvalidInput, Transient
from shared.infra.validation import validated
from shared.platforms import PlatformAccount, PlatformKind
from shared.platforms.physitrack import Physitrack

PlatformKeyVerifier = Callable[[PlatformAccount], None]
"""Checks a platform account's credentials; raises a `BridgeError` if they are refused."""


def physitrack_key_verifier(http: httpx.Client, user_agent: str) -> PlatformKeyVerifier:
    """The check the CLI and the admin API make: an authenticated read of one page of the
    practitioner's clients (a 401 refuses the key; no answer, a 5xx or a 429 is `Transient`)."""

    def verify(account: PlatformAccount) -> None:
        Physitrack(account, http, user_agent).verify()

    return verify


def _secret(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    stripped = value.get_secret_value().strip()
    if not stripped or not stripped.isprintable():
        raise ValueError("must be a non-empty printable value")
    return SecretStr(stripped)


class PractitionerRequest(BaseModel):
    """A practitioner to add: the CLI flags, or the admin API body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr = Field(description="the practitioner's Physitrack token", max_length=256)
    halaxy_practitioner: str = Field(description="their Halaxy practice role, PR-…")
    api_key: SecretStr = Field(description="their Physitrack API key (X-Api-Key)", max_length=512)
    pms_name: str | None = Field(
        default=None, description="without PT Direct: the PMS name (X-Api-PMS-Name)"
    )
    pms_key: SecretStr | None = Field(
        default=None, description="without PT Direct: the PMS key (X-Api-PMS-Key)", max_length=512
    )
    default: bool = Field(
        default=False, description="patients with no practitioner of their own go here"
    )
    verify: bool = Field(default=True, description="check the key against Physitrack first")

    @field_validator("token", "api_key", "pms_key")
    @classmethod
    def _stripped(cls, value: SecretStr | None) -> SecretStr | None:
        return _secret(value)


class PractitionerRotation(BaseModel):
    """New credentials for a practitioner (any of them), or a change of default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = Field(default=None, description="a new token", max_length=256)
    api_key: SecretStr | None = Field(default=None, description="a new API key", max_length=512)
    pms_key: SecretStr | None = Field(
        default=None, description="a new PMS key (PMS mode only)", max_length=512
    )
    default: bool | None = Field(default=None, description="make them the default, or not")
    verify: bool = Field(default=True, description="check a new key against Physitrack first")

    @field_validator("token", "api_key", "pms_key")
    @classmethod
    def _stripped(cls, value: SecretStr | None) -> SecretStr | None:
        return _secret(value)

    def replaced(self) -> list[str]:
        names = [n for n in ("token", "api_key", "pms_key") if getattr(self, n) is not None]
        return names + (["default"] if self.default is not None else [])


def parse_practitioner(data: dict[str, Any]) -> PractitionerRequest:
    return validated(PractitionerRequest, data, "the practitioner is invalid")


def parse_practitioner_rotation(data: dict[str, Any]) -> PractitionerRotation:
    return validated(PractitionerRotation, data, "the practitioner rotation is invalid")


def new_practitioner(request: PractitionerRequest, now: datetime) -> Practitioner:
    if (request.pms_name is None) != (request.pms_key is None):
        raise InvalidInput("give both the PMS name and the PMS key, or neither")
    return Practitioner(
        halaxy_practitioner=c.practitioner_role(request.halaxy_practitioner, "Halaxy practitioner"),
        token=request.token,
        api_key=request.api_key,
        pms_name=None if request.pms_name is None else c.pms_name(request.pms_name),
        pms_key=(
            None
            if request.pms_key is None
            else SecretStr(c.pms_key(request.pms_key.get_secret_value()))
        ),
        default=request.default,
        added_at=now,
    )


def with_practitioner(
    connection: Connection, practitioner: Practitioner, now: datetime
) -> Connection:
    """The connection with `practitioner` added (or put in place of the one with its PR- id);
    a new default takes over from the old one. A token the connection's author map gives the
    same practitioner leaves the map: the record now names them (and authors their notes)."""
    if connection.platform is not PlatformKind.PHYSITRACK:
        raise InvalidInput("practitioners with their own accounts are for Physitrack connections")
    token = practitioner.token.get_secret_value()
    mapped = connection.practitioners.get(token)
    if mapped is not None and mapped != practitioner.halaxy_practitioner:
        raise InvalidInput(
            f"this connection's practitioner map gives this token to {mapped}: a token names "
            "one practitioner"
        )
    others = [
        p.model_copy(update={"default": False}) if practitioner.default else p
        for p in connection.physitrack_practitioners
        if p.halaxy_practitioner != practitioner.halaxy_practitioner
    ]
    return connection.model_copy(
        update={
            "physitrack_practitioners": (*others, practitioner),
            "practitioners": {t: r for t, r in connection.practitioners.items() if t != token},
            "updated_at": now,
        }
    )


def token_refusal(new: Connection, stored: Sequence[Connection]) -> None:
    """Refuses a practitioner token any other connection (enabled or not: a disabled one can
    come back) already knows, or one the connection holds twice: a program post names only
    its token, so it must name one practitioner of one connection."""
    tokens = new.tokens()
    if len(set(tokens)) != len(tokens):
        raise InvalidInput("two practitioners of this connection would have the same token")
    for other in stored:
        if other.id != new.id and any(other.knows_token(token) for token in tokens):
            raise AlreadyConnected(
                f"connection {other.id} ({other.name}) already has a practitioner with this "
                "Physitrack token: a token names one practitioner of one connection",
                other.id,
            )


def add_practitioner(
    store: ConnectionStore,
    verify: PlatformKeyVerifier,
    connection: Connection,
    request: PractitionerRequest,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Connection:
    practitioner = new_practitioner(request, now)
    if connection.practitioner(practitioner.halaxy_practitioner) is not None:
        raise InvalidInput(
            f"{practitioner.halaxy_practitioner} is a practitioner of this connection already: "
            "rotate their credentials instead (practitioners rotate)"
        )
    updated = with_practitioner(connection, practitioner, now)
    if request.verify:
        _verify(verify, updated, practitioner)
    store.replace(connection, updated, token_refusal)
    audit.record(
        actor=by,
        action="practitioner.added",
        connection_id=connection.id,
        resource_ids=practitioner.halaxy_practitioner,
    )
    return updated


def rotate_practitioner(
    store: ConnectionStore,
    verify: PlatformKeyVerifier,
    connection: Connection,
    halaxy_practitioner: str,
    request: PractitionerRotation,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Connection:
    current = _existing(connection, halaxy_practitioner)
    if not request.replaced():
        raise InvalidInput("say what to replace: --token, --api-key, --pms-key or --default")
    if request.pms_key is not None and current.pms_name is None:
        raise InvalidInput("this practitioner has no PMS name: a PMS key is for PT-less mode")
    changes: dict[str, Any] = {"rotated_at": now}
    for name in ("token", "api_key"):
        if getattr(request, name) is not None:
            changes[name] = getattr(request, name)
    if request.pms_key is not None:
        changes["pms_key"] = SecretStr(c.pms_key(request.pms_key.get_secret_value()))
    if request.default is not None:
        changes["default"] = request.default
    rotated = current.model_copy(update=changes)
    updated = with_practitioner(connection, rotated, now)
    if request.verify and (request.api_key or request.pms_key):
        _verify(verify, updated, rotated)
    store.replace(connection, updated, token_refusal if request.token else None)
    audit.record(
        actor=by,
        action="practitioner.rotated",
        connection_id=connection.id,
        resource_ids=f"{current.halaxy_practitioner} {' '.join(request.replaced())}",
    )
    return updated


def remove_practitioner(
    store: ConnectionStore,
    connection: Connection,
    halaxy_practitioner: str,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Connection:
    """Remove a practitioner: their posts are kept as unrouted from now on, and patients made
    in their account stay there (Physitrack has no delete endpoint, therapy-platforms.md 1.4)."""
    current = _existing(connection, halaxy_practitioner)
    updated = connection.model_copy(
        update={
            "physitrack_practitioners": tuple(
                p for p in connection.physitrack_practitioners if p is not current
            ),
            "updated_at": now,
        }
    )
    store.replace(connection, updated)
    audit.record(
        actor=by,
        action="practitioner.removed",
        connection_id=connection.id,
        resource_ids=current.halaxy_practitioner,
    )
    return updated


def practitioner_rows(connection: Connection) -> list[dict[str, Any]]:
    """What anyone with admin access may see of the practitioners: no secret."""
    return [
        {
            "halaxy_practitioner": p.halaxy_practitioner,
            "token_ends_with": c.token_hint(p.token.get_secret_value()),
            "auth": "pms" if p.pms_name else "api_key",
            "pms_name": p.pms_name,
            "default": p.default,
            "added_at": p.added_at.isoformat(),
            "rotated_at": None if p.rotated_at is None else p.rotated_at.isoformat(),
        }
        for p in sorted(connection.physitrack_practitioners, key=lambda p: p.halaxy_practitioner)
    ]


def _existing(connection: Connection, halaxy_practitioner: str) -> Practitioner:
    current = connection.practitioner(halaxy_practitioner.strip())
    if current is None:
        raise InvalidInput(
            f"connection {connection.id} has no practitioner {halaxy_practitioner.strip()!r}"
        )
    return current


def _verify(
    verify: PlatformKeyVerifier, connection: Connection, practitioner: Practitioner
) -> None:
    account = practitioner_account(practitioner, connection.platform, connection.platform_base_url)
    try:
        verify(account)
    except Transient as exc:
        raise Transient(
            f"the practitioner's Physitrack key could not be checked ({exc}); try again, or "
            "add with --no-verify"
        ) from None
    except BridgeError as exc:
        raise InvalidInput("Physitrack refused the practitioner's key", [str(exc)]) from None

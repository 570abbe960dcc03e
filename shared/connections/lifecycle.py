"""A connection after `add`: enable it again, edit it, pause and resume it. Each audited.

The CLI and the admin API both call these; nothing here knows about either. Every change keeps
the connection's id, and so the webhook URLs the clinic configured in Halaxy (one per event)
and the program URL: a disabled clinic comes back without redoing its setup. Offboarding (the
erasure of everything the bridge holds for a clinic) is `shared.ops.offboarding`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.connections import model as c
from shared.connections.model import Connection
from shared.connections.onboarding import clinic_name, duplicate_refusal
from shared.connections.pause import PausedConnections
from shared.connections.roster import token_refusal
from shared.connections.store import ConnectionStore
from shared.infra.audit import AuditTrail
from shared.infra.errors import InvalidInput
from shared.infra.validation import validated

# What `edit` can change, as the audit trail and the answers name it (never a value).
EDITABLE = ("name", "default_author", "practitioners", "pdf_hosts", "platform_base_url")


class EditRequest(BaseModel):
    """The changes to a connection, as a JSON merge patch (RFC 7396): a field left out stays
    as it is; `author: null` leaves notes with no default author; `pdf_hosts: null` goes back
    to the platform's own hosts; in `practitioners`, a token to a `PR-…` adds or changes its
    mapping and a token to null removes it. Checked as `add` checks the same values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    author: str | None = Field(default=None, description="default note author, PR-...; null: none")
    practitioners: dict[str, str | None] = Field(
        default_factory=dict,
        description="platform practitioner token -> PR-... to add or change, or null to remove",
    )
    pdf_hosts: list[str] | None = Field(
        default=None, description="HOST[:PORT] list; null: the platform's own hosts"
    )
    platform_base_url: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("a connection keeps a name")
        return clinic_name(value)

    @field_validator("platform_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("a connection keeps a platform base URL")
        return value

    @field_validator("practitioners")
    @classmethod
    def _tokens(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        tokens = [token.strip() for token in value]
        if any(not token or not token.isprintable() for token in tokens):
            raise ValueError("each practitioner token must be non-empty printable text")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a practitioner token is named twice")
        return {token.strip(): role for token, role in value.items()}

    def named(self) -> set[str]:
        """The fields the request sets (`practitioners` only when it names a token)."""
        given = set(self.model_fields_set)
        if not self.practitioners:
            given.discard("practitioners")
        return given


class EnableRequest(BaseModel):
    """How to enable a connection again (the admin API body; may be empty)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_shared_platform_key: bool = Field(
        default=False,
        description=(
            "enable it even though another enabled connection uses the same platform API key "
            "(two Halaxy practices writing to one platform account, on purpose)"
        ),
    )


def parse_enable(data: dict[str, Any]) -> EnableRequest:
    return validated(EnableRequest, data, "the enable request is invalid")


def parse_edit(data: dict[str, Any]) -> EditRequest:
    """Validate raw input into an edit; raise `InvalidInput` listing every problem."""
    return validated(EditRequest, data, "the edit is invalid")


def edited(
    connection: Connection, request: EditRequest, now: datetime
) -> tuple[Connection, list[str]]:
    """The connection with the request applied, and the names of the fields that changed
    (in `EDITABLE` order; none: the connection itself)."""
    given = request.named()
    if not given:
        raise InvalidInput(
            "say what to change: name, author, practitioners, PDF hosts or platform base URL"
        )
    changes: dict[str, Any] = {}
    problems: list[str] = []

    def check(field: str, value: Callable[[], Any]) -> Any:
        try:
            return value()
        except InvalidInput as exc:
            problems.append(f"{field}: {exc}")
            return None

    if "name" in given and request.name is not None:
        changes["name"] = request.name
    if "author" in given:
        author = request.author
        changes["default_author"] = (
            None if author is None else check("author", lambda: c.practitioner_role(author))
        )
    if "practitioners" in given:
        changes["practitioners"] = check(
            "practitioners", lambda: _mapped(connection, request.practitioners)
        )
    if "pdf_hosts" in given:
        hosts = request.pdf_hosts
        changes["pdf_hosts"] = (
            None if hosts is None else check("pdf_hosts", lambda: c.pdf_host_list(",".join(hosts)))
        )
    if "platform_base_url" in given and request.platform_base_url is not None:
        url = request.platform_base_url
        changes["platform_base_url"] = check(
            "platform_base_url", lambda: c.service_url(url, "platform base URL")
        )
    if problems:
        raise InvalidInput("the edit is invalid", problems)
    changed = [name for name in EDITABLE if name in changes]
    changed = [name for name in changed if getattr(connection, name) != changes[name]]
    if not changed:
        return connection, []
    return connection.model_copy(update={**changes, "updated_at": now}), changed


def _mapped(connection: Connection, wanted: dict[str, str | None]) -> dict[str, str]:
    mapping = dict(connection.practitioners)
    for token, role in wanted.items():
        if role is not None:
            mapping[token] = c.practitioner_role(role, "practitioner role")
        elif token in mapping:
            del mapping[token]
        else:
            # Not echoed: the token can sign in as the practitioner.
            raise InvalidInput(
                "this connection maps no such practitioner token (connections show lists the "
                "last four characters of each)"
            )
    return mapping


def edit_connection(
    store: ConnectionStore,
    connection: Connection,
    request: EditRequest,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> tuple[Connection, list[str]]:
    """Apply and store the edit, atomically against any change made since `connection` was
    read (`ConnectionChangedMeanwhile`); a new practitioner token is checked against every
    other connection in the same step, as `add` checks it. Audited with the names of the
    fields that changed; an edit that changes nothing stores and audits nothing."""
    updated, changed = edited(connection, request, now)
    if not changed:
        return connection, []
    adds_tokens = set(updated.practitioners) - set(connection.practitioners)
    store.replace(connection, updated, token_refusal if adds_tokens else None)
    audit.record(
        actor=by,
        action="connection.edited",
        connection_id=connection.id,
        resource_ids=" ".join(changed),
    )
    return updated, changed


def enable_connection(
    store: ConnectionStore,
    connection: Connection,
    now: datetime,
    audit: AuditTrail,
    by: str,
    *,
    allow_shared_platform_key: bool = False,
) -> Connection:
    """Enable a disabled connection again, with its id, URLs and secrets. Refused, as `add`
    refuses, when another enabled connection took its Halaxy key or its platform API key
    meanwhile (unless sharing the platform key is meant), or a connection its practitioner
    tokens: checked and stored in one atomic step. Enabling an enabled connection changes
    nothing and is not audited."""
    if connection.enabled:
        return connection
    enabled = connection.model_copy(update={"enabled": True, "updated_at": now})
    refuse_duplicates = duplicate_refusal(platform_api_key=not allow_shared_platform_key)

    def refuse(new: Connection, others: Sequence[Connection]) -> None:
        refuse_duplicates(new, others)
        token_refusal(new, others)

    store.replace(connection, enabled, refuse)
    audit.record(actor=by, action="connection.enabled", connection_id=connection.id)
    return enabled


def pause_connection(
    pauses: PausedConnections, connection: Connection, now: datetime, audit: AuditTrail, by: str
) -> bool:
    """Pause: webhooks are still taken and kept, nothing is processed (`shared.connections.
    pause`). False if it was paused already (not audited again)."""
    paused = pauses.pause(connection.id, by, now)
    if paused:
        audit.record(actor=by, action="connection.paused", connection_id=connection.id)
    return paused


@dataclass(frozen=True)
class Resumed:
    was_paused: bool
    released: int  # held messages put back on the queues, oldest first
    still_held: int  # left for the scheduler (paused again meanwhile, or a crash)


def resume_connection(
    pauses: PausedConnections,
    connection: Connection,
    audit: AuditTrail,
    by: str,
    max_batches: int | None = None,
) -> Resumed:
    """Lift the pause, then release what was held, in the order it was held. A resume of a
    connection that is not paused still releases what it may have left held (a resume that
    stopped part-way), and is audited only when it lifted a pause."""
    was_paused = pauses.resume(connection.id)
    if was_paused:
        audit.record(actor=by, action="connection.resumed", connection_id=connection.id)
    released = pauses.release(connection.id, max_batches=max_batches)
    left = pauses.holding([connection.id])[connection.id].held
    return Resumed(was_paused=was_paused, released=released, still_held=left)

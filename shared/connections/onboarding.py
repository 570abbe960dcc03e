"""Adding, rotating and disabling connections, and the setup steps a person follows.

The CLI and the admin API both call these; nothing here knows about either.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.connections import model as c
from shared.connections.model import Connection, DocStatus, RetiredSecret
from shared.connections.roster import practitioner_rows, token_refusal
from shared.connections.store import ConnectionStore, Refusal
from shared.halaxy.auth import HalaxyAccount
from shared.halaxy.events import HALAXY_EVENTS
from shared.infra.audit import AuditTrail
from shared.infra.errors import AlreadyConnected, BridgeError, InvalidInput, Transient
from shared.infra.validation import validated
from shared.platforms import PlatformKind

KeyVerifier = Callable[[HalaxyAccount], None]
"""Checks a Halaxy key (`shared.halaxy.key_verifier`: a token, and the permissions to read
Patients and Appointments and write notes). Raises `InvalidInput` naming what the key lacks,
another `BridgeError` if the key is refused, `Transient` if Halaxy cannot answer now."""


class ConnectionRequest(BaseModel):
    """What a person gives to add a connection (the CLI flags, or the admin API body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    halaxy_key: SecretStr = Field(description="CLIENT_ID:CLIENT_SECRET as copied from Halaxy")
    region: str | None = Field(default=None, description="au or eu")
    halaxy_base_url: str | None = None
    platform: PlatformKind
    platform_base_url: str
    platform_api_key: SecretStr = Field(min_length=1)
    platform_pms_name: str | None = Field(
        default=None,
        description=(
            "Physitrack, for a practitioner without PT Direct: the PMS name Physitrack knows "
            "the bridge by (sent as X-Api-PMS-Name); needs platform_pms_key"
        ),
    )
    platform_pms_key: SecretStr | None = Field(
        default=None,
        description="the PMS key the practitioner entered in Physitrack (X-Api-PMS-Key)",
    )
    author: str | None = Field(default=None, description="default note author, PR-...")
    practitioners: dict[str, str] = Field(
        default_factory=dict, description="platform practitioner token -> PR-..."
    )
    pdf_hosts: list[str] | None = Field(default=None, description="HOST[:PORT] list")
    signing: bool = False
    doc_status: DocStatus = DocStatus.PRELIMINARY
    verify: bool = True
    allow_shared_platform_key: bool = Field(
        default=False,
        description=(
            "store it even though another connection uses the same platform API key (two "
            "Halaxy practices writing to one platform account, on purpose)"
        ),
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return clinic_name(value)

    @field_validator("platform_api_key")
    @classmethod
    def _platform_key(cls, value: SecretStr) -> SecretStr:
        return _stripped_secret(value)

    @field_validator("platform_pms_key")
    @classmethod
    def _pms_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _stripped_secret(value)


def clinic_name(value: str) -> str:
    """A connection's name as `add` and `edit` take it: printable text, stripped."""
    if not value.strip() or not value.isprintable():
        raise ValueError("must be printable text")
    return value.strip()


def build_connection(request: ConnectionRequest, now: datetime) -> Connection:
    """The new connection with fresh secrets; raises `InvalidInput` on any bad field."""
    client_id, client_secret = c.parse_halaxy_key(request.halaxy_key.get_secret_value())
    pdf_hosts = None
    if request.pdf_hosts is not None:
        pdf_hosts = c.pdf_host_list(",".join(request.pdf_hosts))
    if (request.platform_pms_name is None) != (request.platform_pms_key is None):
        raise InvalidInput("give both the platform PMS name and the PMS key, or neither")
    if request.platform_pms_name is not None and request.platform is not PlatformKind.PHYSITRACK:
        raise InvalidInput("a platform PMS name and key are for Physitrack only")
    return Connection(
        id=c.new_connection_id(),
        name=request.name,
        created_at=now,
        updated_at=now,
        halaxy_base_url=c.halaxy_base_url(request.region, request.halaxy_base_url),
        halaxy_client_id=client_id,
        halaxy_client_secret=SecretStr(client_secret),
        platform=request.platform,
        platform_base_url=c.service_url(request.platform_base_url, "platform base URL"),
        platform_api_key=SecretStr(request.platform_api_key.get_secret_value().strip()),
        platform_pms_name=(
            None if request.platform_pms_name is None else c.pms_name(request.platform_pms_name)
        ),
        platform_pms_key=(
            None
            if request.platform_pms_key is None
            else SecretStr(c.pms_key(request.platform_pms_key.get_secret_value()))
        ),
        default_author=c.practitioner_role(request.author) if request.author else None,
        practitioners={
            token: c.practitioner_role(role, "practitioner role")
            for token, role in request.practitioners.items()
        },
        pdf_hosts=pdf_hosts,
        doc_status=request.doc_status,
        webhook_secret=SecretStr(c.new_webhook_secret()),
        program_api_key=SecretStr(c.new_program_api_key()),
        signing_secret=SecretStr(c.new_signing_secret()) if request.signing else None,
    )


def parse_request(data: dict[str, Any]) -> ConnectionRequest:
    """Validate raw input into a request; raise `InvalidInput` listing every problem."""
    return validated(ConnectionRequest, data, "the connection request is invalid")


def parse_rotation(data: dict[str, Any]) -> RotateRequest:
    """Validate raw input into a rotation; raise `InvalidInput` listing every problem."""
    return validated(RotateRequest, data, "the rotation request is invalid")


SECRET_FIELDS = (
    "webhook_secret",
    "program_api_key",
    "signing_secret",
    "halaxy_key",
    "platform_api_key",
    "platform_pms_key",
)


class RotateRequest(BaseModel):
    """Which secrets to replace. Generated secrets keep the old value valid for `grace`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_secret: bool = False
    program_api_key: bool = False
    signing_secret: bool = False
    halaxy_key: SecretStr | None = None
    platform_api_key: SecretStr | None = None
    platform_pms_key: SecretStr | None = None
    grace_hours: float = Field(default=24.0, ge=0, le=24 * 14)
    verify: bool = True
    allow_shared_platform_key: bool = False

    @field_validator("halaxy_key", "platform_api_key", "platform_pms_key")
    @classmethod
    def _given_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _stripped_secret(value)

    def replaced(self) -> list[str]:
        """The names (never the values) of the secrets this rotation replaces."""
        return [name for name in SECRET_FIELDS if getattr(self, name) not in (None, False)]

    def is_empty(self) -> bool:
        return not self.replaced()


def duplicate_refusal(*, halaxy_key: bool = True, platform_api_key: bool = True) -> Refusal:
    """Refuses a connection whose Halaxy key (client id on the same Halaxy base URL) another
    enabled connection holds: both would sync the same patients, each creating its own
    platform clients. The same for its platform API key, unless sharing it is meant. A
    disabled connection holds nothing (it receives and sends nothing): README, Decisions.
    `halaxy_key` / `platform_api_key` false: that one is not checked."""

    def refuse(new: Connection, stored: Sequence[Connection]) -> None:
        others = [other for other in stored if other.enabled and other.id != new.id]
        for other in others if halaxy_key else []:
            if same_halaxy_key(new, other):
                raise AlreadyConnected(
                    f"connection {other.id} ({other.name}) already uses this Halaxy key "
                    f"(client id {new.halaxy_client_id} on {new.halaxy_base_url}): a second "
                    "connection would sync the same patients twice. Use that connection, or "
                    f"disable it first (connections disable {other.id})",
                    other.id,
                )
        for other in others if platform_api_key else []:
            if hmac.compare_digest(
                new.platform_api_key.get_secret_value().encode(),
                other.platform_api_key.get_secret_value().encode(),
            ):
                raise AlreadyConnected(
                    f"connection {other.id} ({other.name}) already uses this platform API key. "
                    "If both practices are meant to write to the same platform account, say so: "
                    "--allow-shared-platform-key (admin API: allow_shared_platform_key)",
                    other.id,
                )

    return refuse


def same_halaxy_key(one: Connection, other: Connection) -> bool:
    """The same Halaxy client id on the same Halaxy API (scheme and host compared as URLs
    compare them, case-insensitively)."""
    return one.halaxy_client_id == other.halaxy_client_id and _url_identity(
        one.halaxy_base_url
    ) == _url_identity(other.halaxy_base_url)


def _url_identity(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def _stripped_secret(value: SecretStr) -> SecretStr:
    stripped = value.get_secret_value().strip()
    if not stripped or not stripped.isprintable():
        raise ValueError("must be a non-empty printable value")
    return SecretStr(stripped)


def rotate(connection: Connection, request: RotateRequest, now: datetime) -> Connection:
    """The connection with the requested secrets replaced."""
    if request.is_empty():
        raise InvalidInput(
            "say what to rotate: webhook secret, program key, signing secret, Halaxy key, "
            "platform API key or platform PMS key"
        )
    if request.platform_pms_key is not None and connection.platform_pms_name is None:
        raise InvalidInput(
            "this connection sends no PMS key to Physitrack (it was added without a PMS name)"
        )
    if request.grace_hours > 0:
        for wanted, retired, what in (
            (request.webhook_secret, connection.retired_webhook_secret, "webhook secret"),
            (request.program_api_key, connection.retired_program_api_key, "program key"),
        ):
            # One earlier value is kept. Rotating again would drop it at once, while some of
            # Halaxy's webhooks (or the platform) may still send it: their deliveries are gone.
            if wanted and retired is not None and retired.valid_until > now:
                raise InvalidInput(
                    f"the {what} was rotated recently and its earlier value is accepted until "
                    f"{retired.valid_until.isoformat(timespec='minutes')}; rotating again now "
                    "would stop accepting that value at once. Rotate again after then, or "
                    "with a grace of 0 hours to accept only the new value from now on"
                )
    grace_until = now + timedelta(hours=request.grace_hours)
    changes: dict[str, Any] = {"updated_at": now}
    if request.webhook_secret:
        changes["webhook_secret"] = SecretStr(c.new_webhook_secret())
        changes["retired_webhook_secret"] = RetiredSecret(
            value=connection.webhook_secret, valid_until=grace_until
        )
    if request.program_api_key:
        changes["program_api_key"] = SecretStr(c.new_program_api_key())
        changes["retired_program_api_key"] = RetiredSecret(
            value=connection.program_api_key, valid_until=grace_until
        )
    if request.signing_secret:
        changes["signing_secret"] = SecretStr(c.new_signing_secret())
    if request.halaxy_key is not None:
        client_id, client_secret = c.parse_halaxy_key(request.halaxy_key.get_secret_value())
        changes["halaxy_client_id"] = client_id
        changes["halaxy_client_secret"] = SecretStr(client_secret)
    if request.platform_api_key is not None:
        changes["platform_api_key"] = SecretStr(request.platform_api_key.get_secret_value())
    if request.platform_pms_key is not None:
        changes["platform_pms_key"] = SecretStr(
            c.pms_key(request.platform_pms_key.get_secret_value())
        )
    return connection.model_copy(update=changes)


def disable(connection: Connection, now: datetime) -> Connection:
    return connection.model_copy(update={"enabled": False, "updated_at": now})


def summary(connection: Connection) -> dict[str, Any]:
    """What is safe to show anyone with admin access: no secret, no patient data."""
    return {
        "id": connection.id,
        "name": connection.name,
        "enabled": connection.enabled,
        "created_at": connection.created_at.isoformat(),
        "updated_at": connection.updated_at.isoformat(),
        "halaxy_base_url": connection.halaxy_base_url,
        "halaxy_client_id": connection.halaxy_client_id,
        "platform": connection.platform.value,
        "platform_base_url": connection.platform_base_url,
        "platform_pms_name": connection.platform_pms_name,
        "default_author": connection.default_author,
        "practitioners": [
            {"token_ends_with": c.token_hint(token), "role": role}
            for token, role in sorted(connection.practitioners.items(), key=lambda kv: kv[1])
        ],
        "physitrack_practitioners": practitioner_rows(connection),
        "pdf_hosts": list(connection.allowed_pdf_hosts),
        "doc_status": connection.doc_status.value,
        "signing": connection.signing_secret is not None,
    }


def setup_details(connection: Connection, public_url: str) -> dict[str, Any]:
    """The values a person pastes into Halaxy and the platform to finish the setup."""
    base = public_url.rstrip("/")
    secret = connection.signing_secret
    return {
        **summary(connection),
        # Halaxy's Authentication Header field "forces the Bearer format" and the header
        # arrives as `Authorization: Bearer <secret>` (halaxy-api.md section 1.5); the
        # receiver accepts the bare secret too.
        "halaxy_auth_header": f"Bearer {connection.webhook_secret.get_secret_value()}",
        "webhook_urls": {
            name: f"{base}/webhooks/halaxy/{connection.id}/{name}" for name in HALAXY_EVENTS
        },
        "program_webhook_url": f"{base}/webhooks/programs/{connection.id}",
        "physitrack_webhook_url": (
            f"{base}/webhooks/physitrack/programs"
            if connection.platform is PlatformKind.PHYSITRACK
            else None
        ),
        "program_api_key": connection.program_api_key.get_secret_value(),
        "signing_secret": None if secret is None else secret.get_secret_value(),
    }


def reveal_setup(
    connection: Connection, public_url: str, audit: AuditTrail, by: str
) -> dict[str, Any]:
    """`setup_details`, secrets and all, for a person who asked to see them again: every such
    read is in the audit trail, under their name, with the names of the secrets shown."""
    details = setup_details(connection, public_url)
    shown = [name for name in REVEALED if details.get(name) is not None]
    audit.record(
        actor=by,
        action="connection.revealed",
        connection_id=connection.id,
        resource_ids=" ".join(shown),
    )
    return details


REVEALED = ("halaxy_auth_header", "program_api_key", "signing_secret")  # setup_details' secrets


def setup_steps(details: dict[str, Any]) -> str:
    """The same values as numbered steps for a person finishing the setup."""
    lines = [
        f"Connection {details['id']} ({details['name']}) is stored.",
        "",
        "In Halaxy (Settings > Integrations > Webhooks > Create Webhook), create one webhook",
        "per event below. For each: Endpoint URL as shown, the Event named, your ops email as",
        "Contact Email, and this exact Authentication Header value:",
        "",
        f"    {details['halaxy_auth_header']}",
        "",
    ]
    for name, url in details["webhook_urls"].items():
        lines.append(f"  {HALAXY_EVENTS[name].label:<22} {url}")
    lines += ["", *_program_webhook(details, "")]
    lines += [
        "",
        "These secrets are shown now; `halaxy-bridge connections show ID --reveal` shows them",
        "again. Keep them out of tickets and chat.",
    ]
    return "\n".join(lines)


def rotation_steps(details: dict[str, Any], replaced: list[str]) -> str:
    """What to change outside the bridge after a rotation: only what changed, and in place."""
    lines = [f"Connection {details['id']} ({details['name']}): rotated {', '.join(replaced)}."]
    if "webhook_secret" in replaced:
        lines += [
            "",
            "In Halaxy (Settings > Integrations > Webhooks), edit each of the existing webhooks",
            "of this connection (one per event; their URLs do not change) and replace its",
            "Authentication Header with this value. Do not create new webhooks:",
            "",
            f"    {details['halaxy_auth_header']}",
        ]
    if "program_api_key" in replaced or "signing_secret" in replaced:
        lines += ["", *_program_webhook(details, "new ")]
    if not {"webhook_secret", "program_api_key", "signing_secret"} & set(replaced):
        lines += ["", "Nothing changes in Halaxy's webhooks or in the platform's PDF webhook."]
    lines += [
        "",
        "The earlier webhook secret and program key stay valid for the grace period given.",
        "Keep these secrets out of tickets and chat.",
    ]
    return "\n".join(lines)


def _program_webhook(details: dict[str, Any], new: str) -> list[str]:
    lines: list[str] = []
    if details["platform"] == PlatformKind.PHYSITRACK.value:
        # Physitrack's PDF-download webhook is one URL and one api_key for the whole vendor,
        # registered by Physitrack support on request by email; each post names its
        # practitioner by token (therapy-platforms.md 2.1).
        lines = [
            "Physitrack's PDF webhook is registered by Physitrack support, not by the clinic,",
            "once for the whole deployment. If it is not registered yet, email Physitrack",
            "support this URL and the deployment's api_key (BRIDGE_PHYSITRACK_WEBHOOK_KEYS, its",
            "first key; docs/operations.md, Physitrack):",
            "",
            f"    URL:     {details['physitrack_webhook_url']}",
            "",
            "Then add each of the clinic's practitioners (their Physitrack token and API key;",
            "--default for the one whose account takes patients with no practitioner):",
            "",
            f"    halaxy-bridge practitioners add {details['id']} --token TOKEN \\",
            "      --halaxy-practitioner PR-... --api-key KEY [--default]",
            "",
            f"The connection's own URL and {new}api_key serve only a Physitrack registration",
            "made for this clinic alone:",
        ]
    else:
        lines = [
            f"In the therapy platform ({details['platform']}), set the program-assigned (PDF)",
            f"webhook to this URL with this {new}api_key:",
        ]
    lines += [
        "",
        f"    URL:     {details['program_webhook_url']}",
        f"    api_key: {details['program_api_key']}",
    ]
    if details["signing_secret"]:
        lines.append(f"    Standard Webhooks signing secret: {details['signing_secret']}")
    return lines


def add_connection(
    store: ConnectionStore,
    verify_key: KeyVerifier,
    request: ConnectionRequest,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Connection:
    """Build, verify (unless `request.verify` is false) and store a new connection. The
    check (`KeyVerifier`) runs before anything is stored or audited."""
    connection = build_connection(request, now)
    if request.verify:
        _verify(verify_key, connection, "the Halaxy key could not be verified")
    refuse_duplicates = duplicate_refusal(platform_api_key=not request.allow_shared_platform_key)

    def refuse(new: Connection, stored: Sequence[Connection]) -> None:
        refuse_duplicates(new, stored)
        token_refusal(new, stored)  # its --practitioner tokens: one connection's each

    store.create(connection, refuse)
    audit.record(actor=by, action="connection.added", connection_id=connection.id)
    return connection


def disable_connection(
    store: ConnectionStore, connection: Connection, now: datetime, audit: AuditTrail, by: str
) -> Connection:
    disabled = disable(connection, now)
    store.replace(connection, disabled)
    audit.record(actor=by, action="connection.disabled", connection_id=connection.id)
    return disabled


def apply_rotation(
    store: ConnectionStore,
    verify_key: KeyVerifier,
    connection: Connection,
    request: RotateRequest,
    now: datetime,
    audit: AuditTrail,
    by: str,
) -> Connection:
    """Rotate, verify a new Halaxy key (unless `request.verify` is false), and store."""
    rotated = rotate(connection, request, now)
    if request.halaxy_key is not None and request.verify:
        _verify(verify_key, rotated, "the new Halaxy key could not be verified")
    new_halaxy_key = request.halaxy_key is not None
    new_platform_key = (
        request.platform_api_key is not None and not request.allow_shared_platform_key
    )
    refuse = None
    if new_halaxy_key or new_platform_key:
        refuse = duplicate_refusal(halaxy_key=new_halaxy_key, platform_api_key=new_platform_key)
    store.replace(connection, rotated, refuse)
    audit.record(
        actor=by,
        action="connection.rotated",
        connection_id=connection.id,
        resource_ids=" ".join(request.replaced()),
    )
    return rotated


def _verify(verify_key: KeyVerifier, connection: Connection, message: str) -> None:
    """Refused key: `InvalidInput` (as the check words it when it names missing permissions).
    Halaxy unreachable or failing: `Transient`, try later."""
    try:
        verify_key(connection.halaxy_account)
    except Transient as exc:
        raise Transient(
            f"{message}: Halaxy did not answer ({exc}); try again, or add with --no-verify"
        ) from None
    except InvalidInput:
        raise
    except BridgeError as exc:
        raise InvalidInput(message, [str(exc)]) from None

"""Clinic connections: what the bridge knows about one Halaxy practice and its platform.

Pure model and validation. Storage lives in `shared.connections.store`.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import string
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from shared.connections.practitioner import (
    CONNECTION_ACCOUNT,
    PlatformSeat,
    Practitioner,
    practitioner_account,
    token_matches,
)
from shared.halaxy.auth import HalaxyAccount
from shared.infra.errors import InvalidInput
from shared.infra.netutil import is_loopback_host
from shared.platforms import PlatformAccount, PlatformKind

HALAXY_REGIONS = {
    "au": "https://au-api.halaxy.com/main",
    "eu": "https://eu-api.halaxy.com/main",
}

# Physitrack serves program PDFs from its S3 bucket (therapy-platforms.md section 1.4).
PHYSITRACK_FILE_HOSTS = ("physitrackuploads.s3.amazonaws.com",)

PRACTITIONER_ROLE_ID = re.compile(r"^PR-[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
# "PMS name, lowercase, underscores, e.g. `cliniko`" (therapy-platforms.md 1.3).
PMS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = rf"(?=[^:]{{1,253}}(:|$)){_LABEL}(\.{_LABEL})*"
HOST_NAME = re.compile(rf"^{_HOST}$")
HOST_PORT = re.compile(rf"^(?P<host>{_HOST})(:(?P<port>[0-9]{{1,5}}))?$")


class DocStatus(StrEnum):
    PRELIMINARY = "preliminary"
    FINAL = "final"


class RetiredSecret(BaseModel):
    """A secret replaced by a rotation that is still accepted until `valid_until`."""

    model_config = ConfigDict(frozen=True)

    value: SecretStr
    valid_until: datetime


class Connection(BaseModel):
    """One clinic: its Halaxy practice, its therapy platform and the secrets between them."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    enabled: bool = True
    created_at: datetime
    updated_at: datetime
    halaxy_base_url: str
    halaxy_client_id: str
    halaxy_client_secret: SecretStr
    platform: PlatformKind
    platform_base_url: str
    platform_api_key: SecretStr
    # Physitrack's second auth mode (therapy-platforms.md 1.3): a practitioner without PT
    # Direct sends X-Api-PMS-Name and X-Api-PMS-Key besides X-Api-Key.
    platform_pms_name: str | None = None
    platform_pms_key: SecretStr | None = None
    default_author: str | None = None
    practitioners: dict[str, str] = Field(default_factory=dict)  # token -> PR-…: authors only
    physitrack_practitioners: tuple[Practitioner, ...] = ()
    pdf_hosts: tuple[str, ...] | None = None
    doc_status: DocStatus = DocStatus.PRELIMINARY
    webhook_secret: SecretStr
    program_api_key: SecretStr
    signing_secret: SecretStr | None = None
    retired_webhook_secret: RetiredSecret | None = None
    retired_program_api_key: RetiredSecret | None = None

    @property
    def halaxy_account(self) -> HalaxyAccount:
        """The practice's Halaxy API key, as `HalaxyClient` takes it."""
        return HalaxyAccount(
            connection_id=self.id,
            base_url=self.halaxy_base_url,
            client_id=self.halaxy_client_id,
            client_secret=self.halaxy_client_secret,
        )

    @property
    def platform_account(self) -> PlatformAccount:
        """The clinic's platform account, as the platform adapters take it."""
        return PlatformAccount(
            kind=self.platform,
            base_url=self.platform_base_url,
            api_key=self.platform_api_key,
            pms_name=self.platform_pms_name,
            pms_key=self.platform_pms_key,
        )

    def seats(self) -> list[PlatformSeat]:
        """Every platform account of the connection: its own, then each practitioner's that
        is not the same account (`seat_key`)."""
        return [
            PlatformSeat(CONNECTION_ACCOUNT, self.platform_account),
            *(
                PlatformSeat(p.halaxy_practitioner, self._account_of(p))
                for p in self.physitrack_practitioners
                if self.seat_key(p) is not CONNECTION_ACCOUNT
            ),
        ]

    def seat_key(self, practitioner: Practitioner) -> str | None:
        """Which account's links the practitioner's patients are kept under: their own PR-
        id, or `CONNECTION_ACCOUNT` when their credentials are the connection's own (every
        Physitrack key is some practitioner's, therapy-platforms.md 1.3; the patients synced
        under the connection's key before the practitioner was added are in their account
        already, and must not be created there twice)."""
        own = self.platform_account
        theirs = self._account_of(practitioner)
        same = (
            _same_secret(own.api_key, theirs.api_key)
            and own.pms_name == theirs.pms_name
            and _same_secret(own.pms_key, theirs.pms_key)
        )
        return CONNECTION_ACCOUNT if same else practitioner.halaxy_practitioner

    def practitioner_seats(self) -> dict[str, str | None]:
        """Each practitioner's PR- id, to the seat key their patients are kept under."""
        return {p.halaxy_practitioner: self.seat_key(p) for p in self.physitrack_practitioners}

    def default_seat(self) -> PlatformSeat:
        """Where a patient with no practitioner of their own goes: the default practitioner's
        account, else the connection's own."""
        for practitioner in self.physitrack_practitioners:
            if practitioner.default:
                return PlatformSeat(self.seat_key(practitioner), self._account_of(practitioner))
        return PlatformSeat(CONNECTION_ACCOUNT, self.platform_account)

    def practitioner(self, halaxy_practitioner: str) -> Practitioner | None:
        for practitioner in self.physitrack_practitioners:
            if practitioner.halaxy_practitioner == halaxy_practitioner:
                return practitioner
        return None

    def practitioner_with_token(self, token: str) -> Practitioner | None:
        for practitioner in self.physitrack_practitioners:
            if token_matches(practitioner, token):
                return practitioner
        return None

    def knows_token(self, token: str) -> bool:
        """The token is one of this connection's practitioners (a record, or the author map)."""
        return self.practitioner_with_token(token) is not None or token in self.practitioners

    def tokens(self) -> list[str]:
        return [
            *(p.token.get_secret_value() for p in self.physitrack_practitioners),
            *self.practitioners,
        ]

    def _account_of(self, practitioner: Practitioner) -> PlatformAccount:
        return practitioner_account(practitioner, self.platform, self.platform_base_url)

    @property
    def halaxy_origin(self) -> str:
        """`scheme://host[:port]` of the practice's Halaxy API, to check focus references."""
        parts = urlsplit(self.halaxy_base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def allowed_pdf_hosts(self) -> tuple[str, ...]:
        """The hosts program PDFs may be fetched from: explicit, else the platform's own."""
        if self.pdf_hosts is not None:
            return self.pdf_hosts
        platform_host = urlsplit(self.platform_base_url).netloc.lower()
        if self.platform is PlatformKind.PHYSITRACK:
            return (platform_host, *PHYSITRACK_FILE_HOSTS)
        return (platform_host,)

    def webhook_secrets(self, now: datetime) -> list[str]:
        """The Halaxy Authentication Header secrets accepted at `now` (current first)."""
        return _live_secrets(self.webhook_secret, self.retired_webhook_secret, now)

    def program_api_keys(self, now: datetime) -> list[str]:
        """The program-callback `api_key` values accepted at `now` (current first)."""
        return _live_secrets(self.program_api_key, self.retired_program_api_key, now)


def _same_secret(one: SecretStr | None, other: SecretStr | None) -> bool:
    if one is None or other is None:
        return one is other
    return hmac.compare_digest(one.get_secret_value().encode(), other.get_secret_value().encode())


def _live_secrets(current: SecretStr, retired: RetiredSecret | None, now: datetime) -> list[str]:
    values = [current.get_secret_value()]
    if retired is not None and retired.valid_until > now:
        values.append(retired.value.get_secret_value())
    return values


def new_connection_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "cn_" + "".join(secrets.choice(alphabet) for _ in range(12))


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


def new_program_api_key() -> str:
    """A key Physitrack accepts: 30+ characters mixing upper case, lower case and digits."""
    while True:
        key = secrets.token_urlsafe(32).replace("-", "").replace("_", "")
        if (
            len(key) >= 30
            and any(c.islower() for c in key)
            and any(c.isupper() for c in key)
            and any(c.isdigit() for c in key)
        ):
            return key


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_halaxy_key(value: str) -> tuple[str, str]:
    """Split the `CLIENT_ID:CLIENT_SECRET` string clinics copy from Halaxy."""
    client_id, sep, client_secret = value.strip().partition(":")
    if not sep or not client_id.strip() or not client_secret.strip():
        raise InvalidInput(
            "the Halaxy key must be the Client ID and Client Secret joined by a colon "
            "(CLIENT_ID:CLIENT_SECRET)"
        )
    return client_id.strip(), client_secret.strip()


def halaxy_base_url(region: str | None, base_url: str | None) -> str:
    """The practice's API base: from `region` (au, eu) or an explicit URL, not both."""
    if region and base_url:
        raise InvalidInput("give either a Halaxy region or a Halaxy base URL, not both")
    if base_url:
        return service_url(base_url, "Halaxy base URL")
    key = (region or "au").lower()
    if key not in HALAXY_REGIONS:
        raise InvalidInput(f"unknown Halaxy region {region!r}: use one of au, eu")
    return HALAXY_REGIONS[key]


def service_url(value: str, what: str) -> str:
    """An absolute https URL (plain http only for a loopback host, as the sandbox runs)."""
    if not value.strip().isprintable():
        raise InvalidInput(f"the {what} has characters a URL cannot carry")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018  (urlsplit checks the port only when it is read)
        httpx.Request("GET", value.strip())  # what the HTTP client will accept, IDNA included
    except (ValueError, httpx.InvalidURL):
        raise InvalidInput(f"the {what} is not a usable URL: {value!r}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput(f"the {what} must be an absolute https URL, got {value!r}")
    if not is_loopback_host(parts.hostname) and not HOST_NAME.fullmatch(parts.hostname):
        raise InvalidInput(f"the {what} has an invalid host name: {value!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InvalidInput(f"the {what} must use https (http only for a loopback host)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(f"the {what} must not carry credentials, a query or a fragment")
    return value.strip().rstrip("/")


def practitioner_role(value: str, what: str = "author") -> str:
    value = value.strip()
    if not PRACTITIONER_ROLE_ID.fullmatch(value):
        # Halaxy refuses an external role (EP-...) as author with 404 "Author not found"
        # (halaxy-api.md section 6); only a practice role PR-... may author a note.
        raise InvalidInput(f"the {what} must be a Halaxy practice role id like PR-123456")
    return value


def practitioner_map(pairs: list[str]) -> dict[str, str]:
    """`TOKEN=PR-xxx` pairs: the platform practitioner token to the Halaxy author role."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        token, sep, role = pair.partition("=")
        if not sep or not token.strip():
            # Not echoed: the token can sign in as the practitioner.
            raise InvalidInput("each practitioner mapping must look like TOKEN=PR-123456")
        mapping[token.strip()] = practitioner_role(role, "practitioner role")
    return mapping


def pms_name(value: str) -> str:
    if not PMS_NAME.fullmatch(value):
        raise InvalidInput(
            "the platform PMS name must be the name Physitrack knows the PMS by: lowercase "
            "letters, digits and underscores, like cliniko"
        )
    return value


def pms_key(value: str) -> str:
    """A PMS key as Physitrack takes one: generated by the PMS, at least 30 characters mixing
    upper case, lower case and digits (therapy-platforms.md 1.7)."""
    if not (
        len(value) >= 30
        and any(ch.islower() for ch in value)
        and any(ch.isupper() for ch in value)
        and any(ch.isdigit() for ch in value)
    ):
        raise InvalidInput(
            "the platform PMS key must be at least 30 characters mixing upper case, lower case "
            "and digits, as Physitrack requires"
        )
    return value


def token_hint(token: str) -> str:
    """What ops may see of a practitioner token, to tell the mappings apart: its last four
    characters, and nothing of a token too short to spare them."""
    return token[-4:] if len(token) >= 12 else ""


def pdf_host_list(value: str) -> tuple[str, ...]:
    """`HOST[:PORT],...` as given to --pdf-hosts, lower-cased and checked."""
    hosts: list[str] = []
    for raw in value.split(","):
        host = raw.strip().lower()
        if not host:
            continue
        match = HOST_PORT.fullmatch(host)
        port = match.group("port") if match else None
        if not match or (port is not None and not 0 < int(port) < 65536):
            raise InvalidInput(f"PDF host {raw.strip()!r} must look like host or host:port")
        hosts.append(host)
    if not hosts:
        raise InvalidInput("--pdf-hosts needs at least one host")
    return tuple(dict.fromkeys(hosts))

"""Process settings, read from the environment and validated at start-up.

Every variable is documented in `.env.example`. `load_settings()` turns a validation failure
into a `ConfigError` that names each bad variable and says how to fix it.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from functools import cached_property
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, MultiFernet
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.infra.errors import ConfigError
from shared.infra.netutil import is_loopback_host

FERNET_HINT = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


# Below the Redis clients' 2 s socket timeout, which a `WAIT` must not outlast.
MAX_REPLICA_ACK_MS = 1500
# BRIDGE_REPLICA_ACK_MS when unset and sentinels are: a replica on the same network
# acknowledges in about a millisecond, so this is only ever waited out when none can.
SENTINEL_REPLICA_ACK_MS = 500
SENTINEL_PORT = 26379


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """REDIS_SENTINELS' `host:port` list (comma-separated; an IPv6 address in brackets, as
    `[::1]:26379`; the port 26379 when left out). Raises `ValueError` saying what is wrong."""
    addresses = []
    for number, entry in enumerate(text.split(","), start=1):
        item = entry.strip()
        if not item:
            raise ValueError(f"entry {number} is empty; give host:port pairs separated by commas")
        addresses.append(_sentinel_address(item, number))
    return addresses


def _sentinel_address(item: str, number: int) -> tuple[str, int]:
    where = f"entry {number}"
    if "://" in item:
        raise ValueError(f"{where}: give host:port, not a URL")
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket:
            raise ValueError(f"{where}: an IPv6 address opened with [ is not closed with ]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{where}: not an IPv6 address between the brackets") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{where}: expected :port after the ]")
        port_text = rest[1:] if rest else None
    else:
        if item.count(":") > 1:
            raise ValueError(f"{where}: an IPv6 address goes in brackets, as [::1]:26379")
        host, colon, port_text_or_empty = item.partition(":")
        port_text = port_text_or_empty if colon else None
        if not host or not all(c.isascii() and (c.isalnum() or c in "-._") for c in host):
            raise ValueError(f"{where}: not a host name or IPv4 address")
    if port_text is None:
        return host, SENTINEL_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: the port must be a number from 1 to 65535")
    return host, int(port_text)


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Settings(BaseSettings):
    """The environment variables named in DESIGN.md, plus one optional key namespace."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    # Redis Sentinel (docs/high-availability.md): comma-separated `host:port` of the
    # sentinels; when set, REDIS_URL is not used and the master is asked of them.
    redis_sentinels: str = Field(default="", alias="REDIS_SENTINELS")
    # The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    redis_sentinel_master: str = Field(default="", alias="REDIS_SENTINEL_MASTER")
    # The data nodes' password (`requirepass`), and the sentinels' too: with Sentinel, every
    # sentinel must have the same `requirepass`. With REDIS_URL, instead of one in the URL.
    redis_password: SecretStr | None = Field(default=None, alias="REDIS_PASSWORD")
    # How long the receiver waits for a replica to acknowledge a webhook's write (`WAIT 1
    # <ms>`) before answering 503; workers wait as long before a side effect a lost write
    # could double. 0: off. Unset: 500 with REDIS_SENTINELS, off with REDIS_URL.
    replica_ack_ms_setting: int | None = Field(
        default=None, ge=0, le=MAX_REPLICA_ACK_MS, alias="BRIDGE_REPLICA_ACK_MS"
    )
    secret_key: SecretStr | None = Field(default=None, alias="BRIDGE_SECRET_KEY")
    admin_token: SecretStr | None = Field(default=None, alias="BRIDGE_ADMIN_TOKEN")
    user_agent: str = Field(default="halaxy-bridge (ops@example.com)", alias="BRIDGE_USER_AGENT")
    # The one `api_key` Physitrack support registers for the whole deployment, "the same for
    # all your customers" (therapy-platforms.md 2.1); comma-separated, the first current, a
    # second still accepted while a rotation is under way.
    physitrack_webhook_keys: SecretStr | None = Field(
        default=None, alias="BRIDGE_PHYSITRACK_WEBHOOK_KEYS"
    )
    public_url: str = Field(default="http://127.0.0.1:8000", alias="BRIDGE_PUBLIC_URL")
    log_level: LogLevel = Field(default=LogLevel.INFO, alias="LOG_LEVEL")
    log_format: LogFormat = Field(default=LogFormat.JSON, alias="LOG_FORMAT")
    # Lets two environments (or a test run) share one Redis without seeing each other's keys.
    redis_namespace: str = Field(default="hb", alias="BRIDGE_REDIS_NAMESPACE")
    # How often each process adds what it counted to the shared totals in Redis.
    metrics_push_seconds: float = Field(
        default=5.0, gt=0, le=60, alias="BRIDGE_METRICS_PUSH_SECONDS"
    )
    # How long a connection may send no webhook before the ConnectionQuiet alert.
    quiet_after_seconds: int = Field(default=86_400, ge=60, alias="BRIDGE_QUIET_AFTER_SECONDS")
    audit_retention_days: int = Field(default=365, ge=1, alias="BRIDGE_AUDIT_RETENTION_DAYS")
    # /metrics answers without a credential (401 otherwise: any named admin, or
    # BRIDGE_ADMIN_TOKEN). Only where the receiver's port is reachable by the scraper alone.
    metrics_public: bool = Field(default=False, alias="BRIDGE_METRICS_PUBLIC")
    # The scheduler's pace. A tick renews its 30 s leadership, so it must come well within it.
    scheduler_tick_seconds: float = Field(
        default=5.0, gt=0, le=15, alias="BRIDGE_SCHEDULER_TICK_SECONDS"
    )
    # How long after a connection's last sweep started the next one is due.
    reconcile_every_seconds: float = Field(
        default=300.0, ge=1, le=86_400, alias="BRIDGE_RECONCILE_EVERY_SECONDS"
    )
    # A worker that sent Redis no command for this long is dead: the scheduler puts the
    # messages it held back on their queues. Idle workers poll at least every second.
    # How often each Physitrack practitioner's events are read for programs the webhook missed
    # (Physitrack retries a failed delivery once, 10 minutes later: therapy-platforms.md 2.2).
    program_poll_every_seconds: float = Field(
        default=300.0, ge=1, le=86_400, alias="BRIDGE_PROGRAM_POLL_EVERY_SECONDS"
    )
    worker_heartbeat_timeout_seconds: float = Field(
        default=30.0, ge=2, le=600, alias="BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS"
    )
    # The per-event delivery log keeps at most this many events per connection (the oldest go
    # first), each for 30 days at most.
    event_log_max_per_connection: int = Field(
        default=10_000, ge=10, le=1_000_000, alias="BRIDGE_EVENT_LOG_MAX_PER_CONNECTION"
    )
    # A connection's circuit breaker for an upstream (Halaxy, the platform) opens after this
    # many failures in a row that are the upstream's fault (timeouts, connection errors, 5xx),
    # and lets one probe through this long after it opened (shared/telemetry/breaker.py).
    breaker_failures: int = Field(default=5, ge=1, le=1000, alias="BRIDGE_BREAKER_FAILURES")
    breaker_cooldown_seconds: float = Field(
        default=30.0, ge=1, le=3600, alias="BRIDGE_BREAKER_COOLDOWN_SECONDS"
    )
    # Fair share (docs/isolation.md): the part of all live workers' threads one connection may
    # hold at once while another connection's live work waits and it holds less than that.
    connection_thread_share: float = Field(
        default=0.25, gt=0, le=1, alias="BRIDGE_CONNECTION_THREAD_SHARE"
    )
    # Over this many live events in a minute, a connection's further live events of that minute
    # go to the storm lane, behind every other clinic's live events.
    storm_events_per_minute: int = Field(
        default=300, ge=1, le=1_000_000, alias="BRIDGE_STORM_EVENTS_PER_MINUTE"
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        if not value.strip():
            return ""
        parse_sentinels(value)
        return value.strip()

    @field_validator("redis_sentinel_master")
    @classmethod
    def _check_sentinel_master(cls, value: str) -> str:
        if value and (not value.isprintable() or any(c.isspace() for c in value)):
            raise ValueError("must be the master's name as the sentinels know it, no spaces")
        return value

    @field_validator("redis_password")
    @classmethod
    def _check_redis_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        return value

    @model_validator(mode="after")
    def _check_redis_choice(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError(
                "REDIS_SENTINEL_MASTER is required with REDIS_SENTINELS: the name the "
                "sentinels monitor the master under (`sentinel monitor <name> ...`)"
            )
        if self.redis_password is not None and urlsplit(self.redis_url).password:
            raise ValueError(
                "REDIS_PASSWORD and a password in REDIS_URL are both set: give only one"
            )
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels to ask for the master; none: use the Redis at REDIS_URL."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    @property
    def replica_ack_ms(self) -> int:
        """How long to wait for a replica's acknowledgement (`WAIT`); 0: not at all."""
        if self.replica_ack_ms_setting is not None:
            return self.replica_ack_ms_setting
        return SENTINEL_REPLICA_ACK_MS if self.redis_sentinels else 0

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        for key in value.get_secret_value().split(","):
            try:
                Fernet(key.strip())
            except (ValueError, TypeError):
                raise ValueError(
                    "is not a Fernet key (32 url-safe base64-encoded bytes); "
                    "several keys may be given comma-separated, newest first; " + FERNET_HINT
                ) from None
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 24:
            raise ValueError("must be at least 24 characters (use a random token)")
        return value

    @field_validator("physitrack_webhook_keys")
    @classmethod
    def _check_physitrack_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",")]
        if len(keys) > 2:
            raise ValueError("holds at most two keys: the current one, then the one retiring")
        if any(len(key) < 24 or not key.isprintable() or " " in key for key in keys):
            raise ValueError("each key must be at least 24 printable characters (random)")
        return SecretStr(",".join(keys))

    @property
    def physitrack_keys(self) -> list[str]:
        """The accepted Physitrack webhook `api_key`s, current first; none: endpoint off."""
        if self.physitrack_webhook_keys is None:
            return []
        return self.physitrack_webhook_keys.get_secret_value().split(",")

    @field_validator("user_agent")
    @classmethod
    def _check_user_agent(cls, value: str) -> str:
        # Halaxy's gateway answers 403 to a request without a User-Agent and asks for
        # "APP_VENDOR_NAME (APP_VENDOR_EMAIL)" (reference: halaxy-api.md section 2).
        if not value.strip() or not value.isprintable() or not value.isascii():
            raise ValueError("must be printable ASCII like 'halaxy-bridge (ops@example.com)'")
        return value.strip()

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://bridge.example.com")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("must use https (Halaxy sends the webhook secret in a header)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value.rstrip("/")

    @field_validator("redis_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("must be letters, digits, '-', '_' or '.'")
        return value

    @cached_property
    def fernet(self) -> MultiFernet:
        """The cipher for connection secrets; the first key encrypts, all keys decrypt."""
        if self.secret_key is None:
            raise ConfigError(f"BRIDGE_SECRET_KEY is not set; {FERNET_HINT}")
        keys = self.secret_key.get_secret_value().split(",")
        return MultiFernet([Fernet(key.strip()) for key in keys])


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise `ConfigError` naming every bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"  {name}: {message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None

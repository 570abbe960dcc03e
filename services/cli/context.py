"""What a CLI command needs: settings, the connection store, the Halaxy and Physitrack key
checks."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
import httpx
import redis

from services.cli.output import fail
from shared.connections import (
    Connection,
    ConnectionStore,
    KeyVerifier,
    PlatformKeyVerifier,
    physitrack_key_verifier,
)
from shared.halaxy import key_verifier
from shared.infra import (
    AlreadyConnected,
    AuditTrail,
    ConfigError,
    ConnectionNotFound,
    InvalidInput,
    JobQueue,
    Keys,
    NotFound,
    Settings,
    StoreUnavailable,
    Transient,
    audit_trail,
    checked_actor,
    explained,
    load_settings,
    redis_client,
)


@dataclass(frozen=True)
class CliContext:
    settings: Settings
    redis: redis.Redis
    connections: ConnectionStore
    verify_key: KeyVerifier
    verify_platform_key: PlatformKeyVerifier  # a practitioner's Physitrack key

    @property
    def audit(self) -> AuditTrail:
        return audit_trail(self.redis, self.settings)

    @property
    def user(self) -> str:
        """Who runs the command, for the audit trail: the login name, or the uid where the
        account has none (a container run under an arbitrary uid)."""
        try:
            return checked_actor(getpass.getuser(), "user name")
        except (OSError, KeyError, InvalidInput):
            return f"uid {os.getuid()}"

    def actor(self, by: str | None) -> str:
        """Who acts, for the audit trail: `--by` when given, else the user running the command."""
        return self.user if by is None else checked_actor(by, "--by")

    def connection(self, connection_id: str) -> Connection:
        """The stored connection with this id (enabled or not); `ConnectionNotFound` if none."""
        connection = self.connections.get(connection_id)
        if connection is None:
            raise ConnectionNotFound(f"no connection {connection_id}")
        return connection

    def queue(self) -> JobQueue:
        """The Dramatiq queue, for commands that enqueue (imported only when needed)."""
        from services.workers.messaging import DramatiqJobQueue, build_broker

        return DramatiqJobQueue(build_broker(self.settings, self.redis))


# The commands that act on what exists: a refusal of one for what it names (an unknown
# connection, a dead letter that is not dead, a note no longer waiting, a credential taken) is
# an attempted action, audited (`cli.refused`, the command and the reason's code; never its
# arguments). A refused read (`show`, `list`) is not, nor input refused as malformed (a typing
# mistake that named nothing), nor a refused `add`: the trail is kept for years.
ACTIONS = frozenset(
    {
        "edit",
        "enable",
        "disable",
        "pause",
        "resume",
        "offboard",
        "rotate",
        "remove",
        "replay",
        "purge",
        "resolve",
        "revoke",
    }
)


def refused(ctx: CliContext, code: str) -> None:
    """Audit a refused action of the command running, if it is one (see ACTIONS)."""
    command = click.get_current_context(silent=True)
    if command is None or command.info_name not in ACTIONS:
        return
    ctx.audit.record(
        actor=ctx.user, action="cli.refused", resource_ids=command.command_path, outcome=code
    )


def unavailable_detail(exc: StoreUnavailable, settings: Settings) -> str:
    """The error, and which Redis: host, port and db from REDIS_URL (or the sentinels and
    master name, and which of them failed how), never its password."""
    return explained(settings, exc).detail


@contextmanager
def cli_context(as_json: bool) -> Iterator[CliContext]:
    """Build the context and turn the bridge's errors into a message and an exit code."""
    try:
        settings = load_settings()
        fernet = settings.fernet
    except ConfigError as exc:
        fail(as_json, "config", str(exc))
        raise  # unreachable: fail() exits
    client = redis_client(settings)
    # Key checks while onboarding (Halaxy's token, the platform's key): as the workers' own.
    http = httpx.Client(timeout=httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=5.0))

    ctx = CliContext(
        settings=settings,
        redis=client,
        connections=ConnectionStore(client, Keys(settings.redis_namespace), fernet),
        verify_key=key_verifier(http, settings.user_agent),
        verify_platform_key=physitrack_key_verifier(http, settings.user_agent),
    )
    try:
        yield ctx
    except AlreadyConnected as exc:
        refused(ctx, "already_connected")
        fail(as_json, "already_connected", str(exc))
    except InvalidInput as exc:
        if isinstance(exc, NotFound):
            refused(ctx, "not_found")
        fail(as_json, "invalid", "; ".join([str(exc), *exc.problems]))
    except ConnectionNotFound as exc:
        refused(ctx, "unknown_connection")
        fail(as_json, "unknown_connection", str(exc), exit_code=4)
    except StoreUnavailable as exc:
        fail(as_json, "unavailable", unavailable_detail(exc, settings), exit_code=3)
    except Transient as exc:
        fail(as_json, "unavailable", str(exc), exit_code=3)
    except ConfigError as exc:
        fail(as_json, "config", str(exc))
    finally:
        http.close()
        client.close()

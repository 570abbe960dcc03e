"""Is this Redis fit to hold queued health data? Reachability and durability warnings, and
why it cannot be used, said so a person can fix it (`redis_problem`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.retry
from redis.backoff import NoBackoff

from shared.infra.config import Settings
from shared.infra.errors import StoreUnavailable
from shared.infra.store import (
    PASSWORD_REFUSED,
    redis_client,
    redis_described,
    sentinel_options,
    translate_redis_errors,
)


def durability_warnings(
    persistence: dict[str, Any], memory: dict[str, Any], save_config: str | None
) -> list[str]:
    """Warnings about a Redis that could lose queued work. Pure: takes INFO and CONFIG values.

    `save_config` is the `save` setting, or None when CONFIG GET is not allowed.
    """
    warnings = []
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure it would evict queued "
            "work; set maxmemory-policy noeviction (see deploy/redis.conf)"
        )
    aof_on = str(persistence.get("aof_enabled", "0")) == "1"
    if not aof_on:
        if save_config is None:
            warnings.append(
                "Redis append-only file is off and its snapshot settings cannot be read: "
                "queued work may be lost on a restart; enable appendonly yes"
            )
        elif not save_config.strip():
            warnings.append(
                "Redis keeps nothing on disk (no append-only file, no snapshots): queued work "
                "is lost on a restart; enable appendonly yes (see deploy/redis.conf)"
            )
        else:
            warnings.append(
                "Redis append-only file is off: snapshots alone can lose minutes of queued "
                "work on a crash; enable appendonly yes with appendfsync everysec"
            )
    return warnings


def check_redis(client: redis.Redis, replica_ack_ms: int = 0) -> list[str]:
    """Ping Redis and return its durability warnings; raise `StoreUnavailable` if it is down.
    With `replica_ack_ms` (BRIDGE_REPLICA_ACK_MS), also a warning when no replica is there
    to acknowledge a write."""
    with translate_redis_errors():
        client.ping()
        persistence = client.info("persistence")
        memory = client.info("memory")
        try:
            save_config: str | None = str(client.config_get("save").get("save", ""))
        except redis.exceptions.ResponseError:
            save_config = None  # CONFIG is often disabled on managed Redis
        replicas = int(client.info("replication").get("connected_slaves", 0))
    warnings = durability_warnings(persistence, memory, save_config)
    if replica_ack_ms and not replicas:
        warnings.append(
            "no Redis replica is connected, and BRIDGE_REPLICA_ACK_MS waits for one: every "
            "webhook is answered 503 until one is (docs/high-availability.md)"
        )
    return warnings


NO_RETRY = redis.retry.Retry(NoBackoff(), 0)


@dataclass(frozen=True)
class RedisProblem:
    """Why the Redis the settings name cannot be used. `lasting`: a setting is wrong (a
    password refused, a master name no sentinel knows), so waiting will not mend it and a
    process should stop at start-up; else Redis may come back (restarting, failing over)."""

    detail: str
    lasting: bool
    # The same without any address or name of the deployment's Redis: for an answer anyone
    # who reaches the port may read (/readyz); `detail` goes to the logs and the CLI.
    reason: str = "Redis is unreachable"


def redis_problem(settings: Settings, client: redis.Redis | None = None) -> RedisProblem | None:
    """Ping Redis through `client` (by default one built from the settings): None if it
    answers, else what is wrong. For a process starting, and /readyz."""
    own = client is None
    client = client or redis_client(settings)
    try:
        with translate_redis_errors():
            client.ping()
        return None
    except StoreUnavailable as exc:
        return explained(settings, exc)
    finally:
        if own:
            client.close()


def explained(settings: Settings, exc: StoreUnavailable) -> RedisProblem:
    """`exc` said for a person: with sentinels, each is asked which master it knows, so
    the answer tells an unreachable sentinel from a wrong master name or password. Never a
    password; always which Redis (`redis_described`)."""
    where = redis_described(settings)
    if not settings.sentinel_addresses:
        refused = str(exc) == PASSWORD_REFUSED
        reason = "the password was refused (REDIS_PASSWORD)" if refused else f"{exc}"
        return RedisProblem(f"{exc} ({where})", lasting=refused, reason=reason)
    answers = [_ask_sentinel(settings, host, port) for host, port in settings.sentinel_addresses]
    if "refused" in answers:
        detail = "a sentinel refused the password (REDIS_PASSWORD must be every sentinel's "
        return RedisProblem(
            f"{detail}requirepass too) ({where})",
            lasting=True,
            reason="a sentinel refused the password (REDIS_PASSWORD)",
        )
    masters = [answer for answer in answers if isinstance(answer, tuple)]
    if masters:
        host, port = masters[0]
        reply = _ask_master(settings, host, port)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if reply == "refused":
            detail = f"the master at {shown} refused the password (REDIS_PASSWORD)"
            return RedisProblem(
                f"{detail} ({where})",
                lasting=True,
                reason="the master refused the password (REDIS_PASSWORD)",
            )
        if reply == "unreachable":
            return RedisProblem(
                f"the master the sentinels name, {shown}, is unreachable",
                lasting=False,
                reason="the master the sentinels name is unreachable",
            )
        return RedisProblem(f"{exc} ({where})", lasting=False)
    if "unknown" in answers:
        detail = f"no sentinel knows a master named {settings.redis_sentinel_master!r} "
        return RedisProblem(
            f"{detail}(REDIS_SENTINEL_MASTER) ({where})",
            lasting=True,
            reason="no sentinel knows the master name (REDIS_SENTINEL_MASTER)",
        )
    return RedisProblem(f"no sentinel answered ({where})", False, "no sentinel answered")


def _ask_sentinel(settings: Settings, host: str, port: int) -> str | tuple[str, int]:
    """The master's address as this sentinel knows it, or `unknown`, `refused` (the
    password), `unreachable`."""
    probe = redis.Redis(host=host, port=port, retry=NO_RETRY, **sentinel_options(settings))
    try:
        with translate_redis_errors():
            reply: Any = probe.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", settings.redis_sentinel_master
            )
    except StoreUnavailable as exc:
        return "refused" if str(exc) == PASSWORD_REFUSED else "unreachable"
    except redis.exceptions.ResponseError:
        return "unreachable"  # not a sentinel
    finally:
        probe.close()
    if not reply:
        return "unknown"
    return _text(reply[0]), int(reply[1])


def _ask_master(settings: Settings, host: str, port: int) -> str:
    probe = redis.Redis(host=host, port=port, retry=NO_RETRY, **sentinel_options(settings))
    try:
        with translate_redis_errors():
            probe.ping()
    except StoreUnavailable as exc:
        return "refused" if str(exc) == PASSWORD_REFUSED else "unreachable"
    finally:
        probe.close()
    return "ok"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

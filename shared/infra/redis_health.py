"""Is this Redis fit to hold queued health data? Reachability and durability warnings."""

from __future__ import annotations

from typing import Any

import redis

from shared.infra.store import translate_redis_errors


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


def check_redis(client: redis.Redis) -> list[str]:
    """Ping Redis and return its durability warnings; raise `StoreUnavailable` if it is down."""
    with translate_redis_errors():
        client.ping()
        persistence = client.info("persistence")
        memory = client.info("memory")
        try:
            save_config: str | None = str(client.config_get("save").get("save", ""))
        except redis.exceptions.ResponseError:
            save_config = None  # CONFIG is often disabled on managed Redis
    return durability_warnings(persistence, memory, save_config)

"""`halaxy-bridge probe worker|scheduler`: is a worker (or scheduler) of this host alive?

For container healthchecks (deploy/docker-compose.yml) and Kubernetes exec probes
(deploy/k8s/): the receiver has /healthz and /readyz, the worker and the scheduler serve no
HTTP. Each writes a heartbeat to Redis every few seconds (`shared.ops.liveness`) naming its
host, which is the container's (or pod's) hostname, so the probe, run inside the same
container, looks for a fresh one with its own hostname. One is enough: when one of a
worker's processes dies, Dramatiq stops the others and the container exits, to be restarted.
Exit 0: one is fresh; 1: none is;
3: Redis is unreachable, so nothing can be told (0 with `--redis-down-ok`: restarting a
worker does not bring Redis back).
"""

from __future__ import annotations

import socket

import click

from services.cli.context import unavailable_detail
from services.cli.output import emit, fail, json_option
from shared.infra import (
    ConfigError,
    Keys,
    StoreUnavailable,
    epoch_seconds,
    load_settings,
    redis_client,
)
from shared.ops import Heartbeats, Kind

NOT_ALIVE = 1
REDIS_UNREACHABLE = 3


@click.command()
@click.argument("kind", type=click.Choice([kind.value for kind in Kind]))
@click.option(
    "--redis-down-ok",
    is_flag=True,
    help="Exit 0 when Redis is unreachable (for liveness probes: a restart would not help).",
)
@json_option
def probe(kind: str, redis_down_ok: bool, as_json: bool) -> None:
    """Exit 0 if a worker (or scheduler) on this host wrote a fresh heartbeat, else 1."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(as_json, "config", str(exc))
        raise  # unreachable: fail() exits
    host = socket.gethostname()
    client = redis_client(settings)
    try:
        now = epoch_seconds()
        beats = Heartbeats(client, Keys(settings.redis_namespace), Kind(kind)).read(now)
    except StoreUnavailable as exc:
        unknown = f"cannot tell whether a {kind} on {host} is alive"
        detail = unavailable_detail(exc, settings)  # which Redis, never its password
        if not redis_down_ok:
            fail(as_json, "unavailable", f"{unknown}: {detail}", exit_code=REDIS_UNREACHABLE)
        emit(
            as_json,
            {"kind": kind, "host": host, "alive": None, "redis": "unreachable"},
            f"{unknown}: {detail}; passing (--redis-down-ok)",
        )
        return
    except ConfigError as exc:  # a wrong password, say: a restart would not help either
        fail(as_json, "config", str(exc))
    finally:
        client.close()
    here = [beat for beat in beats if beat.host == host]
    alive = [beat for beat in here if beat.alive(now)]
    if not alive:
        last = f"last seen {now - here[0].seen_at:.0f}s ago" if here else "none seen"
        fail(as_json, "not_alive", f"no {kind} on {host} is alive ({last})", NOT_ALIVE)
    seen_ago = round(now - alive[0].seen_at, 1)
    emit(
        as_json,
        {"kind": kind, "host": host, "alive": len(alive), "seen_seconds_ago": seen_ago},
        f"{len(alive)} {kind} instance(s) alive on {host}, last heartbeat {seen_ago}s ago",
    )

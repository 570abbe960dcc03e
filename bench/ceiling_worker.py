"""P2's ceiling: `dramatiq bench.ceiling_worker`, the floor's broker, middleware and actor
(`bench.floor_actor`) with, as its body, a recorded patient sync's own operations and nothing
else (`bench.ceiling`): its Redis commands and pipelines, sent as the product's client sends
them, and its HTTP requests, sent with the recorded headers and bodies over one pooled
`httpx.Client` per process to a server answering with the recorded answers, each answer's
JSON parsed. No decryption, mapping, domain logic, log line or metric.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from bench.floor_actor import DROPPED_HEADERS, PLAN_FILE, UPSTREAM_URL, broker, declare
from services.workers import settings
from shared.infra.store import redis_client

_plan: dict[str, Any] = pickle.loads(  # noqa: S301  (written by the bench)
    Path(os.environ[PLAN_FILE]).read_bytes()
)
_http = httpx.Client(base_url=os.environ[UPSTREAM_URL])
_redis = redis_client(settings)
_scripts = {sha: _redis.register_script(source) for sha, source in _plan["scripts"].items()}
_requests = [
    (
        op[1],
        op[2],
        [(name, value) for name, value in op[3] if name.lower() not in DROPPED_HEADERS],
        op[4],
    )
    for op in _plan["ops"]
    if op[0] == "http"
]


def _pipeline(transaction: bool, commands: list[tuple[Any, ...]], shas: list[str]) -> None:
    pipe = _redis.pipeline(transaction=transaction)
    pipe.scripts.update(_scripts[sha] for sha in shas)
    for args in commands:
        pipe.execute_command(*args)
    pipe.execute(raise_on_error=False)


def _command(args: tuple[Any, ...]) -> None:
    try:
        _redis.execute_command(*args)
    except redis.exceptions.NoScriptError:
        _redis.script_load(_plan["scripts"][str(args[1])])
        _redis.execute_command(*args)
    except redis.ResponseError:
        pass  # answered: a round trip like any other


def bench_ceiling(**kwargs: Any) -> None:
    """The recorded operations, in their order; each HTTP answer's status checked and its
    JSON parsed."""
    requests = iter(_requests)
    for op in _plan["ops"]:
        if op[0] == "command":
            _command(op[1])
        elif op[0] == "pipeline":
            _pipeline(op[1], op[2], op[3])
        else:
            method, path, headers, body = next(requests)
            response = _http.request(method, path, headers=headers, content=body)
            if response.status_code != op[5]:
                raise RuntimeError(f"{method} {path} answered {response.status_code}")
            if response.content:
                orjson.loads(response.content)


declare(bench_ceiling)

__all__ = ["broker"]

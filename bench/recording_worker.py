"""P2's recorder: `dramatiq bench.recording_worker`, the product's workers (every actor of
`services.workers`) and the no-op floor's actor, writing down every Redis operation and every
HTTP request a message makes while it is processed.

What is recorded is what a worker thread sends between Dramatiq's first "before process
message" hook and its last "after" hook (this module's middleware wraps all the others): each
Redis command or pipeline with its arguments and the scripts it needs, and each HTTP request
with its headers and body and the answer's status, type and body. The broker's own fetches
and acknowledgements run on Dramatiq's consumer threads and are not recorded (the floor makes
them too). One pickled record per message is appended to the file named by
`BENCH_RECORD_FILE`; `bench.ceiling` reads it.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

import dramatiq
import httpx
import redis
import redis.client
import redis.commands.core

RECORD_FILE = "BENCH_RECORD_FILE"
SCRIPT_COMMANDS = ("SCRIPT EXISTS", "SCRIPT LOAD")

_local = threading.local()
_scripts: dict[str, bytes] = {}  # sha -> source, of every script the process registers
_write_lock = threading.Lock()


def _ops() -> list[tuple[Any, ...]] | None:
    ops: list[tuple[Any, ...]] | None = getattr(_local, "ops", None)
    return ops


def _source(script: redis.commands.core.Script) -> bytes:
    text = script.script
    return text.encode() if isinstance(text, str) else bytes(text)


_script_init = redis.commands.core.Script.__init__


def _recording_script_init(self: Any, registered_client: Any, script: Any) -> None:
    _script_init(self, registered_client, script)
    _scripts[self.sha] = _source(self)


_execute_command = redis.client.Redis.execute_command


def _recording_execute_command(self: Any, *args: Any, **options: Any) -> Any:
    ops = _ops()
    if ops is not None and args and args[0] not in SCRIPT_COMMANDS:  # Script's own reloads
        ops.append(("command", args))
    return _execute_command(self, *args, **options)


_immediate = redis.client.Pipeline.immediate_execute_command


def _recording_immediate(self: Any, *args: Any, **options: Any) -> Any:
    ops = _ops()
    if ops is not None and args and args[0] not in SCRIPT_COMMANDS:  # load_scripts' own
        ops.append(("command", args))
    return _immediate(self, *args, **options)


_pipeline_execute = redis.client.Pipeline.execute


def _recording_pipeline_execute(self: Any, raise_on_error: bool = True) -> Any:
    ops = _ops()
    if ops is not None and self.command_stack:
        ops.append(
            (
                "pipeline",
                bool(self.transaction or self.explicit_transaction),
                [command[0] for command in self.command_stack],
                sorted(script.sha for script in self.scripts),
            )
        )
    return _pipeline_execute(self, raise_on_error)


_send = httpx.Client.send


def _recording_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
    response = _send(self, request, **kwargs)
    ops = _ops()
    if ops is not None:
        body = b"" if kwargs.get("stream") else response.read()
        ops.append(
            (
                "http",
                request.method,
                request.url.raw_path.decode(),
                [(k.decode(), v.decode()) for k, v in request.headers.raw],
                request.content,
                response.status_code,
                response.headers.get("content-type", ""),
                body,
            )
        )
    return response


redis.commands.core.Script.__init__ = _recording_script_init  # type: ignore[method-assign]
redis.client.Redis.execute_command = _recording_execute_command  # type: ignore[method-assign]
redis.client.Pipeline.immediate_execute_command = _recording_immediate  # type: ignore[method-assign]
redis.client.Pipeline.execute = _recording_pipeline_execute  # type: ignore[method-assign]
httpx.Client.send = _recording_send  # type: ignore[method-assign]

from bench import noop_worker  # noqa: E402  (after the patches: the product's clients are made here)
from services.workers import broker  # noqa: E402


class RecordMessages(dramatiq.Middleware):
    """Opens a thread's record before every other middleware's hook, writes it after."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        _local.ops = []

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        ops, _local.ops = _ops(), None
        record = {
            "actor": message.actor_name,
            "failed": exception is not None,
            "ops": ops or [],
            "scripts": dict(_scripts),
        }
        with _write_lock, open(os.environ[RECORD_FILE], "ab") as handle:
            pickle.dump(record, handle)

    after_skip_message = after_process_message


broker.add_middleware(RecordMessages(), before=type(broker.middleware[0]))

__all__ = ["broker", "noop_worker"]

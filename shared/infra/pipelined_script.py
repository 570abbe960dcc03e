"""A Lua script whose concurrent calls share Redis round trips.

The calls made while the event loop is busy with other work join one pipeline, sent when the
loop next gets round to it: one write and one read for all of them instead of one each, and
one request for Redis to serve. Each call is still its own script, atomic on its own, and each
caller gets its own reply or error. The pipeline is not a transaction: one call's failure
leaves the others' effects as they are, exactly as separate calls would.

Each call runs at most once only on a client that does not resend a pipeline whose reply was
lost (`shared.infra.store` builds its clients with no retries); on any other, use idempotent
scripts.

With `replica_ack_ms`, each pipeline ends with `WAIT 1 <ms>` (`shared.infra.replication`):
still one round trip, and a call whose write no replica acknowledged gets `NotReplicated`.
The WAIT covers the pipeline's own connection's writes only, so every call must write
something (or fail): a script that wrote nothing could be answered on a write that is not
replicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import NoScriptError

from shared.infra.errors import NotReplicated

# At most this many calls go in one pipeline; any more go in further pipelines, sent alongside.
MAX_PIPELINE = 256

KeyT = str | bytes
ArgT = str | bytes | int | float
_Call = tuple[Sequence[KeyT], Sequence[ArgT], "asyncio.Future[Any]"]


class PipelinedScript:
    """Call it as redis-py's `AsyncScript`: `await script(keys=..., args=...)`. Use it from
    one event loop at a time, as its `redis.asyncio` client must be."""

    def __init__(self, client: redis.asyncio.Redis, source: str, replica_ack_ms: int = 0) -> None:
        self._client = client
        self._replica_ack_ms = replica_ack_ms
        self._script = client.register_script(source)
        self._waiting: list[_Call] = []
        self._send_scheduled_on: asyncio.AbstractEventLoop | None = None
        self._sending: set[asyncio.Task[None]] = set()  # strong references until done

    async def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[ArgT] = ()) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((keys, args, reply))
        if self._send_scheduled_on is not loop:
            self._send_scheduled_on = loop
            loop.call_soon(self._send_waiting)
        return await reply

    def _send_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        self._send_scheduled_on = None
        # A call left by a loop that stopped before sending it has no caller any more.
        calls = [call for call in self._waiting if call[2].get_loop() is loop]
        self._waiting.clear()
        for start in range(0, len(calls), MAX_PIPELINE):
            task = loop.create_task(self._send(calls[start : start + MAX_PIPELINE]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        batch = [call for call in batch if not call[2].done()]  # a cancelled caller's is not sent
        try:
            replies = await self._run(batch) if batch else []
            if any(_no_script(reply) for reply in replies):
                replies = await self._run_again_once_loaded(batch, replies)
            answers = list(zip(batch, replies, strict=True))
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: no caller knows what ran
            answers = [(call, exc) for call in batch]
        for (*_, future), answer in answers:
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _run_again_once_loaded(self, batch: list[_Call], replies: list[Any]) -> list[Any]:
        """Redis restarted or its scripts were flushed. A call refused with NOSCRIPT did not
        run, so it runs again once the script is loaded (unless its caller has gone); the
        others keep their replies."""
        again = [
            n
            for n, ((*_, future), reply) in enumerate(zip(batch, replies, strict=True))
            if _no_script(reply) and not future.done()
        ]
        try:
            self._script.sha = await self._client.script_load(self._script.script)
            rerun = await self._run([batch[n] for n in again])
        except Exception as exc:
            rerun = [exc] * len(again)
        replies = list(replies)
        for n, reply in zip(again, rerun, strict=True):
            replies[n] = reply
        return replies

    async def _run(self, batch: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
        if not self._replica_ack_ms:
            return await pipe.execute(raise_on_error=False)
        pipe.wait(1, self._replica_ack_ms)
        *replies, acknowledged = await pipe.execute(raise_on_error=False)
        if not isinstance(acknowledged, Exception) and int(acknowledged) >= 1:
            return replies
        # A failover now could lose these writes: no caller may act on them (a refusal, a
        # NOSCRIPT to run again, stays what it is).
        not_held = NotReplicated(self._replica_ack_ms)
        return [reply if isinstance(reply, Exception) else not_held for reply in replies]


def _no_script(reply: object) -> bool:
    return isinstance(reply, NoScriptError)

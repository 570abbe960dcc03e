"""A Lua script whose concurrent calls share Redis round trips.

The calls made while the event loop is busy with other work join one pipeline, sent when the
loop next gets round to it: one write and one read for all of them instead of one each, and
one request for Redis to serve. Each call is still its own script, atomic on its own, and each
caller gets its own reply or error. The pipeline is not a transaction: one call's failure
leaves the others' effects as they are, exactly as separate calls would.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import NoScriptError

# At most this many calls go in one pipeline; any more follow in the next.
MAX_PIPELINE = 256

KeyT = str | bytes
ArgT = str | bytes | int | float
_Call = tuple[Sequence[KeyT], Sequence[ArgT], "asyncio.Future[Any]"]


class PipelinedScript:
    def __init__(self, client: redis.asyncio.Redis, source: str) -> None:
        self._client = client
        self._script = client.register_script(source)
        self._waiting: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()  # strong references until done

    async def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[ArgT] = ()) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((keys, args, reply))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return await reply

    def _send_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[:MAX_PIPELINE]
            del self._waiting[:MAX_PIPELINE]
            task = loop.create_task(self._send(batch))
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
        run, so it runs again once the script is loaded; the others keep their replies."""
        again = [call for call, reply in zip(batch, replies, strict=True) if _no_script(reply)]
        try:
            self._script.sha = await self._client.script_load(self._script.script)
            rerun = iter(await self._run(again))
        except Exception as exc:
            rerun = itertools.repeat(exc)
        return [next(rerun) if _no_script(reply) else reply for reply in replies]

    async def _run(self, batch: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


def _no_script(reply: object) -> bool:
    return isinstance(reply, NoScriptError)

"""PipelinedScript: concurrent calls share round trips, and each still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.infra.config import Settings
from shared.infra.errors import StoreUnavailable
from shared.infra.pipelined_script import PipelinedScript
from shared.infra.store import (
    CLIENT_OPTIONS,
    async_redis_client,
    redis_client,
    translate_redis_errors,
)
from tests.redis_server import RedisServer

T = TypeVar("T")

# Appends ARGV[1] to the list KEYS[1] and answers the list's length; refuses 'bad' without
# writing anything, the way a script's own error does.
APPEND = """
if ARGV[1] == 'bad' then
  return redis.error_reply('refused ' .. KEYS[1])
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


def run(settings_url: str, work: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = redis.asyncio.Redis.from_url(settings_url, **CLIENT_OPTIONS)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


class CountingPipelines:
    """Counts the pipelines a client opens: the round trips PipelinedScript makes."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.opened = 0
        original = client.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            self.opened += 1
            return original(*args, **kwargs)

        client.pipeline = pipeline  # type: ignore[method-assign]


@pytest.fixture
def prefix(settings: Settings) -> str:
    return f"{settings.redis_namespace}:pipelined"


def test_calls_made_together_share_one_round_trip_and_get_their_own_replies(
    settings: Settings, redis_server_client: redis.Redis, prefix: str
) -> None:
    async def work(client: redis.asyncio.Redis) -> tuple[list[Any], int]:
        await client.script_load(APPEND)  # else the first pipeline is refused with NOSCRIPT
        pipelines = CountingPipelines(client)
        script = PipelinedScript(client, APPEND)
        replies = await asyncio.gather(
            *(script(keys=[f"{prefix}:{n % 3}"], args=[f"v{n}"]) for n in range(30))
        )
        return replies, pipelines.opened

    replies, opened = run(settings.redis_url, work)
    assert opened == 1
    # Sent in call order, so the list of key n % 3 had n // 3 + 1 items after call n.
    assert replies == [n // 3 + 1 for n in range(30)]
    assert redis_server_client.lrange(f"{prefix}:1", 0, -1) == [
        f"v{n}".encode() for n in range(1, 30, 3)
    ]


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    waves=st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", "bad"])), max_size=12),
        min_size=1,
        max_size=4,
    )
)
def test_each_call_gets_what_the_same_call_alone_would_get(
    settings: Settings, redis_server_client: redis.Redis, prefix: str, waves: list[list[Any]]
) -> None:
    """Waves of concurrent calls, some refused by the script: each caller gets its own reply
    or its own error, and Redis ends as if the calls had run one by one in order."""
    keys = [f"{prefix}:{n}" for n in range(4)]
    redis_server_client.delete(*keys)

    async def work(client: redis.asyncio.Redis) -> list[list[Any]]:
        script = PipelinedScript(client, APPEND)
        answers = []
        for wave in waves:
            calls = (script(keys=[keys[k]], args=[value]) for k, value in wave)
            answers.append(await asyncio.gather(*calls, return_exceptions=True))
        return answers

    answers = run(settings.redis_url, work)
    lengths = dict.fromkeys(keys, 0)
    for wave, wave_answers in zip(waves, answers, strict=True):
        for (k, value), answer in zip(wave, wave_answers, strict=True):
            if value == "bad":
                assert isinstance(answer, redis.exceptions.ResponseError)
                assert str(answer) == f"refused {keys[k]}"
            else:
                lengths[keys[k]] += 1
                assert answer == lengths[keys[k]]
    for key, length in lengths.items():
        assert redis_server_client.llen(key) == length


def test_a_cancelled_caller_leaves_the_others_their_replies(
    settings: Settings, redis_server_client: redis.Redis, prefix: str
) -> None:
    async def work(client: redis.asyncio.Redis) -> list[Any]:
        script = PipelinedScript(client, APPEND)
        calls = [
            asyncio.ensure_future(script(keys=[f"{prefix}:c"], args=[f"v{n}"])) for n in range(5)
        ]
        await asyncio.sleep(0)  # every call is waiting for the pipeline
        calls[2].cancel()
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = run(settings.redis_url, work)
    assert isinstance(answers[2], asyncio.CancelledError)
    # Cancelled before the pipeline was sent, so it did not run.
    assert answers[:2] + answers[3:] == [1, 2, 3, 4]
    assert redis_server_client.lrange(f"{prefix}:c", 0, -1) == [b"v0", b"v1", b"v3", b"v4"]


def test_scripts_flushed_from_redis_are_loaded_again_and_each_call_runs_once(
    private_redis: RedisServer,
) -> None:
    async def work(client: redis.asyncio.Redis) -> tuple[list[Any], list[Any]]:
        script = PipelinedScript(client, APPEND)
        first = await asyncio.gather(*(script(keys=["k"], args=[f"a{n}"]) for n in range(3)))
        await client.script_flush()
        second = await asyncio.gather(*(script(keys=["k"], args=[f"b{n}"]) for n in range(3)))
        return first, second

    first, second = run(private_redis.url, work)
    assert (first, second) == ([1, 2, 3], [4, 5, 6])
    stored = redis.Redis.from_url(private_redis.url).lrange("k", 0, -1)
    assert stored == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]


def test_every_waiting_caller_hears_that_redis_is_gone(private_redis: RedisServer) -> None:
    async def work(client: redis.asyncio.Redis) -> list[Any]:
        script = PipelinedScript(client, APPEND)
        await script(keys=["k"], args=["before"])  # the pool holds an open connection
        private_redis.stop()
        calls = (script(keys=["k"], args=[f"v{n}"]) for n in range(4))
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = run(private_redis.url, work)
    assert all(isinstance(a, redis.exceptions.ConnectionError) for a in answers), answers


def test_a_call_left_behind_by_a_stopped_loop_does_not_stall_the_next_loop(
    settings: Settings, prefix: str
) -> None:
    """The app outlives an event loop in tests (one TestClient after another): a call whose
    loop stopped before sending it must not stop later calls from being sent."""
    client = redis.asyncio.Redis.from_url(settings.redis_url, **CLIENT_OPTIONS)
    script = PipelinedScript(client, APPEND)
    first = asyncio.new_event_loop()
    left = first.create_task(script(keys=[f"{prefix}:l"], args=["left"]))
    first.call_soon(first.stop)  # stops after the call is waiting, before it is sent
    first.run_forever()
    assert not left.done()
    first.close()

    async def later() -> Any:
        try:
            return await asyncio.wait_for(script(keys=[f"{prefix}:l"], args=["later"]), 5)
        finally:
            await client.aclose()

    assert asyncio.run(later()) == 1  # only the later call ran


def test_the_clients_never_resend_a_command_whose_reply_was_lost(settings: Settings) -> None:
    """A resent pipeline would run every script in it twice (PipelinedScript's docstring)."""
    assert redis_client(settings).get_retry().get_retries() == 0  # type: ignore[union-attr]
    assert async_redis_client(settings).get_retry().get_retries() == 0  # type: ignore[union-attr]


def test_scripts_lost_again_once_loaded_reach_the_caller_as_redis_unavailable(
    private_redis: RedisServer,
) -> None:
    """Redis restarting twice in a row: the caller hears 'unavailable' (a 503), not a 500."""

    async def work(client: redis.asyncio.Redis) -> None:
        script = PipelinedScript(client, APPEND)
        load = client.script_load

        async def load_then_lose(source: str) -> Any:
            sha = await load(source)
            await client.script_flush()
            return sha

        client.script_load = load_then_lose  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match="lost its scripts"), translate_redis_errors():
            await script(keys=["k"], args=["v"])

    run(private_redis.url, work)
    assert redis.Redis.from_url(private_redis.url).exists("k") == 0


def test_only_the_calls_refused_with_noscript_run_again(private_redis: RedisServer) -> None:
    """Redis loses its scripts part-way through a pipeline (a SCRIPT FLUSH between two of its
    commands; on a server of this test's own, as it flushes every script): the calls before
    ran and keep their replies, the calls after were refused with NOSCRIPT and run once the
    script is loaded again; none runs twice."""
    key = "mixed"
    flush_before_call = 3

    async def work(client: redis.asyncio.Redis) -> list[Any]:
        await client.script_load(APPEND)
        open_pipeline = client.pipeline
        flushed = False

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = open_pipeline(*args, **kwargs)
            if flushed:
                return pipe
            queue_evalsha, execute = pipe.evalsha, pipe.execute
            queued = 0

            def evalsha(*command: Any) -> Any:
                nonlocal queued, flushed
                if queued == flush_before_call:
                    pipe.script_flush()
                    flushed = True
                queued += 1
                return queue_evalsha(*command)

            async def execute_without_the_flush(**options: Any) -> list[Any]:
                replies: list[Any] = await execute(**options)
                return replies[:flush_before_call] + replies[flush_before_call + 1 :]

            pipe.evalsha = evalsha
            pipe.execute = execute_without_the_flush
            return pipe

        client.pipeline = pipeline  # type: ignore[method-assign]
        script = PipelinedScript(client, APPEND)
        return await asyncio.gather(*(script(keys=[key], args=[f"v{n}"]) for n in range(6)))

    replies = run(private_redis.url, work)
    assert replies[:flush_before_call] == [1, 2, 3]  # ran before the flush
    assert replies[flush_before_call:] == [4, 5, 6]  # refused, then run once loaded
    stored = redis.Redis.from_url(private_redis.url).lrange(key, 0, -1)
    assert stored == [f"v{n}".encode() for n in range(6)]


class ReplyDroppingProxy:
    """A TCP proxy in front of Redis that, once armed, lets a pipeline through, waits for all
    its replies and then closes the client's connection without passing them on: the scripts
    ran, and the client cannot know."""

    def __init__(self, redis_port: int, replies: int) -> None:
        self.redis_port = redis_port
        self.replies = replies  # each an integer reply, one line of RESP
        self.armed = False
        self.dropped = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def requests() -> None:
            while data := await client_r.read(65536):
                redis_w.write(data)
                await redis_w.drain()

        forwarding = asyncio.ensure_future(requests())
        try:
            while data := await redis_r.read(65536):
                if not self.armed:
                    client_w.write(data)
                    await client_w.drain()
                    continue
                while data.count(b"\r\n") < self.replies:
                    more = await redis_r.read(65536)
                    if not more:
                        break
                    data += more
                self.armed = False
                self.dropped += 1
                break
        finally:
            forwarding.cancel()
            client_w.close()
            redis_w.close()


def test_a_lost_reply_fails_every_caller_and_runs_each_script_once(
    settings: Settings, private_redis: RedisServer
) -> None:
    """The connection drops after Redis ran a pipeline's scripts but before their replies
    arrive: every caller hears the store is unavailable (the receiver answers 503 and Halaxy
    may deliver again, when the seen marks make it a duplicate), and no script runs twice,
    because the product's client does not resend."""
    key = "lost"
    calls = 5

    async def main() -> list[Any]:
        loader = redis.asyncio.Redis.from_url(private_redis.url)
        await loader.script_load(APPEND)
        await loader.aclose()
        async with ReplyDroppingProxy(private_redis.port, replies=calls) as proxy:
            proxied = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
            client = async_redis_client(proxied)
            script = PipelinedScript(client, APPEND)
            try:
                await script(keys=[f"{key}:warm"], args=["w"])  # the pool has a connection
                proxy.armed = True

                async def call(n: int) -> Any:
                    with translate_redis_errors():
                        return await script(keys=[key], args=[f"v{n}"])

                answers = await asyncio.gather(
                    *(call(n) for n in range(calls)), return_exceptions=True
                )
                assert proxy.dropped == 1
                answers.append(await script(keys=[key], args=["after"]))  # a new connection
                return answers
            finally:
                await client.aclose()

    answers = asyncio.run(main())
    assert all(isinstance(a, StoreUnavailable) for a in answers[:calls]), answers
    assert answers[calls] == calls + 1
    stored = redis.Redis.from_url(private_redis.url).lrange(key, 0, -1)
    assert stored == [f"v{n}".encode() for n in range(calls)] + [b"after"]

"""P2's ceiling: what one patient sync sends, recorded from a real sync, then replayed alone.

`record_sync` runs a few patient syncs and as many no-op messages through one worker process
of `bench.recording_worker` (one thread, the sandbox answering) and keeps the last of each,
a steady-state sync (its clinic's token already cached). The sync's own operations are its
record less the no-op's (what the product's middleware does for any message, which the
ceiling's no-op-shaped messages get from the same middleware): its Redis commands and
pipelines, in order, with their arguments, and its HTTP requests with their answers.

`bench.ceiling_worker` replays them per message against a copy of the recording's Redis keys
(under the ceiling's own namespace) and against `replay_upstream`, a server in this process
that answers each recorded request with the recorded answer. No decryption, mapping, domain
logic, logging or metrics: what is left of a sync when the bridge's own work is taken out.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import BenchError, Context, namespace, wait_for
from bench.drain import Drain, broker_for, floor_drain, queued
from bench.floor_actor import ACTOR_NAME, PLAN_FILE, UPSTREAM_URL
from bench.loadgen import post_all
from bench.procs import receiver, workers
from bench.sandbox import add_clinics, add_patients, running_sandbox, spread
from services.sandbox.serve import ServerThread
from shared.infra.config import Settings
from shared.infra.jobs import ActorName, QueueName
from shared.infra.store import redis_client

RECORDING_MODULE = "bench.recording_worker"
RECORD_FILE = "BENCH_RECORD_FILE"  # bench.recording_worker writes its records here
RECORDED_SYNCS = 6


@dataclass
class Plan:
    """One sync's own operations, in order: ("command", args), ("pipeline", transaction,
    [args...], [script shas]), ("http", method, path, headers, body, status, type, answer)."""

    ops: list[tuple[Any, ...]]
    scripts: dict[str, bytes]
    namespace: str  # the recording's, in the commands' keys
    state: list[tuple[str, int, bytes]] = field(default_factory=list)  # key suffix, pttl, dump

    def http(self) -> list[tuple[Any, ...]]:
        return [op for op in self.ops if op[0] == "http"]

    def redis_round_trips(self) -> int:
        return sum(1 for op in self.ops if op[0] in ("command", "pipeline"))

    def redis_commands(self) -> int:
        return sum(
            1 if op[0] == "command" else len(op[2])
            for op in self.ops
            if op[0] in ("command", "pipeline")
        )

    def summary(self) -> str:
        requests = ", ".join(f"{op[1]} {op[2].split('?')[0]} ({op[5]})" for op in self.http())
        commands = Counter(
            name
            for op in self.ops
            for name in (
                [_name(op[1])]
                if op[0] == "command"
                else [_name(a) for a in op[2]]
                if op[0] == "pipeline"
                else []
            )
        )
        listed = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(commands.items()))
        return (
            f"{len(self.http())} HTTP requests ({requests}); {self.redis_round_trips()} Redis "
            f"round trips, {self.redis_commands()} commands ({listed})"
        )

    def for_namespace(self, name: str) -> Plan:
        """The plan with its keys moved from the recording's namespace to `name`."""

        def move(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace(self.namespace, name)
            if isinstance(value, bytes):
                return value.replace(self.namespace.encode(), name.encode())
            return value

        ops: list[tuple[Any, ...]] = []
        for op in self.ops:
            if op[0] == "command":
                ops.append(("command", tuple(move(a) for a in op[1])))
            elif op[0] == "pipeline":
                ops.append(
                    ("pipeline", op[1], [tuple(move(a) for a in args) for args in op[2]], op[3])
                )
            else:
                ops.append(op)
        return Plan(ops, self.scripts, name, self.state)


def _name(args: tuple[Any, ...]) -> str:
    first = args[0]
    return (first.decode() if isinstance(first, bytes) else str(first)).upper()


def _signature(op: tuple[Any, ...]) -> tuple[Any, ...]:
    if op[0] == "command":
        return ("command", _name(op[1]))
    if op[0] == "pipeline":
        return ("pipeline", op[1], tuple(_name(a) for a in op[2]))
    return ("http", op[1], op[2])


def own_operations(sync: list[tuple[Any, ...]], noop: list[tuple[Any, ...]]) -> list[Any]:
    """`sync`'s operations less one of each kind `noop` makes too (the middleware's)."""
    left = Counter(_signature(op) for op in noop)
    own = []
    for op in sync:
        signature = _signature(op)
        if left[signature] > 0:
            left[signature] -= 1
        else:
            own.append(op)
    return own


def _records(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.exists():
        with path.open("rb") as handle:
            while True:
                try:
                    records.append(pickle.load(handle))  # noqa: S301  (written by our worker)
                except EOFError:
                    break
    return records


def _snapshot(client: redis.Redis, name: str) -> list[tuple[str, int, bytes]]:
    """The bridge's keys of namespace `name` (not Dramatiq's), as DUMPs."""
    state = []
    for key in client.scan_iter(match=f"{name}:*", count=1000):
        dumped = client.dump(key)
        if dumped is not None:
            ttl = int(client.pttl(key))
            state.append((key.decode()[len(name) :], max(ttl, 0), bytes(dumped)))
    return state


def restore(settings: Settings, plan: Plan) -> None:
    """The recording's keys under `settings`' namespace (the plan's own, moved)."""
    client = redis_client(settings)
    try:
        for suffix, ttl, dumped in plan.state:
            client.restore(f"{settings.redis_namespace}{suffix}", ttl, dumped, replace=True)
        for source in plan.scripts.values():
            client.script_load(source)
    finally:
        client.close()


def record_sync(ctx: Context) -> Plan:
    """A steady-state patient sync's own Redis operations and HTTP requests (module doc)."""
    record_file = ctx.path("p2-recording.pickle")
    record_file.unlink(missing_ok=True)
    with namespace("rec") as settings, running_sandbox() as sandbox:
        [clinic] = add_clinics(settings, sandbox, 1, "Recorded clinic")
        patient_ids = [f"recorded-{n}" for n in range(RECORDED_SYNCS)]
        add_patients(sandbox, patient_ids)
        with receiver(settings, ctx.path("p2-recording-receiver.log")) as web:
            post_all(web.url, spread([clinic], patient_ids), concurrency=1)
        client = redis_client(settings)
        try:
            with broker_for(settings) as broker:
                for number in range(RECORDED_SYNCS):
                    broker.enqueue(
                        dramatiq.Message(
                            queue_name=QueueName.LIVE.value,
                            actor_name=ACTOR_NAME,
                            args=(),
                            kwargs={
                                "connection_id": clinic.id,
                                "resource_id": f"noop-{number}",
                                "event": "patient-created",
                                "event_id": f"noop-{number}",
                            },
                            options={},
                        )
                    )
                with workers(
                    settings,
                    ctx.path("p2-recording-worker.log"),
                    1,
                    module=RECORDING_MODULE,
                    threads=1,
                    env={RECORD_FILE: str(record_file)},
                ):
                    wait_for(lambda: queued(broker) == 0, 120, "the recorded messages")
                    wait_for(
                        lambda: len(_records(record_file)) >= 2 * RECORDED_SYNCS,
                        30,
                        "every message's record",
                    )
            state = _snapshot(client, settings.redis_namespace)
        finally:
            client.close()
        records = _records(record_file)
        # The live actor, or its twin on another lane (`sync_patient_...`).
        syncs = [r for r in records if r["actor"].startswith(ActorName.SYNC_PATIENT.value)]
        noops = [r for r in records if r["actor"] == ACTOR_NAME]
        if not syncs or not noops or any(r["failed"] for r in records):
            raise BenchError(
                f"the recording is incomplete: {len(syncs)} syncs, {len(noops)} no-ops"
            )
        sync, noop = syncs[-1], noops[-1]
        plan = Plan(
            own_operations(sync["ops"], noop["ops"]),
            sync["scripts"],
            settings.redis_namespace,
            state,
        )
    if not plan.http():
        raise BenchError("the recorded sync made no HTTP request")
    return plan


@dataclass
class ReplayUpstream:
    url: str
    answered: Counter[tuple[str, str]]
    unknown: int = 0


@contextmanager
def replay_upstream(plan: Plan) -> Iterator[ReplayUpstream]:
    """A server answering each of the plan's HTTP requests as the sandbox answered it."""
    answers = {(op[1], op[2]): (op[5], op[6], op[7]) for op in plan.http()}

    async def answer(request: Request) -> Response:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        await request.body()
        found = answers.get((request.method, path))
        if found is None:
            upstream.unknown += 1
            return Response(b"", status_code=404)
        upstream.answered[(request.method, path)] += 1
        status, media_type, body = found
        return Response(body, status_code=status, media_type=media_type or None)

    methods = sorted({op[1] for op in plan.http()})
    app = Starlette(routes=[Route("/{path:path}", answer, methods=methods)])
    with ServerThread(app) as server:
        upstream = ReplayUpstream(server.url, Counter())
        yield upstream


def ceiling_drain(ctx: Context, plan: Plan, messages: int, processes: int, log: Path) -> Drain:
    """The ceiling: no-op-shaped messages, each replaying the plan (`bench.ceiling_worker`),
    drained by the same worker settings as the syncs."""
    plan_file = ctx.path("p2-ceiling-plan.pickle")
    with replay_upstream(plan) as upstream:

        def prepare(settings: Settings) -> dict[str, str]:
            moved = plan.for_namespace(settings.redis_namespace)
            restore(settings, moved)
            plan_file.write_bytes(pickle.dumps({"ops": moved.ops, "scripts": moved.scripts}))
            return {PLAN_FILE: str(plan_file), UPSTREAM_URL: upstream.url}

        result = floor_drain(ctx, "bench.ceiling_worker", messages, processes, log, prepare=prepare)
    expected = len(plan.http()) * messages
    if upstream.unknown or sum(upstream.answered.values()) != expected:
        raise BenchError(
            f"the ceiling's {messages} messages made {sum(upstream.answered.values())} known "
            f"and {upstream.unknown} unknown requests, not {expected}"
        )
    return result


__all__ = ["Plan", "ceiling_drain", "record_sync"]

"""The pieces behind cross-process metrics, status and audit, on real Redis: pushes of growth,
no loss while Redis is away, the exposition, the HTTP transport's counts, the audit trail."""

from __future__ import annotations

import secrets
import signal
import subprocess
from datetime import timedelta
from functools import partial
from typing import Any

import dramatiq
import httpx
import orjson
import pytest
import redis
import time_machine
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from services.cli.main import cli
from services.sandbox.serve import ServerThread, free_port
from services.workers.job_metrics import outcome_of
from shared.halaxy.client import new_http_client
from shared.infra.audit import AuditTrail
from shared.infra.clock import epoch_seconds, utcnow
from shared.infra.config import Settings
from shared.infra.errors import StoreUnavailable
from shared.infra.store import Keys
from shared.ops.status import queue_status
from shared.telemetry.activity import read_activity
from shared.telemetry.collect import exposition, totals
from shared.telemetry.definitions import (
    JOB_DURATION,
    JOBS,
    JOBS_NAME,
    LAST_EVENT,
    LAST_EVENT_NAME,
    REGISTRY,
)
from shared.telemetry.http import MeteredClient
from shared.telemetry.push import MetricsPusher, sample_field
from tests.conftest import RUN_NAMESPACE
from tests.helpers import BIN, process_env
from tests.redis_server import RedisServer


def fresh_id() -> str:
    return "cn_" + secrets.token_hex(6)


def parsed(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_a_push_sends_growth_since_the_last_push_and_only_what_came_after_the_pusher(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    cid = fresh_id()
    JOBS.labels("sync_patient", "live", cid, "succeeded").inc(5)  # before: not ours to send
    pusher = MetricsPusher(redis_server_client, keys, interval=60)
    JOBS.labels("sync_patient", "live", cid, "succeeded").inc(2)
    pusher.push()
    JOBS.labels("sync_patient", "live", cid, "succeeded").inc()
    pusher.push()
    pusher.push()  # nothing new: nothing added

    samples = parsed(exposition(list(totals(redis_server_client, keys))))
    labels = {"actor": "sync_patient", "queue": "live", "connection_id": cid}
    key = ("halaxy_bridge_jobs_total", frozenset({**labels, "outcome": "succeeded"}.items()))
    assert samples[key] == 3


def test_two_processes_pushing_add_up(redis_server_client: redis.Redis, keys: Keys) -> None:
    """Two registries stand for two processes with the same metric definitions."""
    cid = fresh_id()
    pushers, counters = [], []
    for _ in range(2):
        registry = CollectorRegistry()
        counters.append(
            Counter(
                "halaxy_bridge_jobs",
                "d",
                ["actor", "queue", "connection_id", "outcome"],
                registry=registry,
            )
        )
        pushers.append(MetricsPusher(redis_server_client, keys, 60, registry))
    counters[0].labels("a", "live", cid, "succeeded").inc(4)
    counters[1].labels("a", "live", cid, "succeeded").inc(3)
    for pusher in pushers:
        pusher.push()
    stored = parsed(exposition(list(totals(redis_server_client, keys))))
    assert sum(v for (n, ls), v in stored.items() if ("connection_id", cid) in ls) == 7


def test_counts_made_while_redis_is_down_go_with_the_next_push(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_connect_timeout=0.5)
    keys = Keys("down-" + secrets.token_hex(3))
    cid = fresh_id()
    pusher = MetricsPusher(client, keys, interval=60)
    JOBS.labels("sync_patient", "live", cid, "dead").inc()
    private_redis.stop()
    with pytest.raises(StoreUnavailable):
        pusher.push()
    pusher.push_quietly()  # logs, never raises: a worker must not fail over metrics
    JOBS.labels("sync_patient", "live", cid, "dead").inc()
    private_redis.start()
    pusher.push()
    samples = parsed(exposition(list(totals(client, keys))))
    assert sum(v for (n, ls), v in samples.items() if ("connection_id", cid) in ls) == 2


class FailingScript:
    """Stands between a pusher and its script: each call runs or fails as `plan` says. 'down'
    fails before Redis runs it; 'lost' runs it, then loses the reply."""

    def __init__(self, script: Any, plan: list[str]) -> None:
        self._script = script
        self.plan = plan

    def __call__(self, **call: Any) -> Any:
        outcome = self.plan.pop(0) if self.plan else "ok"
        if outcome == "down":
            raise redis.exceptions.ConnectionError("Redis is gone")
        reply = self._script(**call)
        if outcome == "lost":
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return reply


@hsettings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from(["ok", "down", "lost"])),
        min_size=1,
        max_size=12,
    )
)
def test_each_count_lands_once_whatever_fails_and_whatever_is_lost(
    redis_server_client: redis.Redis, steps: list[tuple[int, str]]
) -> None:
    """Counts, then a push that lands, fails, or lands with its reply lost: once a push goes
    through at last, the totals and the per-minute counts are what was counted, no more."""
    keys = Keys(f"{RUN_NAMESPACE}-push-{secrets.token_hex(4)}")
    registry = CollectorRegistry()
    jobs = Counter(JOBS_NAME, "d", ["connection_id"], registry=registry)  # kept per minute too
    pusher = MetricsPusher(redis_server_client, keys, 60, registry)
    script = FailingScript(pusher._script, [])
    pusher._script = script  # type: ignore[assignment]
    counted = 0
    for count, outcome in steps:
        jobs.labels("cn").inc(count)
        counted += count
        script.plan = [outcome]
        if outcome == "ok":
            pusher.push()
        else:
            with pytest.raises(StoreUnavailable):
                pusher.push()
    pusher.push()
    field = sample_field(f"{JOBS_NAME}_total", {"connection_id": "cn"})
    total = redis_server_client.hget(keys.metric_totals(), field)
    assert float(total or 0) == counted
    minutes = redis_server_client.scan_iter(match=keys.metric_minute(0)[:-1] + "*")
    assert sum(float(redis_server_client.hget(m, field) or 0) for m in minutes) == counted


def test_histograms_come_out_whole_and_in_order(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    cid = fresh_id()
    pusher = MetricsPusher(redis_server_client, keys, interval=60)
    JOB_DURATION.labels("sync_patient", cid).observe(7.0)
    pusher.push()  # a new series goes whole: its empty low buckets too
    first = parsed(exposition(list(totals(redis_server_client, keys))))
    low = (
        "halaxy_bridge_job_duration_seconds_bucket",
        frozenset({"actor": "sync_patient", "connection_id": cid, "le": "0.01"}.items()),
    )
    assert first[low] == 0
    for seconds in (0.003, 0.2, 0.2):
        JOB_DURATION.labels("sync_patient", cid).observe(seconds)
    pusher.push()
    text = exposition(list(totals(redis_server_client, keys)))
    samples = parsed(text)  # the official parser accepts it
    bucket = "halaxy_bridge_job_duration_seconds_bucket"
    labels = {"actor": "sync_patient", "connection_id": cid}
    assert samples[(bucket, frozenset({**labels, "le": "0.01"}.items()))] == 1
    assert samples[(bucket, frozenset({**labels, "le": "0.25"}.items()))] == 3
    assert samples[(bucket, frozenset({**labels, "le": "+Inf"}.items()))] == 4
    count = ("halaxy_bridge_job_duration_seconds_count", frozenset(labels.items()))
    assert samples[count] == 4
    lines = [line for line in text.decode().splitlines() if cid in line and "_bucket" in line]
    bounds = [float(line.split('le="')[1].split('"')[0]) for line in lines]
    assert bounds == sorted(bounds)


def test_the_latest_time_wins_across_processes(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    cid = fresh_id()
    registry = CollectorRegistry()
    older = Gauge(LAST_EVENT_NAME, "d", ["connection_id"], registry=registry)
    pusher = MetricsPusher(redis_server_client, keys, 60)
    late = MetricsPusher(redis_server_client, keys, 60, registry)
    LAST_EVENT.labels(cid).set(2_000_000_000)
    older.labels(cid).set(1_000_000_000)  # another process, pushing an older time later
    pusher.push()
    late.push()
    assert (
        read_activity(redis_server_client, keys, epoch_seconds()).last_event[cid] == 2_000_000_000
    )


def test_status_counts_failures_of_the_last_hour_only(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    cid = fresh_id()
    pusher = MetricsPusher(redis_server_client, keys, 60)
    JOBS.labels("sync_patient", "live", cid, "retried").inc(2)
    JOBS.labels("sync_patient_bulk", "bulk", cid, "dead").inc()
    JOBS.labels("sync_patient", "live", cid, "succeeded").inc(6)
    JOBS.labels("sync_patient", "live", cid, "deferred").inc(9)  # waiting is not failing
    pusher.push()
    now = epoch_seconds()
    activity = read_activity(redis_server_client, keys, now)
    assert activity.failures_last_hour[cid] == 3
    assert activity.processed_last_hour[cid] == 18
    assert activity.throughput_per_minute("bulk") == pytest.approx(1 / 5)
    later = read_activity(redis_server_client, keys, now + 3700)
    assert later.failures_last_hour[cid] == 0


class _Proxy:
    def __init__(self, failed: bool, options: dict[str, object] | None = None) -> None:
        self.failed = failed
        self.options = options or {}


@pytest.mark.parametrize(
    ("failed", "exception", "options", "expected"),
    [
        (False, None, {}, "succeeded"),
        (False, None, {"bridge_dropped": True}, "dropped"),
        (True, RuntimeError("x"), {}, "dead"),
        (False, RuntimeError("x"), {}, "retried"),
    ],
)
def test_job_outcomes(
    failed: bool, exception: BaseException | None, options: dict[str, object], expected: str
) -> None:
    assert outcome_of(_Proxy(failed, options), exception) == expected


def test_a_deferral_is_not_a_failure() -> None:
    assert outcome_of(_Proxy(False), dramatiq.Retry("later", delay=10)) == "deferred"


def test_the_client_counts_by_target_and_status_and_errors() -> None:
    cid = fresh_id()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.example":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(404 if request.url.path == "/missing" else 200)

    targets = {("au-api.halaxy.com", 443): "halaxy", ("pt.example", 443): "platform"}
    with MeteredClient(cid, targets, transport=httpx.MockTransport(answer)) as http:
        http.get("https://au-api.halaxy.com/main/Patient/1")
        http.get("https://pt.example/missing")
        http.get("https://files.example/a.pdf")
        with pytest.raises(httpx.ConnectError):
            http.get("https://down.example/x")

    def count(target: str, status: str) -> float | None:
        labels = {"connection_id": cid, "target": target, "status": status}
        return REGISTRY.get_sample_value("halaxy_bridge_upstream_requests_total", labels)

    assert count("halaxy", "200") == 1
    assert count("platform", "404") == 1
    assert count("other", "200") == 1
    assert count("other", "error") == 1


def test_audit_trail_filters_and_keeps_order(redis_server_client: redis.Redis, keys: Keys) -> None:
    trail = AuditTrail(redis_server_client, keys)
    for n in range(1203):  # more than one page of the stream
        trail.record(
            actor="worker",
            action="platform.patient_created",
            connection_id="a",
            resource_ids=f"Patient/{n}",
        )
    trail.record(actor="ops", action="connection.disabled", connection_id="b")
    newest = trail.entries(connection_id="a", limit=1000)
    assert len(newest) == 1000
    assert newest[-1].resource_ids == "Patient/1202"
    assert newest[0].resource_ids == "Patient/203"
    assert [e.action for e in trail.entries(action="connection.")] == ["connection.disabled"]
    future = utcnow() + timedelta(minutes=1)
    assert trail.entries(since=future) == []


def test_audit_entries_older_than_the_retention_are_trimmed(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    redis_server_client.xadd(keys.audit(), {"action": "ancient"}, id="1000-0")
    AuditTrail(redis_server_client, keys, retention=timedelta(days=1)).record(
        actor="ops", action="connection.added"
    )
    assert [e.action for e in AuditTrail(redis_server_client, keys).entries()] == [
        "connection.added"
    ]


def test_the_audit_trail_keeps_time_by_the_bridges_clock_whatever_redis_says(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    """Retention and `since` compare the bridge's clock with entry times: those are its clock
    too, so a Redis whose clock is off neither trims new entries nor hides them."""
    trail = AuditTrail(redis_server_client, keys, retention=timedelta(days=30))
    start = utcnow()
    with time_machine.travel(start - timedelta(days=31)):
        trail.record(actor="ops", action="too.old")
    with time_machine.travel(start - timedelta(days=29)):
        trail.record(actor="ops", action="kept")
    with time_machine.travel(start + timedelta(days=365)):  # Redis's clock stays where it is
        trail.record(actor="ops", action="a.year.on")
        assert [e.action for e in trail.entries()] == ["a.year.on"]
        since = utcnow() - timedelta(hours=1)
        assert [e.action for e in trail.entries(since=since)] == ["a.year.on"]
        assert trail.entries()[0].at.startswith(str(utcnow().year))
    trail.record(actor="ops", action="clock.behind")  # a writer whose clock is behind the newest
    assert [e.action for e in trail.entries()] == ["a.year.on", "clock.behind"]


@hsettings(max_examples=60, deadline=None)
@given(since=st.text(max_size=40))
def test_audit_since_gets_a_clear_error_not_a_crash(since: str) -> None:
    """Whatever `--since` says, the command answers: entries, or a one-line error, exit 2."""
    result = CliRunner().invoke(cli, ["audit", "--since", since, "--json"])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "since" in result.output or "Error" in result.output


@pytest.mark.parametrize("redis_up", [True, False])
def test_status_watch_refreshes_and_outlasts_a_redis_outage(
    settings: Settings, redis_up: bool
) -> None:
    env = process_env(settings)
    if not redis_up:
        env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    command = [str(BIN / "halaxy-bridge"), "status", "--watch", "--json", "--interval", "0.5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        lines = [orjson.loads(process.stdout.readline()) for _ in range(2)]
        assert process.poll() is None  # still watching
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    assert process.returncode == 0  # Ctrl-C ends a watch quietly
    if redis_up:
        assert all({"queues", "connections", "generated_at"} <= set(line) for line in lines)
    else:
        assert all(line["error"] == "unavailable" for line in lines)


def test_an_audit_entry_redis_missed_is_logged_and_the_action_stands() -> None:
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with capture_logs() as logs:
        AuditTrail(unreachable, Keys("nowhere")).record(
            actor="ops", action="connection.rotated", connection_id="cn_x"
        )  # no exception: the rotation happened and must be shown to whoever did it
    assert [(e["event"], e["action"]) for e in logs] == [
        ("audit.not_recorded", "connection.rotated")
    ]


def test_the_oldest_age_of_a_retried_message_counts_from_its_return_to_the_queue(
    redis_server_client: redis.Redis, keys: Keys
) -> None:
    queue = f"{keys.dramatiq_namespace()}:live"
    now = epoch_seconds()
    message = {
        "message_timestamp": int((now - 3600) * 1000),
        "options": {"eta": int((now - 30) * 1000)},
    }
    redis_server_client.rpush(queue, "m1")
    redis_server_client.hset(f"{queue}.msgs", "m1", orjson.dumps(message))
    [live, _, _] = queue_status(redis_server_client, keys, now=now)  # live, storm, bulk
    assert 29 <= live["oldest_age_seconds"] <= 31


@pytest.mark.parametrize(("since", "exit_code"), [("999999d", 2), ("1900-01-01T00:00:00Z", 0)])
def test_audit_since_at_the_extremes(since: str, exit_code: int) -> None:
    result = CliRunner().invoke(cli, ["audit", "--since", since, "--json"])
    assert result.exit_code == exit_code, result.output


def test_the_metered_client_still_goes_through_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Egress proxies (HTTP_PROXY, HTTPS_PROXY) apply as to any httpx client."""
    seen: list[str] = []

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"via proxy"})

    with ServerThread(proxy) as server:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with new_http_client(partial(MeteredClient, fresh_id(), {})) as http:
            response = http.get("http://platform.example.invalid/api/v2/clients")
    assert response.text == "via proxy"
    assert seen

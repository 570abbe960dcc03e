"""The benchmarks (bench/, `make bench`) run at a tiny size and each produces its rows.

Nothing here asserts a timing: these machines are shared and noisy. Each benchmark runs in a
process of its own (`python -m bench --size tiny --only Pn`) against the Redis at REDIS_URL,
under a key namespace of its own that it removes afterwards.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from bench import report
from bench.ceiling import Plan, own_operations
from bench.common import Row
from bench.procs import receiver_command, worker_command
from bench.run import BENCHMARKS
from bench.sandbox import running_sandbox, timed
from tests.helpers import BIN

pytestmark = pytest.mark.dateless  # reads no date: left out of the year-ahead run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_each_benchmark_runs_at_a_tiny_size_and_produces_its_rows(
    benchmark: str, tmp_path: Path
) -> None:
    rows_file = tmp_path / "rows.json"
    process = subprocess.Popen(
        [
            str(BIN / "python"),
            "-m",
            "bench",
            "--size",
            "tiny",
            "--only",
            benchmark,
            "--doc",
            str(tmp_path / "performance.md"),
            "--json",
            str(rows_file),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        raw, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.terminate()  # the runner unwinds on SIGTERM and stops what it started
        raw, _ = process.communicate(timeout=60)
        pytest.fail("the benchmark did not finish in 240 s:\n" + raw.decode()[-3000:])
    output = raw.decode()
    assert process.returncode == 0, output[-3000:]
    rows = orjson.loads(rows_file.read_text())
    assert rows, output[-3000:]
    for row in rows:
        assert row["id"].split(" ")[0] == benchmark  # "P2 (vs ceiling)" is a row of P2
        for key in ("figure", "floor", "ratio"):
            assert isinstance(row[key], float), row
            assert math.isfinite(row[key]), row
        assert row["floor"] > 0, row
        assert row["target"], row
        assert isinstance(row["passed"], bool), row
    document = (tmp_path / "performance.md").read_text()
    assert "## Machine" in document
    assert "| # | figure | value | floor | ratio | target | result |" in document


def test_the_hand_written_section_survives_a_rewrite(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    row = Row("P9", "a figure", 2.0, 4.0, "/s", "a floor", "ratio ≥ 0.25", True, ["a note"])
    first = report.document([row], {"CPU": "x"}, "tiny", {}, [], report.DEFAULT_KEPT, 1.0)
    doc.write_text(first.replace(report.DEFAULT_KEPT, "What we found.\n\n| a | b |"))
    again = report.document([row], {"CPU": "y"}, "tiny", {}, [], report.kept_section(doc), 1.0)
    assert "What we found.\n\n| a | b |" in again
    assert "| P9 | a figure | 2.0 /s | 4.0 /s (a floor) | 0.50 | ratio ≥ 0.25 | pass |" in again


def test_the_benchmarks_start_the_procfile_commands() -> None:
    _, web = receiver_command(8123)
    assert Path(web[0]).name == "uvicorn"
    assert "services.webhook_receiver.app:app" in web
    assert web[web.index("--port") + 1] == "8123"
    assert web[web.index("--host") + 1] == "127.0.0.1"
    _, floor = receiver_command(8123, app="bench.floor_app:app")
    assert "bench.floor_app:app" in floor
    assert "services.webhook_receiver.app:app" not in floor
    _, worker = worker_command(2, module="bench.noop_worker")
    assert Path(worker[0]).name == "dramatiq"
    assert "bench.noop_worker" in worker
    assert worker[worker.index("--processes") + 1] == "2"


def test_the_contract_rows_are_benchmarks_of_their_own() -> None:
    assert {"P2", "P4b", "P7", "P8"} <= set(BENCHMARKS)


def test_the_ceiling_keeps_a_syncs_own_operations_and_drops_the_middlewares() -> None:
    middleware = ("command", ("EVALSHA", "paused-sha", 2, "ns:paused", "ns:held:cn_1"))
    sync = [
        middleware,
        ("command", ("GET", "ns:connection:cn_1")),
        ("http", "GET", "/main/Patient/p1", [], b"", 200, "application/json", b"{}"),
        ("pipeline", False, [("HGET", "ns:links:cn_1", "p1"), ("HSETNX", "ns:x", "p1", "1")], []),
        ("command", ("EVALSHA", "event-log-sha", 1, "ns:event-log:cn_1")),
    ]
    noop = [middleware, ("command", ("EVALSHA", "event-log-sha", 1, "ns:event-log:cn_9"))]
    own = own_operations(sync, noop)
    assert own == sync[1:4]
    plan = Plan(own, {}, "ns").for_namespace("other")
    assert plan.ops[0] == ("command", ("GET", "other:connection:cn_1"))
    assert plan.ops[2][2][0] == ("HGET", "other:links:cn_1", "p1")
    assert (plan.redis_round_trips(), plan.redis_commands(), len(plan.http())) == (2, 3, 1)


def test_the_bench_sandbox_hangs_one_platform_key_until_released() -> None:
    with running_sandbox() as sandbox:
        platform = timed(sandbox)
        stuck, fine = platform.add_key(), platform.add_key()
        platform.hanging.add(stuck)
        url = f"{sandbox.physitrack_url}/clients"
        assert httpx.get(url, headers={"X-Api-Key": fine}).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, headers={"X-Api-Key": stuck}, timeout=0.5)
        platform.release_hanging()
        assert httpx.get(url, headers={"X-Api-Key": stuck}).status_code == 503
        assert platform.hung == 2

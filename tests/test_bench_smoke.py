"""The benchmarks (bench/, `make bench`) run at a tiny size and each produces its rows.

Nothing here asserts a timing: these machines are shared and noisy. Each benchmark runs in a
process of its own (`python -m bench --size tiny --only Pn`) against the Redis at REDIS_URL,
under a key namespace of its own that it removes afterwards.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import orjson
import pytest

from bench import report
from bench.common import Row
from bench.procs import receiver_command, worker_command
from bench.run import BENCHMARKS
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
        assert row["id"] == benchmark
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

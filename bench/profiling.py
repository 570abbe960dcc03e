"""py-spy profiles of a process under load, summarised as text.

`profiled(ctx, pid, name)` records the process (and its children: Dramatiq's forked workers)
while the block runs, in py-spy's raw format, sampling only the thread that holds the GIL
(`--gil`): where the interpreter's time goes, which is what limits a CPU-bound Python process
(time in C with the GIL released, socket I/O say, is not in it). It then writes and prints a
summary: time by package, the functions with the most time of their own, and the product
functions with the most time under them.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import BIN, ROOT, BenchError, Context

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PRODUCT = ("services/", "shared/")


def py_spy() -> str:
    local = BIN / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("py-spy is not installed: pip install -e '.[bench]'")
    return found


@contextmanager
def profiled(ctx: Context, pid: int, name: str, rate: int = 200) -> Iterator[None]:
    """Record `pid` with py-spy while the block runs (nothing unless `ctx.profile`)."""
    if not ctx.profile:
        yield
        return
    raw = ctx.path(f"profile-{name}.txt")
    log = ctx.path(f"profile-{name}.log").open("wb")
    recorder = subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)  # let it attach before the load starts
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
        log.close()
    if raw.exists():
        summary = summarize(raw, title=name)
        ctx.path(f"profile-{name}.md").write_text(summary)
        ctx.say(summary)


def _short(path: str) -> str:
    """A frame's file as `package/module.py` (site-packages) or repository-relative."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    root = str(ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    if "/lib/python3" in path:
        return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path


def _frame(text: str) -> tuple[str, str]:
    """(function, short file) of one collapsed-stack frame."""
    match = FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match.group("function"), _short(match.group("file"))


def _package(file: str) -> str:
    if file.startswith(PRODUCT):
        return "/".join(file.split("/")[:2])
    if file.startswith("stdlib/"):
        return "stdlib/" + file.split("/")[1].removesuffix(".py")
    return file.split("/")[0].removesuffix(".py") or "?"


def summarize(raw: Path, title: str, top: int = 20) -> str:
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]]  # process and thread labels have no file
        if not frames:
            continue
        total += count
        function, file = frames[-1]
        own[f"{function} ({file})"] += count
        packages[_package(file)] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames if fl.startswith(PRODUCT)}:
            under[name] += count
    if total == 0:
        return f"### Profile: {title}\n\nno samples\n"

    def table(counter: Counter[str], heading: str) -> list[str]:
        rows = [f"| {heading} | share |", "|---|---:|"]
        rows += [f"| `{k}` | {v / total:.1%} |" for k, v in counter.most_common(top)]
        return rows

    lines = [
        f"### Profile: {title}",
        "",
        f"{total} samples of the thread holding the GIL (py-spy --gil).",
        "",
        *table(packages, "time spent in (package of the innermost frame)"),
        "",
        *table(own, "function (own time)"),
        "",
        *table(under, "product function (time under it)"),
        "",
    ]
    return "\n".join(lines)

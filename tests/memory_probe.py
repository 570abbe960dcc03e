"""Run one note write in a process of its own and report its peak Python memory.

Usage: python -m tests.memory_probe CONNECTION_ID NOTE_ID (settings from the environment).
Prints one JSON line: the outcome, the tracemalloc peak, and the max RSS before and after.
"""

from __future__ import annotations

import resource
import sys
import tracemalloc

import orjson

from services.workers.runtime import WorkerRuntime
from shared.infra.clock import utcnow
from shared.infra.config import load_settings
from shared.notes.writer import write_note


def main(connection_id: str, note_id: str) -> None:
    runtime = WorkerRuntime(load_settings())
    services = runtime.services(connection_id)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = write_note(
        connection=services.connection,
        note_id=note_id,
        outbox=runtime.outbox,
        fetcher=services.pdfs,
        halaxy=services.halaxy,
        audit=runtime.audit,
        now=utcnow(),
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "outcome": result.outcome.value,
        "peak_bytes": peak,
        "maxrss_kib": maxrss,
        "maxrss_before_kib": rss_before,
    }
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

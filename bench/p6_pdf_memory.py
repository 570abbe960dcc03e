"""P6: peak RSS of a worker writing back ten 19 MB PDFs.

One worker process (the Procfile's line); ten program-assigned callbacks, each for a 19 MiB
PDF served by the sandbox Physitrack, are posted to the real receiver at once, so the worker's
threads write several notes at the same time (fetch to a temporary file, base64 streamed into
the DocumentReference POST). The worker's idle RSS is read once it is ready, then the kernel's
peak-RSS mark is reset (`/proc/PID/clear_refs`) and read again when all ten notes are in the
sandbox Halaxy (`VmHWM`; a 10 ms sampler of `VmRSS` backs it up). Figure: the peak's growth
over the idle baseline; the absolute peak is in the notes. The ratio uses the growth, because
the idle worker's resident Python, libraries and connection pools do not depend on the PDFs.
Floor: the size of one PDF. Target: growth at most 4 times one PDF.
"""

from __future__ import annotations

import threading
import time

import orjson

from bench.common import BenchError, Context, Row, fmt, namespace, wait_for
from bench.drain import broker_for, queued
from bench.procs import receiver, reset_peak_rss, status_kib, workers
from bench.sandbox import add_clinics, running_sandbox
from services.sandbox.halaxy import patient_resource
from services.sandbox.pdfs import make_pdf
from services.sandbox.physitrack import program_callback

ID = "P6"
PATIENT = "1001"
TARGET = 4.0
MIB = 1024 * 1024


class RssSampler:
    """The highest VmRSS of a process, sampled every 10 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run(ctx: Context) -> list[Row]:
    size = ctx.size
    pdf = make_pdf("Big program", size=size.p6_pdf_bytes)
    with namespace("p6") as settings, running_sandbox() as sandbox:
        [connection] = add_clinics(settings, sandbox, 1, "P6 clinic")
        sandbox.halaxy.patients[PATIENT] = patient_resource(PATIENT)
        server = sandbox.physitrack_url.removesuffix("/api/v2")
        urls = [server + sandbox.physitrack.publish_pdf(pdf) for _ in range(size.p6_pdfs)]
        with (
            receiver(settings, ctx.path("p6-receiver.log")) as web,
            workers(settings, ctx.path("p6-worker.log"), processes=1) as running,
            broker_for(settings) as broker,
        ):
            [pid] = running.worker_pids()
            time.sleep(1.0)  # let the freshly booted worker settle
            idle_kib = status_kib(pid, "VmRSS")
            exact = reset_peak_rss(pid)
            started = time.monotonic()
            with RssSampler(pid) as sampler:
                for number, url in enumerate(urls):
                    body = program_callback(
                        api_key=connection.program_api_key.get_secret_value(),
                        file_url=url,
                        patient_id=PATIENT,
                        name=f"Program {number}",
                    )
                    response = _post(web.url, connection.id, body)
                    if response != 202:
                        raise BenchError(f"the program callback was answered {response}")
                wait_for(
                    lambda: len(sandbox.halaxy.notes) >= len(urls) and queued(broker) == 0,
                    600,
                    "every note to be posted",
                    poll=0.05,
                )
            seconds = time.monotonic() - started
            peak_kib = status_kib(pid, "VmHWM") if exact else sampler.peak_kib
            command = running.command
        sizes = [n["attachments"][0]["size"] for n in sandbox.halaxy.notes]
    if sizes != [len(pdf)] * len(urls):
        raise BenchError(f"the notes in Halaxy have attachments of {sizes} bytes")
    growth = (peak_kib - idle_kib) * 1024
    return [
        Row(
            id=ID,
            what=f"worker RSS growth, {len(urls)} PDFs of {len(pdf) / MIB:.0f} MiB",
            figure=growth / MIB,
            floor=len(pdf) / MIB,
            unit="MiB",
            floor_what="one PDF",
            target=f"≤ {TARGET:.0f} x one PDF",
            passed=growth <= TARGET * len(pdf),
            notes=[
                f"`{command}`; {len(urls)} notes posted in {seconds:.1f} s",
                f"absolute peak RSS {fmt(peak_kib / 1024)} MiB "
                f"(= {peak_kib * 1024 / len(pdf):.1f} x the PDF) over an idle "
                f"{fmt(idle_kib / 1024)} MiB; peak read from "
                f"{'VmHWM after a reset' if exact else 'VmRSS sampled every 10 ms'}, "
                f"sampled VmRSS peak {fmt(sampler.peak_kib / 1024)} MiB",
            ],
        )
    ]


def _post(base_url: str, connection_id: str, body: dict[str, object]) -> int:
    import httpx

    response = httpx.post(
        f"{base_url}/webhooks/programs/{connection_id}",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    return response.status_code

"""Reconcile and backfill: find the patients webhooks may have missed, queue them as bulk work.

Halaxy documents no webhook retries (halaxy-api.md section 1.6), so a sweep per connection
asks for the patients changed since the last sweep (`_lastUpdated=gt…`, with a little
overlap, following `link[next]`). A connection never swept gets every patient: the backfill.
Queued syncs are idempotent, so overlap and repeats cost a Halaxy read, never a write.

A sweep is saved after each page and resumed where it stopped: a clinic's backfill runs into
its own Halaxy rate limit (its syncs spend the same budget), and one started over from the
first page at every tick would never finish. Each call also stops after PAGES_PER_CALL
pages, so one connection's turn in a scheduler tick stays short (the scheduler renews its
leadership before each turn), and a walk that never ends is given up after MAX_SWEEP_PAGES.

Halaxy pages a search by offset (`page=N` in its links: halaxy-api.md, "Pagination"), and in
an order it does not document. A patient that leaves the results before the saved page
between two calls (deleted, or moved to the end by an update if the order is by time) moves
every later one a place up: the first patient of the saved page lands on the page already
walked. So a resumed walk first reads the page before its saved link again and queues from it
the patients that page did not hold the first time; that read is not one of the call's
PAGES_PER_CALL. If nothing but that read got through (the rate limit), the next call goes on
from the saved link without it, so a walk moves on even one request per call; if Halaxy
refuses that read (a page number it did not give out itself), the call goes on from the
saved link at once. A patient that leaves the results between two reads of the same call can
still make the walk skip one: those are a request apart, the calls minutes apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import redis
import structlog

from shared.halaxy.client import HalaxyClient
from shared.infra.clock import iso_now
from shared.infra.codec import RecordCodec
from shared.infra.errors import BridgeError, Permanent, RateLimited, UnreadableRecord
from shared.infra.jobs import ActorName, Job, JobQueue, QueueName
from shared.infra.store import Keys, as_bytes, translate_redis_errors

log = structlog.get_logger("halaxy_bridge.reconcile")

SWEEP_EVERY = timedelta(minutes=5)  # BRIDGE_RECONCILE_EVERY_SECONDS's default
OVERLAP = timedelta(minutes=2)  # clocks and Halaxy's indexing are not exact
PAGE_SIZE = "100"
# New pages a call walks (1,000 patients; 11 requests with the page read again): seconds,
# against the scheduler's 30 s leadership.
PAGES_PER_CALL = 10
MAX_SWEEP_PAGES = 10_000  # a million patients; past this Halaxy's next links do not end


class SweepKind(StrEnum):
    BACKFILL = "backfill"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class Sweep:
    connection_id: str
    kind: SweepKind
    started_at: str
    finished_at: str
    patients_queued: int


@dataclass(frozen=True)
class SweepProgress:
    """A sweep stopped part-way: where it resumes."""

    kind: SweepKind
    started_at: str
    next_url: str
    patients_queued: int
    pages: int = 0
    # The patients of the page before `next_url`; None in a walk saved by the version before.
    last_page_ids: tuple[str, ...] | None = None
    read_again: bool = False  # the last call got no further than reading that page again


Record = TypeVar("Record", Sweep, SweepProgress)
SWEEP = RecordCodec(Sweep)
SWEEP_PROGRESS = RecordCodec(SweepProgress)


class SweepLog:
    """The last finished sweep of each connection (what `status` shows), and the sweep under
    way, if one stopped part-way."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._key = keys.last_sweep()
        self._progress_key = keys.sweep_progress()

    def last(self, connection_id: str) -> Sweep | None:
        """The last finished sweep; None when there is none, or when its record cannot be
        read: the next sweep then walks every patient again (a backfill), which costs Halaxy
        reads, never a write, since queued syncs are idempotent."""
        return self._read(self._key, SWEEP, connection_id)

    def record(self, sweep: Sweep) -> None:
        """Record a finished sweep; the progress of its walk is not needed any more."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._key, sweep.connection_id, SWEEP.encode(sweep))
        pipe.hdel(self._progress_key, sweep.connection_id)
        with translate_redis_errors():
            pipe.execute()

    def progress(self, connection_id: str) -> SweepProgress | None:
        """The sweep under way; None when there is none, or when its record cannot be read
        (written by another version during a deploy): a new walk then replaces it."""
        return self._read(self._progress_key, SWEEP_PROGRESS, connection_id)

    def _read(self, key: str, codec: RecordCodec[Record], connection_id: str) -> Record | None:
        with translate_redis_errors():
            raw = self._redis.hget(key, connection_id)
        if raw is None:
            return None
        try:
            return codec.decode(as_bytes(raw))
        except UnreadableRecord:
            log.warning("reconcile.unreadable", record=codec.name, connection_id=connection_id)
            return None

    def save_progress(self, connection_id: str, progress: SweepProgress) -> None:
        with translate_redis_errors():
            self._redis.hset(self._progress_key, connection_id, SWEEP_PROGRESS.encode(progress))

    def forget_progress(self, connection_id: str) -> None:
        with translate_redis_errors():
            self._redis.hdel(self._progress_key, connection_id)


def due(last: Sweep | None, now: datetime, every: timedelta = SWEEP_EVERY) -> bool:
    return last is None or now - datetime.fromisoformat(last.started_at) >= every


def sweep(
    halaxy: HalaxyClient,
    queue: JobQueue,
    connection_id: str,
    last: Sweep | None,
    now: datetime,
    sweeps: SweepLog,
    resumed: SweepProgress | None,
) -> Sweep | None:
    """Queue a bulk sync for every patient changed since `last` (all of them without one),
    or go on with `resumed`, the sweep `sweeps` holds as under way. Returns the finished
    sweep, or None when it stopped after PAGES_PER_CALL new pages (saved in `sweeps`: the
    next call goes on). An error leaves the progress of the pages done saved too."""
    if resumed is None:
        kind = SweepKind.BACKFILL if last is None else SweepKind.RECONCILE
        walk = _Walk(halaxy, queue, sweeps, connection_id, kind, now.isoformat(timespec="seconds"))
        params = {"_count": PAGE_SIZE}
        if last is not None:
            since = datetime.fromisoformat(last.started_at) - OVERLAP
            stamp = since.isoformat(timespec="seconds").replace("+00:00", "Z")
            params["_lastUpdated"] = "gt" + stamp
        done = walk.pages(halaxy.pages("Patient", params))
    else:
        walk = _Walk(halaxy, queue, sweeps, connection_id, resumed.kind, resumed.started_at)
        walk.queued, walk.walked = resumed.patients_queued, resumed.pages
        done = walk.resume(resumed)
    if not done:
        return None
    finished = iso_now()
    return Sweep(connection_id, walk.kind, walk.started, finished, walk.queued)


class _Walk:
    """One call's part of a sweep: queues each page's patients and saves where it is."""

    def __init__(
        self,
        halaxy: HalaxyClient,
        queue: JobQueue,
        sweeps: SweepLog,
        connection_id: str,
        kind: SweepKind,
        started: str,
    ) -> None:
        self.halaxy, self.queue, self.sweeps = halaxy, queue, sweeps
        self.connection_id, self.kind, self.started = connection_id, kind, started
        self.queued = self.walked = 0

    def resume(self, resumed: SweepProgress) -> bool:
        """Go on from the saved link, reading the page before it again first when it can."""
        before = page_before(resumed.next_url)
        if before is None or resumed.last_page_ids is None:
            log.info("reconcile.resumed_without_reading_again", connection_id=self.connection_id)
        elif not resumed.read_again:
            again = self.halaxy.pages("Patient", {}, before)
            try:
                patients, next_url = next(again)
            except RateLimited:
                raise
            except BridgeError as exc:
                log.warning(
                    "reconcile.read_again_refused",
                    connection_id=self.connection_id,
                    error=type(exc).__name__,
                )
            else:
                self._queue(patients, skip=frozenset(resumed.last_page_ids))
                if next_url is None:  # the patients before it left: the page was the last
                    return True
                self._save(next_url, patients, read_again=True)
                return self.pages(again)
        return self.pages(self.halaxy.pages("Patient", {}, resumed.next_url))

    def pages(self, pages: Iterator[tuple[list[dict[str, Any]], str | None]]) -> bool:
        """Walk `pages` up to PAGES_PER_CALL of them; True when the search has no more."""
        for number, (patients, next_url) in enumerate(pages, start=1):
            self._queue(patients)
            if next_url is None:
                return True
            self.walked += 1
            if self.walked >= MAX_SWEEP_PAGES:
                raise Permanent(
                    f"the patient search ran past {MAX_SWEEP_PAGES} pages without an end"
                )
            self._save(next_url, patients, read_again=False)
            if number >= PAGES_PER_CALL:
                return False
        return True

    def _queue(self, patients: list[dict[str, Any]], skip: frozenset[str] = frozenset()) -> None:
        jobs = [
            _bulk_sync(self.connection_id, patient_id, self.kind, self.started)
            for patient_id in _ids(patients)
            if patient_id not in skip
        ]
        if jobs:
            self.queue.enqueue(jobs)
            self.queued += len(jobs)

    def _save(self, next_url: str, patients: list[dict[str, Any]], read_again: bool) -> None:
        progress = SweepProgress(
            kind=self.kind,
            started_at=self.started,
            next_url=next_url,
            patients_queued=self.queued,
            pages=self.walked,
            last_page_ids=tuple(_ids(patients)),
            read_again=read_again,
        )
        self.sweeps.save_progress(self.connection_id, progress)


def _ids(patients: list[dict[str, Any]]) -> list[str]:
    return [str(patient["id"]) for patient in patients if patient.get("id")]


_PAGE_NUMBER = re.compile(r"(?<=[?&])page=(\d+)(?=&|$)")


def page_before(url: str) -> str | None:
    """`url` with its `page=N` made `page=N-1`; None when it has no page number past 1."""
    found = _PAGE_NUMBER.search(url)
    if found is None or int(found.group(1)) < 2:
        return None
    return url[: found.start(1)] + str(int(found.group(1)) - 1) + url[found.end(1) :]


def _bulk_sync(connection_id: str, patient_id: str, kind: SweepKind, started: str) -> Job:
    return Job(
        actor=ActorName.SYNC_PATIENT,
        queue=QueueName.BULK,
        kwargs={
            "connection_id": connection_id,
            "resource_id": patient_id,
            "event": kind.value,
            "event_id": f"{kind.value}:{started}:{patient_id}",
        },
    )

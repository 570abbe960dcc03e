"""Recent activity from the shared metrics: what `status` shows per connection and queue."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import redis

from shared.infra.store import Keys, as_bytes, translate_redis_errors
from shared.telemetry.definitions import (
    JOBS_NAME,
    LAST_EVENT_NAME,
    LAST_SUCCESS_NAME,
    PATIENT_OUTCOMES_NAME,
)
from shared.telemetry.push import read_field, sample_field

FAILED = frozenset({"retried", "dead"})
# A paused connection's message set aside by a worker: it will run after the resume; one put
# off by fair share (docs/isolation.md): it will run once its clinic holds fewer threads.
NOT_PROCESSED = frozenset({"held", "waiting"})
THROUGHPUT_MINUTES = 5


@dataclass(frozen=True)
class Activity:
    last_event: dict[str, float] = field(default_factory=dict)  # connection id -> unix time
    last_success: dict[str, float] = field(default_factory=dict)
    failures_last_hour: Counter[str] = field(default_factory=Counter)
    processed_last_hour: Counter[str] = field(default_factory=Counter)
    processed_recently: Counter[str] = field(default_factory=Counter)  # queue -> jobs

    def throughput_per_minute(self, queue: str) -> float:
        """Jobs a minute that left the queue, over the last few minutes."""
        return round(self.processed_recently[queue] / THROUGHPUT_MINUTES, 1)


def read_activity(client: redis.Redis, keys: Keys, now: float, recent: bool = True) -> Activity:
    """Last event and success per connection; with `recent`, also the last hour's counts
    (60 hashes to read: `/metrics` leaves them out)."""
    this_minute = int(now // 60)
    minutes = range(this_minute - 59, this_minute + 1) if recent else range(0)
    with translate_redis_errors():
        pipe = client.pipeline(transaction=False)
        pipe.zrange(keys.metric_latest(), 0, -1, withscores=True)
        for minute in minutes:
            pipe.hgetall(keys.metric_minute(minute))
        latest, *per_minute = pipe.execute()
    activity = Activity()
    gauges = {LAST_EVENT_NAME: activity.last_event, LAST_SUCCESS_NAME: activity.last_success}
    for raw, score in latest:
        name, labels = read_field(as_bytes(raw))
        if name in gauges:
            gauges[name][labels["connection_id"]] = float(score)
    jobs_total = f"{JOBS_NAME}_total"
    for minute, counts in zip(minutes, per_minute, strict=True):
        recent = minute > this_minute - THROUGHPUT_MINUTES
        for raw, value in counts.items():
            name, labels = read_field(as_bytes(raw))
            if name != jobs_total or labels["outcome"] in NOT_PROCESSED:
                continue
            jobs = round(float(value))
            activity.processed_last_hour[labels["connection_id"]] += jobs
            if labels["outcome"] in FAILED:
                activity.failures_last_hour[labels["connection_id"]] += jobs
            if recent:
                activity.processed_recently[labels["queue"]] += jobs
    return activity


# Patient outcomes that wrote nothing, as `status` shows them per connection.
NOT_SYNCED = (
    "skipped_inactive",
    "skipped_deceased",
    "skipped_enquiry",
    "skipped_stale",
    "skipped_gender",
    "left_inactive",
    "left_deceased",
    "refused",
)


@dataclass(frozen=True)
class PatientOutcomes:
    """Per connection, since the namespace began: patients not written, by outcome, and
    refusals by reason (the totals every process pushed)."""

    by_outcome: dict[str, Counter[str]] = field(default_factory=dict)
    refused_by_reason: dict[str, Counter[str]] = field(default_factory=dict)

    def not_synced(self, connection_id: str) -> dict[str, int]:
        counts = self.by_outcome.get(connection_id, Counter())
        return {outcome: counts[outcome] for outcome in NOT_SYNCED}

    def refused(self, connection_id: str) -> dict[str, int]:
        return dict(sorted(self.refused_by_reason.get(connection_id, Counter()).items()))


def read_patient_outcomes(client: redis.Redis, keys: Keys) -> PatientOutcomes:
    total = f"{PATIENT_OUTCOMES_NAME}_total"
    # The fields of one metric start alike (`sample_field`): scan those, not every total.
    prefix = sample_field(total, {}).decode().removesuffix("[]]")
    outcomes = PatientOutcomes()
    with translate_redis_errors():
        fields = client.hscan_iter(keys.metric_totals(), match=_glob_literal(prefix) + "*")
        for raw, value in fields:
            _, labels = read_field(as_bytes(raw))
            connection_id, outcome = labels["connection_id"], labels["outcome"]
            count = round(float(value))
            outcomes.by_outcome.setdefault(connection_id, Counter())[outcome] += count
            if outcome == "refused":
                reasons = outcomes.refused_by_reason.setdefault(connection_id, Counter())
                reasons[labels["reason"]] += count
    return outcomes


def _glob_literal(text: str) -> str:
    """`text` as a Redis glob pattern that matches only itself."""
    return "".join(f"\\{c}" if c in "[]*?\\" else c for c in text)

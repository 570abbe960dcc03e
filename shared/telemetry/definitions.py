"""Every metric the bridge counts, in one process-local registry.

Each process counts into this registry; `push.MetricsPusher` adds what changed to Redis, and
the receiver's `/metrics` reads the totals of every process back from there (`collect.py`).
Labels carry ids and codes only: never a patient detail, never a caller-chosen string that has
not been checked (an unknown connection is counted without its id).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOK_REQUESTS = Counter(
    "halaxy_bridge_webhook_requests",
    "Webhook deliveries answered, by route (halaxy, programs) and HTTP status.",
    ["route", "status"],
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "halaxy_bridge_webhook_events",
    "Events taken in from a known connection, by outcome (accepted, duplicate).",
    ["connection_id", "event", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_REJECTIONS = Counter(
    "halaxy_bridge_webhook_rejections",
    "Deliveries to a known connection that were refused, by reason.",
    ["connection_id", "event", "reason"],
    registry=REGISTRY,
)
JOBS_NAME = "halaxy_bridge_jobs"
JOBS = Counter(
    JOBS_NAME,
    "Jobs that ran, by outcome (succeeded, retried, deferred, dead, dropped; held: a paused "
    "connection's message set aside; waiting: put off by fair share, not run; skipped).",
    ["actor", "queue", "connection_id", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "halaxy_bridge_job_duration_seconds",
    "How long a job ran, whatever its outcome.",
    ["actor", "connection_id"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
UPSTREAM_REQUESTS = Counter(
    "halaxy_bridge_upstream_requests",
    "Requests to Halaxy, the therapy platform or a PDF host (other), by HTTP status or error.",
    ["connection_id", "target", "status"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "halaxy_bridge_upstream_request_duration_seconds",
    "Time to the response headers of a request to an outside system.",
    ["connection_id", "target"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
    registry=REGISTRY,
)
RATE_LIMIT_DEFERRALS = Counter(
    "halaxy_bridge_rate_limit_deferrals",
    "Jobs put off because a rate limit (ours or the remote side's) was reached.",
    ["connection_id", "target"],
    registry=REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "halaxy_bridge_circuit_transitions",
    "Circuit breaker transitions of a connection's upstream (halaxy, platform), by the state "
    "entered (open, half_open, closed).",
    ["connection_id", "upstream", "to"],
    registry=REGISTRY,
)
FAIR_SHARE_DEFERRALS = Counter(
    "halaxy_bridge_fair_share_deferrals",
    "Jobs put off, without holding a worker thread, because their connection held its fair "
    "share of the threads while another connection's work waited (docs/isolation.md).",
    ["connection_id"],
    registry=REGISTRY,
)
STORM_EVENTS = Counter(
    "halaxy_bridge_storm_events",
    "Live events queued on the storm lane: their connection sent more than "
    "BRIDGE_STORM_EVENTS_PER_MINUTE that minute (docs/isolation.md).",
    ["connection_id"],
    registry=REGISTRY,
)
TOKEN_REFRESHES = Counter(
    "halaxy_bridge_token_refreshes",
    "Halaxy access tokens fetched, by outcome (ok, refused, error).",
    ["connection_id", "outcome"],
    registry=REGISTRY,
)
HALAXY_AUTH_FAILURES = Counter(
    "halaxy_bridge_halaxy_auth_failures",
    "Times Halaxy refused the connection's key, or a fresh token: the key was revoked.",
    ["connection_id"],
    registry=REGISTRY,
)
NOTES = Counter(
    "halaxy_bridge_notes",
    "Program notes finished, by outcome (posted, parked, failed).",
    ["connection_id", "outcome"],
    registry=REGISTRY,
)
PROGRAM_EVENTS = Counter(
    "halaxy_bridge_program_events",
    "Physitrack events read by the events poll, by outcome (queued: a note recorded; "
    "duplicate: its note existed, from the webhook or an earlier poll; skipped_type: not a "
    "program event; skipped_client: a client the bridge did not create; invalid).",
    ["connection_id", "outcome"],
    registry=REGISTRY,
)
PATIENT_OUTCOMES_NAME = "halaxy_bridge_patient_outcomes"
PATIENT_OUTCOMES = Counter(
    PATIENT_OUTCOMES_NAME,
    "Patient syncs by outcome (created, updated, unchanged, skipped_inactive, skipped_deceased, "
    "skipped_enquiry, skipped_stale, skipped_gender, left_inactive, left_deceased, refused) "
    "and, for refused, the reason code.",
    ["connection_id", "outcome", "reason"],
    registry=REGISTRY,
)
# Pushed (the latest time of any process wins), and exported by `collect.gauges` with a
# fallback for connections that have none yet.
LAST_EVENT_NAME = "halaxy_bridge_connection_last_event_timestamp_seconds"
LAST_SUCCESS_NAME = "halaxy_bridge_connection_last_success_timestamp_seconds"
LAST_EVENT = Gauge(
    LAST_EVENT_NAME,
    "Unix time of the last authenticated Halaxy webhook from the connection.",
    ["connection_id"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    LAST_SUCCESS_NAME,
    "Unix time of the last job of the connection that succeeded.",
    ["connection_id"],
    registry=REGISTRY,
)

LATEST_GAUGES = frozenset({LAST_EVENT_NAME, LAST_SUCCESS_NAME})
# Counters also kept per minute for two hours, for "in the last hour" figures in `status`.
WINDOWED = frozenset({JOBS_NAME})

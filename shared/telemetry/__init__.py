"""Metrics: their definitions, their push to Redis by every process, and the collection
the receiver serves on `/metrics`."""

from shared.telemetry.collect import Reused, exposition, gauges, totals
from shared.telemetry.definitions import (
    JOB_DURATION,
    JOBS,
    LAST_EVENT,
    LAST_SUCCESS,
    NOTES,
    PROGRAM_EVENTS,
    RATE_LIMIT_DEFERRALS,
    WEBHOOK_EVENTS,
    WEBHOOK_REJECTIONS,
    WEBHOOK_REQUESTS,
)
from shared.telemetry.forget import forget_connection_series, forget_series_of_gone_connections
from shared.telemetry.http import MeteredClient, origin
from shared.telemetry.push import MetricsPusher

__all__ = [
    "JOBS",
    "JOB_DURATION",
    "LAST_EVENT",
    "LAST_SUCCESS",
    "NOTES",
    "PROGRAM_EVENTS",
    "RATE_LIMIT_DEFERRALS",
    "WEBHOOK_EVENTS",
    "WEBHOOK_REJECTIONS",
    "WEBHOOK_REQUESTS",
    "MeteredClient",
    "MetricsPusher",
    "Reused",
    "exposition",
    "forget_connection_series",
    "forget_series_of_gone_connections",
    "gauges",
    "origin",
    "totals",
]

"""Tests of `shared/telemetry/`."""

"""Tests of `services/sandbox/`."""

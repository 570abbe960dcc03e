"""Tests of `shared/connections/`."""

"""Tests of `shared/ops/`."""

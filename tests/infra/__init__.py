"""Tests of `shared/infra/`."""

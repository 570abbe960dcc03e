"""Tests of `shared/platforms/`."""

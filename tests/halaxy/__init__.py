"""Tests of `shared/halaxy/`."""

"""Tests of `shared/notes/`."""

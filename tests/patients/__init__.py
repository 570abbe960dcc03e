"""Tests of `shared/patients/`."""

"""Tests of `services/sandbox/`: the fakes are held to the reference they stand for."""

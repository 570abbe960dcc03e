"""Tests of the services (`services/`): receiver, CLI, workers."""

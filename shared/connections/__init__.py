"""Clinic connections: the model, its sealed store, onboarding and secret rotation."""

from shared.connections.model import Connection, practitioner_map
from shared.connections.onboarding import ConnectionRequest, KeyVerifier, RotateRequest
from shared.connections.store import ConnectionChangedMeanwhile, ConnectionStore

__all__ = [
    "Connection",
    "ConnectionChangedMeanwhile",
    "ConnectionRequest",
    "ConnectionStore",
    "KeyVerifier",
    "RotateRequest",
    "practitioner_map",
]

"""Clinic connections: the model, its sealed store, onboarding and secret rotation."""

from shared.connections.model import Connection, practitioner_map
from shared.connections.onboarding import ConnectionRequest, KeyVerifier, RotateRequest
from shared.connections.practitioner import CONNECTION_ACCOUNT, PlatformSeat, Practitioner
from shared.connections.roster import (
    PlatformKeyVerifier,
    PractitionerRequest,
    PractitionerRotation,
    physitrack_key_verifier,
)
from shared.connections.store import ConnectionChangedMeanwhile, ConnectionStore

__all__ = [
    "CONNECTION_ACCOUNT",
    "Connection",
    "ConnectionChangedMeanwhile",
    "ConnectionRequest",
    "ConnectionStore",
    "KeyVerifier",
    "PlatformKeyVerifier",
    "PlatformSeat",
    "Practitioner",
    "PractitionerRequest",
    "PractitionerRotation",
    "RotateRequest",
    "physitrack_key_verifier",
    "practitioner_map",
]

"""Clinic connections: the model, its sealed store, onboarding, secret rotation, and the
lifecycle after `add` (enable, edit, pause, resume)."""

from shared.connections.lifecycle import EditRequest, EnableRequest, Resumed
from shared.connections.model import Connection, practitioner_map
from shared.connections.onboarding import ConnectionRequest, KeyVerifier, RotateRequest
from shared.connections.pause import (
    RELEASED,
    HeldMessage,
    Holding,
    PausedConnections,
    PauseRecord,
)
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
    "RELEASED",
    "Connection",
    "ConnectionChangedMeanwhile",
    "ConnectionRequest",
    "ConnectionStore",
    "EditRequest",
    "EnableRequest",
    "HeldMessage",
    "Holding",
    "KeyVerifier",
    "PauseRecord",
    "PausedConnections",
    "PlatformKeyVerifier",
    "PlatformSeat",
    "Practitioner",
    "PractitionerRequest",
    "PractitionerRotation",
    "Resumed",
    "RotateRequest",
    "physitrack_key_verifier",
    "practitioner_map",
]

"""What the people who run the bridge use: dead letters and replay, status, liveness, queued
messages per connection, stored upgrades, and offboarding a clinic."""

from shared.ops.dead_letters import DeadLetter, DeadLetterStore, iso
from shared.ops.liveness import Heartbeat, Heartbeats, Kind, Role
from shared.ops.offboarding import (
    Eraser,
    Erasure,
    Offboarded,
    OffboardRequest,
    confirmed,
    offboard,
    standard_erasures,
)
from shared.ops.queued import QueuedMessages
from shared.ops.replay import parse_since
from shared.ops.status import not_synced_rows, status
from shared.ops.upgrade import upgrade_stored_data

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "Eraser",
    "Erasure",
    "Heartbeat",
    "Heartbeats",
    "Kind",
    "OffboardRequest",
    "Offboarded",
    "QueuedMessages",
    "Role",
    "confirmed",
    "iso",
    "not_synced_rows",
    "offboard",
    "parse_since",
    "standard_erasures",
    "status",
    "upgrade_stored_data",
]

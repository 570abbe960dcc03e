"""What the people who run the bridge use: dead letters and replay, status, stored upgrades,
and offboarding a clinic."""

from shared.ops.dead_letters import DeadLetter, DeadLetterStore, iso
from shared.ops.offboarding import (
    Eraser,
    Erasure,
    Offboarded,
    OffboardRequest,
    confirmed,
    offboard,
    standard_erasures,
)
from shared.ops.replay import parse_since
from shared.ops.status import not_synced_rows, status
from shared.ops.upgrade import upgrade_stored_data

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "Eraser",
    "Erasure",
    "OffboardRequest",
    "Offboarded",
    "confirmed",
    "iso",
    "not_synced_rows",
    "offboard",
    "parse_since",
    "standard_erasures",
    "status",
    "upgrade_stored_data",
]

"""What the people who run the bridge use: dead letters and replay, status, stored upgrades."""

from shared.ops.dead_letters import DeadLetter, DeadLetterStore, iso
from shared.ops.replay import parse_since
from shared.ops.status import not_synced_rows, status
from shared.ops.upgrade import upgrade_stored_data

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "iso",
    "not_synced_rows",
    "parse_since",
    "status",
    "upgrade_stored_data",
]

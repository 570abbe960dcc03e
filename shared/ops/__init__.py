"""What the people who run the bridge use: dead letters and replay, status, liveness, queued
messages per connection, stored upgrades, offboarding a clinic, and who they are (named admins
and their roles)."""

from shared.ops.admins import (
    BOOTSTRAP_NAME,
    Admin,
    AdminStore,
    CredentialRefused,
    Refusal,
    Role,
    UnknownAdmin,
    parse_lifetime,
)
from shared.ops.dead_letters import DeadLetter, DeadLetterStore, iso
from shared.ops.fair_share import ThreadLeases, pool_threads, thread_cap
from shared.ops.liveness import Duty, Heartbeat, Heartbeats, Kind
from shared.ops.offboarding import (
    Eraser,
    Erasure,
    Offboarded,
    OffboardRequest,
    confirmed,
    erase_leftovers,
    offboard,
    offboarded_lately,
    standard_erasures,
)
from shared.ops.queued import QueuedMessages
from shared.ops.replay import parse_since
from shared.ops.status import not_synced_rows, status
from shared.ops.upgrade import upgrade_stored_data

__all__ = [
    "BOOTSTRAP_NAME",
    "Admin",
    "AdminStore",
    "CredentialRefused",
    "DeadLetter",
    "DeadLetterStore",
    "Duty",
    "Eraser",
    "Erasure",
    "Heartbeat",
    "Heartbeats",
    "Kind",
    "OffboardRequest",
    "Offboarded",
    "QueuedMessages",
    "Refusal",
    "Role",
    "ThreadLeases",
    "UnknownAdmin",
    "confirmed",
    "erase_leftovers",
    "iso",
    "not_synced_rows",
    "offboard",
    "offboarded_lately",
    "parse_lifetime",
    "parse_since",
    "pool_threads",
    "standard_erasures",
    "status",
    "thread_cap",
    "upgrade_stored_data",
]

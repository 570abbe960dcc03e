"""What the people who run the bridge use: dead letters and replay, status, stored upgrades,
and who they are (named admins and their roles)."""

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
    "Refusal",
    "Role",
    "UnknownAdmin",
    "iso",
    "not_synced_rows",
    "parse_lifetime",
    "parse_since",
    "status",
    "upgrade_stored_data",
]

"""The bottom layer: settings, errors, logging, clock, Redis, codec, jobs, audit trail.

Everything else in `shared` may use it; it imports nothing above it.
"""

from shared.infra.audit import (
    Actor,
    AuditEntry,
    AuditTrail,
    ChainReport,
    audit_trail,
    checked_actor,
)
from shared.infra.clock import epoch_seconds, iso_now, utcnow
from shared.infra.config import Settings, load_settings
from shared.infra.errors import (
    AlreadyConnected,
    BridgeError,
    ConfigError,
    ConnectionNotFound,
    InvalidInput,
    NotFound,
    NotReplicated,
    Permanent,
    RateLimited,
    StoreUnavailable,
    Transient,
)
from shared.infra.jobs import (
    BULK_PRIORITY,
    LIVE_PRIORITY,
    STORM_PRIORITY,
    ActorName,
    IntakeResult,
    Job,
    JobQueue,
    QueueName,
    actor_for,
    base_actor,
)
from shared.infra.logs import configure_logging, mask
from shared.infra.pipelined_script import PipelinedScript
from shared.infra.redis_health import RedisProblem, check_redis, explained, redis_problem
from shared.infra.replication import confirm_replicated
from shared.infra.store import (
    Keys,
    LeaseRenewer,
    as_bytes,
    async_redis_client,
    held_lease,
    redis_client,
    redis_described,
    redis_location,
    translate_redis_errors,
)
from shared.infra.validation import validated

__all__ = [
    "BULK_PRIORITY",
    "LIVE_PRIORITY",
    "STORM_PRIORITY",
    "Actor",
    "ActorName",
    "AlreadyConnected",
    "AuditEntry",
    "AuditTrail",
    "BridgeError",
    "ChainReport",
    "ConfigError",
    "ConnectionNotFound",
    "IntakeResult",
    "InvalidInput",
    "Job",
    "JobQueue",
    "Keys",
    "LeaseRenewer",
    "NotFound",
    "NotReplicated",
    "Permanent",
    "PipelinedScript",
    "QueueName",
    "RateLimited",
    "RedisProblem",
    "Settings",
    "StoreUnavailable",
    "Transient",
    "actor_for",
    "as_bytes",
    "async_redis_client",
    "audit_trail",
    "base_actor",
    "check_redis",
    "checked_actor",
    "configure_logging",
    "confirm_replicated",
    "epoch_seconds",
    "explained",
    "held_lease",
    "iso_now",
    "load_settings",
    "mask",
    "redis_client",
    "redis_described",
    "redis_location",
    "redis_problem",
    "translate_redis_errors",
    "utcnow",
    "validated",
]

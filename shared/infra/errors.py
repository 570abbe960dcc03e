"""The one exception hierarchy of halaxy-bridge.

Actors translate these into queue decisions: `Permanent` goes to the dead letters at once,
`Transient` is retried with backoff, `RateLimited` is deferred by its `retry_after`.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The process configuration is invalid; the message says which variable and why."""


class Permanent(BridgeError):
    """Retrying cannot help: the input or the remote state is wrong."""


class Transient(BridgeError):
    """A retry later may succeed: a timeout, a 5xx, a connection error."""


class RateLimited(Transient):
    """The remote side asked us to wait `retry_after` seconds before the next call."""

    def __init__(self, message: str, retry_after: float, target: str = "halaxy") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.target = target  # whose limit: "halaxy" or "platform"


class StoreUnavailable(Transient):
    """Redis cannot be reached or did not answer."""


class NotReplicated(StoreUnavailable):
    """No replica acknowledged a write within BRIDGE_REPLICA_ACK_MS: it could be lost in a
    failover, so it is not yet acted on (a 503, a job retried)."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"no Redis replica acknowledged the write within {timeout_ms} ms")
        self.timeout_ms = timeout_ms


class ConnectionNotFound(Permanent):
    """No enabled connection has that id."""


class InvalidInput(Permanent):
    """Input that is well-formed but not acceptable; `problems` lists what is wrong."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NotFound(InvalidInput):
    """What an action names is not there, or not in the state it needs: an unknown dead
    letter, a note no longer waiting. A refusal of an attempted action (audited as such)."""


class AlreadyConnected(InvalidInput):
    """Credentials another enabled connection already uses (the same Halaxy key, or the same
    platform API key where sharing it was not asked for); `connection_id` names that one."""

    def __init__(self, message: str, connection_id: str) -> None:
        super().__init__(message)
        self.connection_id = connection_id


class Ambiguous(BridgeError):
    """A write may or may not have happened (a timeout after sending, a 5xx). Never repeat it
    blindly: Halaxy cannot delete or search notes, so a repeat could duplicate a clinical note."""


class UnreadableRecord(Permanent):
    """A record kept in Redis does not fit its type (another version wrote it, or it is
    damaged); the message names the type and fields, never the value."""

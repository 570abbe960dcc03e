"""The Redis connection and the key layout every part of the bridge shares."""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
import structlog
from redis.backoff import NoBackoff
from redis.lock import Lock

from shared.infra.config import Settings
from shared.infra.errors import StoreUnavailable, Transient

log = structlog.get_logger("halaxy_bridge.store")

CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "health_check_interval": 15,
    "retry_on_timeout": False,
}


def redis_location(url: str) -> str:
    """Where a Redis URL points, for a person reading an error: `host:port/db`, or the socket
    path. Never the user name or password the URL may carry."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "(no socket path)"
        host = parts.hostname or "(no host)"
        shown = f"[{host}]" if ":" in host else host
        db = parts.path.strip("/") or "0"
        if not db.isdigit():  # a `/` in an unencoded password moves the rest of it here
            return "(an unreadable URL)"
        return f"{shown}:{parts.port or 6379}/{db}"
    except ValueError:
        return "(an unreadable URL)"


def redis_client(settings: Settings) -> redis.Redis:
    """A pooled client with short timeouts, so a dead Redis is noticed in about a second.

    It never resends a command whose reply was lost (a script that ran would run again): the
    caller hears of the failure instead, as a 503 or a job retried. With REDIS_SENTINELS it
    is the sentinels' current master: a connection opened after a failover asks them again,
    so the broker and every store follow the new master without a restart."""
    retry = redis.retry.Retry(NoBackoff(), 0)
    if settings.sentinel_addresses:
        sentinels = redis.sentinel.Sentinel(
            settings.sentinel_addresses,
            sentinel_kwargs={**sentinel_options(settings), "retry": retry},
            password=_password(settings),
            retry=retry,
            **CLIENT_OPTIONS,
        )
        master: redis.Redis = sentinels.master_for(settings.redis_sentinel_master)
        return master
    return redis.Redis.from_url(
        settings.redis_url, password=_password(settings), retry=retry, **CLIENT_OPTIONS
    )


def async_redis_client(settings: Settings) -> redis.asyncio.Redis:
    """`redis_client`'s twin for the event loop (the receiver's webhook intake)."""
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if settings.sentinel_addresses:
        sentinels = redis.asyncio.sentinel.Sentinel(
            settings.sentinel_addresses,
            sentinel_kwargs={**sentinel_options(settings), "retry": retry},
            password=_password(settings),
            retry=retry,
            **CLIENT_OPTIONS,
        )
        async_master: redis.asyncio.Redis = sentinels.master_for(settings.redis_sentinel_master)
        return async_master
    return redis.asyncio.Redis.from_url(
        settings.redis_url, password=_password(settings), retry=retry, **CLIENT_OPTIONS
    )


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """How to talk to a sentinel: the same short timeouts, and REDIS_PASSWORD (a sentinel
    with `requirepass` refuses a client without it, and one without refuses a password).
    Add a `retry` of no retries: redis-py's default backs off for seconds."""
    return {
        "socket_connect_timeout": CLIENT_OPTIONS["socket_connect_timeout"],
        "socket_timeout": CLIENT_OPTIONS["socket_timeout"],
        "password": _password(settings),
    }


def _password(settings: Settings) -> str | None:
    return None if settings.redis_password is None else settings.redis_password.get_secret_value()


def redis_described(settings: Settings) -> str:
    """Which Redis the settings name, for a person reading an error; never a password."""
    if settings.sentinel_addresses:
        shown = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in settings.sentinel_addresses
        )
        return f"REDIS_SENTINELS: {shown}, master {settings.redis_sentinel_master!r}"
    return f"REDIS_URL: {redis_location(settings.redis_url)}"


class Keys:
    """Every Redis key the bridge writes, under one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def connection(self, connection_id: str) -> str:
        return f"{self.namespace}:connection:{connection_id}"

    def connection_index(self) -> str:
        return f"{self.namespace}:connections"

    def seen_event(self, connection_id: str, digest: str) -> str:
        return f"{self.namespace}:seen:{connection_id}:{digest}"

    def halaxy_token(self, key_digest: str) -> str:
        return f"{self.namespace}:halaxy-token:{key_digest}"

    def halaxy_budget(self, key_digest: str) -> str:
        return f"{self.namespace}:halaxy-budget:{key_digest}"

    def halaxy_pause(self, key_digest: str) -> str:
        return f"{self.namespace}:halaxy-pause:{key_digest}"

    def patient_links(self, connection_id: str) -> str:
        return f"{self.namespace}:patient-links:{connection_id}"

    def patient_lock(self, connection_id: str, patient_id: str) -> str:
        return f"{self.namespace}:lock:patient:{connection_id}:{patient_id}"

    def note(self, connection_id: str, note_id: str) -> str:
        return f"{self.note_prefix()}{connection_id}:{note_id}"

    def note_lock(self, connection_id: str, note_id: str) -> str:
        return f"{self.namespace}:lock:note:{connection_id}:{note_id}"

    def unrouted_programs(self) -> str:
        return f"{self.namespace}:programs:unrouted"

    def unrouted_program_times(self) -> str:
        return f"{self.namespace}:programs:unrouted:times"

    def unrouted_programs_of(self, token_digest: str) -> str:
        return f"{self.namespace}:programs:unrouted:token:{token_digest}"

    def program_moments(self, connection_id: str, program: str) -> str:
        return f"{self.namespace}:programs:moments:{connection_id}:{program}"

    def program_poll_cursors(self, connection_id: str) -> str:
        return f"{self.namespace}:programs:cursor:{connection_id}"

    def parked_notes(self) -> str:
        return f"{self.namespace}:notes:parked"

    def failed_notes(self) -> str:
        return f"{self.namespace}:notes:failed"

    def waiting_note_links(self) -> str:
        return f"{self.namespace}:notes:waiting-links"

    def note_prefix(self) -> str:
        """`note(c, n)` is this prefix, then `c:n`."""
        return f"{self.namespace}:note:"

    def unsettled_notes(self) -> str:
        # Named when it held only notes no worker had taken up; kept, so none already in it
        # is dropped from the watch.
        return f"{self.namespace}:notes:unclaimed"

    def dead_letters(self) -> str:
        return f"{self.namespace}:dead-letters"

    def dead_letter_times(self) -> str:
        return f"{self.namespace}:dead-letters:by-time"

    def audit(self) -> str:
        return f"{self.namespace}:audit"

    def audit_head(self) -> str:
        """The audit trail's chain head: the newest entry's sequence number, hash and id, and
        the last entry the retention trimmed."""
        return f"{self.namespace}:audit:head"

    def admins(self) -> str:
        """Named admin credentials, by name (`shared.ops.admins`)."""
        return f"{self.namespace}:admins"

    def admin_tokens(self) -> str:
        """The digest of each admin token issued, to the name it was issued to."""
        return f"{self.namespace}:admins:tokens"

    def metric_totals(self) -> str:
        return f"{self.namespace}:metrics:totals"

    def metric_latest(self) -> str:
        return f"{self.namespace}:metrics:latest"

    def metric_minute(self, minute: int) -> str:
        return f"{self.namespace}:metrics:minute:{minute}"

    def metric_push_receipt(self, pusher_id: str) -> str:
        return f"{self.namespace}:metrics:pushed:{pusher_id}"

    def last_sweep(self) -> str:
        return f"{self.namespace}:reconcile:last-sweep"

    def sweep_progress(self) -> str:
        return f"{self.namespace}:reconcile:in-progress"

    def stored_data_version(self) -> str:
        return f"{self.namespace}:stored-data-version"

    def replica_ack_channel(self) -> str:
        """A Pub/Sub channel, never a key: publishing on it is a write that reaches the
        replicas and stores nothing (`shared.infra.replication`)."""
        return f"{self.namespace}:replica-ack"

    def scheduler_leader(self) -> str:
        return f"{self.namespace}:scheduler:leader"

    def dramatiq_namespace(self) -> str:
        return f"{self.namespace}-dramatiq"

    def dramatiq_queue(self, queue_name: str) -> str:
        """The list of a queue's message ids, as Dramatiq's Redis broker keeps it."""
        return f"{self.dramatiq_namespace()}:{queue_name}"

    def dramatiq_messages(self, queue_name: str) -> str:
        """The hash of a queue's encoded messages by id, as Dramatiq's Redis broker keeps it."""
        return f"{self.dramatiq_queue(queue_name)}.msgs"

    def dramatiq_heartbeats(self) -> str:
        """Dramatiq's broker ids by the time of their last command, in milliseconds."""
        return f"{self.dramatiq_namespace()}:__heartbeats__"

    def heartbeats(self, kind: str) -> str:
        """The last heartbeat of each worker or scheduler (`kind`) instance, by instance id."""
        return f"{self.namespace}:heartbeats:{kind}"

    def heartbeat_times(self, kind: str) -> str:
        return f"{self.namespace}:heartbeats:{kind}:by-time"

    def queued_messages(self, connection_id: str, queue_name: str) -> str:
        """The connection's unfinished messages in a queue (its delay queue included): Redis
        message id -> when it is (or was) due, in epoch seconds."""
        return f"{self.namespace}:queued:{connection_id}:{queue_name}"

    def refusal_audited(self, digest: str) -> str:
        """A refused admin action of one kind (caller, route, reason) audited within a minute;
        its digest, so no id shows in the key."""
        return f"{self.namespace}:refusal-audited:{digest}"

    def paused_connections(self) -> str:
        """The paused connections: a hash, connection id -> when and by whom."""
        return f"{self.namespace}:connections:paused"

    def held_messages(self, connection_id: str) -> str:
        """The messages of a paused connection that workers set aside, in the order held."""
        return f"{self.namespace}:held:{connection_id}"

    def circuits(self, connection_id: str) -> str:
        """The connection's circuit breakers: a hash, upstream -> its `Circuit` record."""
        return f"{self.namespace}:circuit:{connection_id}"

    def circuit_probe(self, connection_id: str, upstream: str) -> str:
        """The lease of the one message probing a half-open circuit (SET NX, expiring)."""
        return f"{self.namespace}:circuit-probe:{connection_id}:{upstream}"

    def thread_leases(self, connection_id: str) -> str:
        """The worker threads a connection holds (fair share): lease token -> when it lapses,
        in epoch seconds."""
        return f"{self.namespace}:thread-leases:{connection_id}"

    def live_connections(self) -> str:
        """The connections that lately queued live work: connection id -> when the latest of it
        was (or is) due, in epoch seconds (fair share)."""
        return f"{self.namespace}:live-connections"

    def storm_count(self, connection_id: str, minute: int | str) -> str:
        """How many live events the connection sent in one minute (`minute`: epoch seconds
        // 60); the storm lane takes those over the limit."""
        return f"{self.namespace}:storm-count:{connection_id}:{minute}"

    def event_log_of(self, connection_id: str) -> str:
        """Every key of a connection's event log starts with this (its erasure scans for it)."""
        return f"{self.namespace}:event-log:{connection_id}:"

    def event_log_index(self, connection_id: str) -> str:
        return f"{self.event_log_of(connection_id)}index"

    def event_log_record(self, connection_id: str, digest: str) -> str:
        return f"{self.event_log_of(connection_id)}event:{digest}"

    def event_log_attempts(self, connection_id: str, digest: str) -> str:
        return f"{self.event_log_of(connection_id)}attempts:{digest}"

    def event_log_connections(self) -> str:
        """The connections that have an event log (searched when none is named)."""
        return f"{self.namespace}:event-log-connections"


PASSWORD_REFUSED = "Redis refused the password (check REDIS_PASSWORD against its requirepass)"  # noqa: S105
NO_MASTER = "no sentinel named a master (unreachable, a wrong REDIS_SENTINEL_MASTER or password)"

REFUSING = tuple(
    getattr(redis.exceptions, name)
    for name in ("OutOfMemoryError", "BusyLoadingError", "ReadOnlyError", "MasterDownError")
    if hasattr(redis.exceptions, name)
)


@contextmanager
def translate_redis_errors() -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into `StoreUnavailable`."""
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:
        raise StoreUnavailable(PASSWORD_REFUSED) from exc
    except redis.sentinel.MasterNotFoundError as exc:
        raise StoreUnavailable(NO_MASTER) from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {type(exc).__name__}") from exc
    except redis.exceptions.NoScriptError as exc:
        # Redis lost its scripts again right after they were loaded: restarting, say.
        raise StoreUnavailable("Redis lost its scripts") from exc
    except REFUSING as exc:
        # Out of memory (noeviction), loading, a read-only replica, a failover: writes are
        # refused for now, which is a 503 and a retry, not a bug.
        raise StoreUnavailable(f"Redis refused the command: {type(exc).__name__}") from exc
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith(("MISCONF", "OOM", "LOADING", "READONLY", "MASTERDOWN")):
            raise StoreUnavailable(f"Redis refused the command: {str(exc).split()[0]}") from exc
        if str(exc).startswith(("NOAUTH", "WRONGPASS")) or "AUTH" in str(exc).split()[:2]:
            # No password sent to a Redis that wants one, or one sent to a Redis without.
            raise StoreUnavailable(PASSWORD_REFUSED) from exc
        raise


def as_bytes(value: bytes | str) -> bytes:
    """redis-py is typed as returning bytes or str; our clients always return bytes."""
    return value if isinstance(value, bytes) else value.encode()


@contextmanager
def held_lock(
    client: redis.Redis, name: str, *, timeout: float, wait: float, busy: str
) -> Iterator[None]:
    """Hold a Redis lock (expiring after `timeout`), or raise `Transient(busy)` after `wait`."""
    with translate_redis_errors():
        lock = client.lock(name, timeout=timeout, blocking_timeout=wait, sleep=0.02)
        if not lock.acquire():
            raise Transient(busy)
    try:
        yield
    finally:
        _release(lock, within=min(timeout / 3, RELEASE_RETRY_SECONDS))


# How long closing a renewer waits for a renewal under way (the daemon thread ends anyway).
CLOSE_WAIT_SECONDS = 10.0


class LeaseRenewer:
    """Renews the leases added to it on one daemon thread, each a third of its ttl after it
    was taken or last renewed. The thread dies with its process, so a dead holder's leases
    lapse after their ttl. A renewer does not survive a fork (its thread stays behind): build
    one in the process that uses it, as the worker runtime does; a forked child's `add` raises.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._changed = threading.Condition()
        self._due: dict[Lock, float] = {}  # lease -> when to renew it next (monotonic)
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, lock: Lock) -> None:
        """Keep `lock` alive until it is discarded; raise `RuntimeError` once closed (a lease
        nobody renews would lapse under its holder)."""
        if os.getpid() != self._pid:  # checked first: the parent may have held the condition
            raise RuntimeError("a lease renewer cannot be used in a forked child; build another")
        due = time.monotonic() + float(lock.timeout or 0) / 3
        with self._changed:
            if self._closed:
                raise RuntimeError("the lease renewer is closed")
            self._due[lock] = due
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()
            if due < self._wakes_at:
                self._changed.notify()

    def discard(self, lock: Lock) -> None:
        """Renew `lock` no more. A renewal already under way cannot outlive a release: both
        are compare-and-set on the lease's token."""
        with self._changed:
            self._due.pop(lock, None)

    def close(self) -> None:
        """Stop the thread (at shutdown). Leases still held are renewed no more and lapse
        after their ttl."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(CLOSE_WAIT_SECONDS)  # one renewal under way: the client's timeouts bound it
            if thread.is_alive():
                log.warning("lease.renewer_still_running", waited_seconds=CLOSE_WAIT_SECONDS)

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                due = [lock for lock, at in self._due.items() if at <= now]
                for lock in due:
                    self._due[lock] = now + float(lock.timeout or 0) / 3
                self._wakes_at = min(self._due.values(), default=math.inf)
                if not due:
                    wait = None if self._wakes_at == math.inf else self._wakes_at - now
                    self._changed.wait(wait)
                    continue
            for lock in due:
                if self._closed:
                    return  # close() waits: skip renewals that could each take seconds
                try:
                    lock.reacquire()
                except redis.exceptions.RedisError:
                    pass  # a blip, or the lease just ended: the next renewal may land
                except Exception as exc:  # this one thread keeps every lease alive: never die
                    log.error("lease.renewal_failed", error=type(exc).__name__)


@contextmanager
def held_lease(
    client: redis.Redis, name: str, *, ttl: float, wait: float, busy: str, renewer: LeaseRenewer
) -> Iterator[None]:
    """`held_lock` kept alive by `renewer` for as long as the block runs.

    If the holder dies (SIGKILL, OOM), renewal stops and the lease expires after `ttl`, so
    another worker can take over without waiting for a long fixed timeout.
    """
    with translate_redis_errors():
        # thread_local=False: the renewal thread must see the token this thread acquired.
        lock = client.lock(name, timeout=ttl, blocking_timeout=wait, sleep=0.02, thread_local=False)
        # uuid4, not redis-py's default uuid1: libuuid tries the uuidd socket on every call.
        if not lock.acquire(token=uuid.uuid4().hex):
            raise Transient(busy)
    try:
        renewer.add(lock)
        yield
    finally:
        renewer.discard(lock)
        _release(lock, within=min(ttl / 3, RELEASE_RETRY_SECONDS))


# How long freeing a lock goes on trying while Redis cannot be reached. A lock left held turns
# the next try of its work away as busy until its ttl runs out, and that try's backoff then
# doubles: in the failover test, jobs that failed while the master was being replaced were
# turned away by their own lock at their first retry and waited a minute more. A Sentinel
# failover takes a few seconds; a lock lapses by itself soon after anyway.
RELEASE_RETRY_SECONDS = 10.0
RELEASE_PAUSE_SECONDS = 0.25


def _release(lock: Lock, *, within: float) -> None:
    """Free `lock`, trying again through a Redis outage of up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            lock.release()
            return
        except redis.exceptions.LockError:
            return  # it expired while we held it (a slow upstream): nothing to free
        except redis.exceptions.RedisError:
            if time.monotonic() + RELEASE_PAUSE_SECONDS > deadline:
                with translate_redis_errors():
                    raise
            time.sleep(RELEASE_PAUSE_SECONDS)

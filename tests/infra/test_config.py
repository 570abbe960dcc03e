"""Settings are validated at start-up, with a message that names each bad variable."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from shared.infra.config import load_settings
from shared.infra.errors import ConfigError
from shared.infra.store import redis_location


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BRIDGE_SECRET_KEY", "not-a-key", "BRIDGE_SECRET_KEY: is not a Fernet key"),
        ("REDIS_URL", "http://localhost:6379", "REDIS_URL: must start with redis://"),
        ("BRIDGE_ADMIN_TOKEN", "short", "BRIDGE_ADMIN_TOKEN: must be at least 24 characters"),
        ("BRIDGE_USER_AGENT", "   ", "BRIDGE_USER_AGENT: must be printable ASCII"),
        ("BRIDGE_PUBLIC_URL", "bridge.example.com", "BRIDGE_PUBLIC_URL: must be an absolute"),
        ("BRIDGE_PUBLIC_URL", "http://bridge.example.com", "BRIDGE_PUBLIC_URL: must use https"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL:"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT:"),
        ("BRIDGE_REDIS_NAMESPACE", "a b", "BRIDGE_REDIS_NAMESPACE:"),
        ("BRIDGE_SCHEDULER_TICK_SECONDS", "0", "BRIDGE_SCHEDULER_TICK_SECONDS:"),
        ("BRIDGE_SCHEDULER_TICK_SECONDS", "30", "BRIDGE_SCHEDULER_TICK_SECONDS:"),
        ("BRIDGE_RECONCILE_EVERY_SECONDS", "0.5", "BRIDGE_RECONCILE_EVERY_SECONDS:"),
        ("BRIDGE_RECONCILE_EVERY_SECONDS", "soon", "BRIDGE_RECONCILE_EVERY_SECONDS:"),
        ("BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS", "1", "BRIDGE_WORKER_HEARTBEAT_TIMEOUT"),
    ],
)
def test_each_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in str(caught.value)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SECRET_KEY", "nope")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "BRIDGE_SECRET_KEY" in str(caught.value)
    assert "LOG_FORMAT" in str(caught.value)


def test_the_secret_key_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SECRET_KEY", "this-is-a-secret-but-not-a-key")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "this-is-a-secret" not in str(caught.value)


def test_old_keys_still_decrypt_after_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("BRIDGE_SECRET_KEY", old)
    token = load_settings().fernet.encrypt(b"secret")
    monkeypatch.setenv("BRIDGE_SECRET_KEY", f"{new},{old}")
    rotated = load_settings().fernet
    assert rotated.decrypt(token) == b"secret"
    assert Fernet(new.encode()).decrypt(rotated.encrypt(b"x")) == b"x"


def test_missing_secret_key_is_a_clear_error_when_it_is_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_SECRET_KEY")
    settings = load_settings()
    with pytest.raises(ConfigError, match="BRIDGE_SECRET_KEY is not set"):
        _ = settings.fernet


def test_loopback_public_url_may_be_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PUBLIC_URL", "http://127.0.0.1:8000/")
    assert load_settings().public_url == "http://127.0.0.1:8000"


def test_the_scheduler_keeps_its_pace_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BRIDGE_SCHEDULER_TICK_SECONDS",
        "BRIDGE_RECONCILE_EVERY_SECONDS",
        "BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.scheduler_tick_seconds == 5.0
    assert settings.reconcile_every_seconds == 300.0
    assert settings.worker_heartbeat_timeout_seconds == 30.0
    monkeypatch.setenv("BRIDGE_SCHEDULER_TICK_SECONDS", "0.25")
    monkeypatch.setenv("BRIDGE_RECONCILE_EVERY_SECONDS", "2")
    monkeypatch.setenv("BRIDGE_WORKER_HEARTBEAT_TIMEOUT_SECONDS", "3")
    settings = load_settings()
    assert settings.scheduler_tick_seconds == 0.25
    assert settings.reconcile_every_seconds == 2.0
    assert settings.worker_heartbeat_timeout_seconds == 3.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@cache.internal:6380/2", "cache.internal:6380/2"),
        ("redis://cache.internal", "cache.internal:6379/0"),
        ("redis://:p@ss/w0rd@cache.internal:6379/1", "(an unreadable URL)"),  # `/` in password
        ("redis://default:123/sec@cache.internal:6379/0", "(an unreadable URL)"),
        ("unix:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_where_redis_is_never_shows_a_password(url: str, shown: str) -> None:
    assert redis_location(url) == shown


def test_the_event_log_bound_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_EVENT_LOG_MAX_PER_CONNECTION", raising=False)
    assert load_settings().event_log_max_per_connection == 10_000
    monkeypatch.setenv("BRIDGE_EVENT_LOG_MAX_PER_CONNECTION", "500")
    assert load_settings().event_log_max_per_connection == 500
    for bad in ("0", "many", "-5"):
        monkeypatch.setenv("BRIDGE_EVENT_LOG_MAX_PER_CONNECTION", bad)
        with pytest.raises(ConfigError, match="BRIDGE_EVENT_LOG_MAX_PER_CONNECTION"):
            load_settings()


def test_the_circuit_breaker_is_set_by_two_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BRIDGE_BREAKER_FAILURES", "BRIDGE_BREAKER_COOLDOWN_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.breaker_failures, settings.breaker_cooldown_seconds) == (5, 30.0)
    monkeypatch.setenv("BRIDGE_BREAKER_FAILURES", "3")
    monkeypatch.setenv("BRIDGE_BREAKER_COOLDOWN_SECONDS", "90")
    settings = load_settings()
    assert (settings.breaker_failures, settings.breaker_cooldown_seconds) == (3, 90.0)
    for name, bad in (
        ("BRIDGE_BREAKER_FAILURES", "0"),
        ("BRIDGE_BREAKER_FAILURES", "many"),
        ("BRIDGE_BREAKER_COOLDOWN_SECONDS", "0"),
        ("BRIDGE_BREAKER_COOLDOWN_SECONDS", "7200"),
    ):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=name):
            load_settings()
        monkeypatch.delenv(name)

"""The isolation settings (docs/isolation.md): their defaults, and a clear error for a bad
value."""

from __future__ import annotations

import pytest

from shared.infra.config import load_settings
from shared.infra.errors import ConfigError


def test_the_thread_share_is_a_fraction_of_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_CONNECTION_THREAD_SHARE", raising=False)
    assert load_settings().connection_thread_share == 0.25
    monkeypatch.setenv("BRIDGE_CONNECTION_THREAD_SHARE", "0.5")
    assert load_settings().connection_thread_share == 0.5
    for bad in ("0", "1.5", "-0.1", "half"):
        monkeypatch.setenv("BRIDGE_CONNECTION_THREAD_SHARE", bad)
        with pytest.raises(ConfigError, match="BRIDGE_CONNECTION_THREAD_SHARE"):
            load_settings()


def test_the_storm_limit_is_events_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_STORM_EVENTS_PER_MINUTE", raising=False)
    assert load_settings().storm_events_per_minute == 300
    monkeypatch.setenv("BRIDGE_STORM_EVENTS_PER_MINUTE", "1000")
    assert load_settings().storm_events_per_minute == 1000
    for bad in ("0", "-3", "many", "2.5"):
        monkeypatch.setenv("BRIDGE_STORM_EVENTS_PER_MINUTE", bad)
        with pytest.raises(ConfigError, match="BRIDGE_STORM_EVENTS_PER_MINUTE"):
            load_settings()

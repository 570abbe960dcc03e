"""REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_PASSWORD and BRIDGE_REPLICA_ACK_MS: read,
checked at start-up, and refused with a message naming the variable (never a password)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.infra.config import load_settings, parse_sentinels
from shared.infra.errors import ConfigError
from shared.infra.store import redis_described

HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
PORTS = st.integers(min_value=1, max_value=65535)


@given(st.lists(st.tuples(HOSTS, PORTS, st.booleans()), min_size=1, max_size=5))
def test_a_list_of_sentinels_reads_back_as_written(
    entries: list[tuple[str, int, bool]],
) -> None:
    text = ", ".join(f"{h}:{p}" if with_port else h for h, p, with_port in entries)
    expected = [(h.strip("[]"), p if with_port else 26379) for h, p, with_port in entries]

    assert parse_sentinels(text) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sentinel-1:26379,,sentinel-2:26379", "entry 2 is empty"),
        ("sentinel-1:26379,", "entry 2 is empty"),
        ("::1:26379", "an IPv6 address goes in brackets"),
        ("[::1:26379", "is not closed"),
        ("[not-v6]:26379", "not an IPv6 address"),
        ("[::1]26379", "expected :port"),
        ("sentinel-1:0", "port must be a number from 1 to 65535"),
        ("sentinel-1:65536", "port must be a number from 1 to 65535"),
        ("sentinel-1:http", "port must be a number"),
        ("sentinel one:26379", "not a host name"),
        ("redis://sentinel-1:26379", "give host:port, not a URL"),
        (":26379", "not a host name"),
    ],
)
def test_a_wrong_sentinel_list_is_refused_naming_the_variable_and_entry(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", value)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "hbmaster")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "REDIS_SENTINELS:" in str(caught.value)
    assert says in str(caught.value)


@given(st.text(max_size=30))
def test_any_text_is_read_or_refused_with_a_value_error(text: str) -> None:
    try:
        addresses = parse_sentinels(text)
    except ValueError as exc:
        assert str(exc).startswith("entry ")
    else:
        assert all(0 < port < 65536 and host for host, port in addresses)


def test_sentinels_without_a_master_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "sentinel-1:26379")
    monkeypatch.delenv("REDIS_SENTINEL_MASTER", raising=False)

    with pytest.raises(ConfigError, match="REDIS_SENTINEL_MASTER is required with REDIS_SENTINELS"):
        load_settings()


def test_a_master_name_with_spaces_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "my master")

    with pytest.raises(ConfigError, match="REDIS_SENTINEL_MASTER:"):
        load_settings()


def test_two_passwords_are_refused_and_neither_is_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:in-the-url-pw@cache.internal:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD", "in-the-variable-pw")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "REDIS_PASSWORD and a password in REDIS_URL are both set" in str(caught.value)
    assert "in-the-url-pw" not in str(caught.value)
    assert "in-the-variable-pw" not in str(caught.value)


def test_replica_acks_are_on_with_sentinels_and_off_with_one_redis_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_REPLICA_ACK_MS", raising=False)
    monkeypatch.delenv("REDIS_SENTINELS", raising=False)
    assert load_settings().replica_ack_ms == 0
    monkeypatch.setenv("BRIDGE_REPLICA_ACK_MS", "250")
    assert load_settings().replica_ack_ms == 250

    monkeypatch.setenv("REDIS_SENTINELS", "[::1]:26379,sentinel-2")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "hbmaster")
    assert load_settings().replica_ack_ms == 250
    monkeypatch.setenv("BRIDGE_REPLICA_ACK_MS", "0")
    assert load_settings().replica_ack_ms == 0
    monkeypatch.delenv("BRIDGE_REPLICA_ACK_MS")
    assert load_settings().replica_ack_ms == 500

    for bad in ("-1", "1501", "soon"):
        monkeypatch.setenv("BRIDGE_REPLICA_ACK_MS", bad)
        with pytest.raises(ConfigError, match="BRIDGE_REPLICA_ACK_MS:"):
            load_settings()


def test_which_redis_is_said_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "[::1]:26379, sentinel-2")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "hbmaster")
    monkeypatch.setenv("REDIS_PASSWORD", "never-shown-pw")

    said = redis_described(load_settings())

    assert said == "REDIS_SENTINELS: [::1]:26379,sentinel-2:26379, master 'hbmaster'"

"""Pure rules of connections: keys, URLs, hosts, authors, secrets. No I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.connections import model as c
from shared.connections import onboarding
from shared.infra.clock import utcnow
from shared.infra.errors import InvalidInput
from shared.infra.redis_health import durability_warnings


def test_halaxy_key_splits_on_the_first_colon() -> None:
    assert c.parse_halaxy_key(" abc:def:ghi ") == ("abc", "def:ghi")


@given(st.text().filter(lambda s: ":" not in s))
def test_halaxy_key_without_a_colon_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="CLIENT_ID:CLIENT_SECRET"):
        c.parse_halaxy_key(value)


@pytest.mark.parametrize("value", [":secret", "id:", " : "])
def test_halaxy_key_with_an_empty_half_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        c.parse_halaxy_key(value)


def test_regions_and_explicit_base_url() -> None:
    assert c.halaxy_base_url("eu", None) == "https://eu-api.halaxy.com/main"
    assert c.halaxy_base_url(None, None) == "https://au-api.halaxy.com/main"
    assert c.halaxy_base_url(None, "http://127.0.0.1:8100/main/") == "http://127.0.0.1:8100/main"
    with pytest.raises(InvalidInput, match="not both"):
        c.halaxy_base_url("au", "https://au-api.halaxy.com/main")
    with pytest.raises(InvalidInput, match="unknown Halaxy region"):
        c.halaxy_base_url("us", None)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com",
        "ftp://api.example.com",
        "https://user:pw@api.example.com",
        "https://api.example.com/?a=1",
        "api.example.com",
    ],
)
def test_service_urls_must_be_https_without_credentials(url: str) -> None:
    with pytest.raises(InvalidInput):
        c.service_url(url, "platform base URL")


@pytest.mark.parametrize("role", ["EP-123", "PR-", "123", "PR-12 3", "pr-123"])
def test_only_practice_roles_may_author(role: str) -> None:
    with pytest.raises(InvalidInput, match="PR-"):
        c.practitioner_role(role)


def test_practitioner_map() -> None:
    assert c.practitioner_map(["tok1=PR-1", " tok2 = PR-2 "]) == {"tok1": "PR-1", "tok2": "PR-2"}
    with pytest.raises(InvalidInput):
        c.practitioner_map(["tok1"])


def test_pdf_hosts_are_normalised() -> None:
    assert c.pdf_host_list("Files.Example.com, 127.0.0.1:8443,files.example.com") == (
        "files.example.com",
        "127.0.0.1:8443",
    )


@given(st.text(max_size=40))
def test_pdf_hosts_either_parse_to_hosts_or_are_refused(value: str) -> None:
    try:
        hosts = c.pdf_host_list(value)
    except InvalidInput:
        return
    assert hosts
    assert all(c.HOST_PORT.match(h) for h in hosts)


def test_generated_program_keys_meet_physitrack_rules() -> None:
    for _ in range(50):
        key = c.new_program_api_key()
        assert len(key) >= 30
        assert any(ch.islower() for ch in key)
        assert any(ch.isupper() for ch in key)
        assert any(ch.isdigit() for ch in key)


def test_signing_secret_is_a_standard_webhooks_secret() -> None:
    from standardwebhooks.webhooks import Webhook

    Webhook(c.new_signing_secret())  # raises if the format is wrong


def test_durability_warnings() -> None:
    good = durability_warnings({"aof_enabled": 1}, {"maxmemory_policy": "noeviction"}, "")
    assert good == []
    nothing_on_disk = durability_warnings({"aof_enabled": 0}, {}, "")
    assert any("keeps nothing on disk" in w for w in nothing_on_disk)
    evicting = durability_warnings({"aof_enabled": 1}, {"maxmemory_policy": "allkeys-lru"}, "")
    assert any("evict" in w for w in evicting)
    unknown = durability_warnings({"aof_enabled": 0}, {}, None)
    assert any("cannot be read" in w for w in unknown)
    snapshots_only = durability_warnings({"aof_enabled": 0}, {}, "3600 1")
    assert any("append-only file is off" in w for w in snapshots_only)


SECRET_TOKENS = st.text(
    alphabet="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_.", min_size=12, max_size=40
).map(lambda text: "tok" + text)


@given(
    token=SECRET_TOKENS,
    role=st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
)
def test_refusing_a_practitioner_mapping_never_shows_its_token(token: str, role: object) -> None:
    """The token can sign in as the practitioner (therapy-platforms.md 1.7): an error about
    its mapping, from the CLI's TOKEN=PR-… pairs or the admin API's body, names no token."""
    request = {
        "name": "Clinic",
        "halaxy_key": "id:secret",
        "platform": "physitrack",
        "platform_base_url": "https://au.physitrack.com/api/v2",
        "platform_api_key": "key",
        "practitioners": {token: role},
    }
    attempts = [
        lambda: c.practitioner_map([token]),
        lambda: c.practitioner_map([f"{token}=EP-1001"]),
        lambda: onboarding.parse_request(request),
        lambda: onboarding.build_connection(
            onboarding.parse_request({**request, "practitioners": {token: "EP-1"}}), utcnow()
        ),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidInput) as refused:
            attempt()
        shown = " ".join([str(refused.value), *refused.value.problems])
        assert token not in shown

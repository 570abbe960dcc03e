"""A connection after `add`: enabled again, edited, each change audited (domain, real Redis).

The CLI and the admin API over these are tested in tests/services/test_cli_lifecycle.py and
tests/services/test_admin_lifecycle.py.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from services.sandbox.halaxy import FakeHalaxy
from shared.connections import ConnectionChangedMeanwhile, lifecycle, onboarding
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.infra.clock import utcnow
from shared.infra.errors import AlreadyConnected, InvalidInput
from tests.conftest import make_connection
from tests.helpers import audit_of


def disabled(store: ConnectionStore, connection: Connection) -> Connection:
    return onboarding.disable_connection(store, connection, utcnow(), audit_of(store), "test")


def enable(store: ConnectionStore, connection: Connection, **options: Any) -> Connection:
    return lifecycle.enable_connection(
        store, connection, utcnow(), audit_of(store), "ops-person", **options
    )


def edit(
    store: ConnectionStore, connection: Connection, **fields: Any
) -> tuple[Connection, list[str]]:
    request = lifecycle.parse_edit(fields)
    return lifecycle.edit_connection(
        store, connection, request, utcnow(), audit_of(store), "ops-person"
    )


def token() -> str:
    return "pt-tok-" + secrets.token_hex(8)


# --- enable -----------------------------------------------------------------------------------


def test_enable_brings_back_the_same_connection_with_its_id_urls_and_secrets(
    store: ConnectionStore, connection: Connection
) -> None:
    before = onboarding.setup_details(disabled(store, connection), "https://bridge.example.test")

    enabled = enable(store, store.get(connection.id) or connection)

    assert enabled.enabled
    assert store.get(connection.id) == enabled
    after = onboarding.setup_details(enabled, "https://bridge.example.test")
    for same in ("id", "webhook_urls", "program_webhook_url", "halaxy_auth_header"):
        assert after[same] == before[same]
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.enabled"]
    assert (entry.actor, entry.connection_id, entry.resource_ids) == (
        "ops-person",
        connection.id,
        "",
    )


def test_enabling_an_enabled_connection_changes_nothing(
    store: ConnectionStore, connection: Connection
) -> None:
    assert enable(store, connection) is connection
    assert not [e for e in audit_of(store).entries() if e.action == "connection.enabled"]


def test_enable_is_refused_when_another_connection_took_the_halaxy_key_meanwhile(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    key = fake_halaxy.add_key()
    first = disabled(store, make_connection(store, fake_halaxy, verify_key, halaxy_key=key))
    second = make_connection(store, fake_halaxy, verify_key, halaxy_key=key)

    with pytest.raises(AlreadyConnected) as refused:
        enable(store, first)

    assert second.id in str(refused.value)
    assert refused.value.connection_id == second.id
    assert store.get(first.id) == first  # still disabled, unchanged


def test_enable_is_refused_when_another_connection_took_the_platform_key_unless_meant(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    platform_key = "pt-key-" + secrets.token_hex(8)
    first = disabled(
        store, make_connection(store, fake_halaxy, verify_key, platform_api_key=platform_key)
    )
    second = make_connection(store, fake_halaxy, verify_key, platform_api_key=platform_key)

    with pytest.raises(AlreadyConnected) as refused:
        enable(store, first)
    assert refused.value.connection_id == second.id

    assert enable(store, first, allow_shared_platform_key=True).enabled


def test_enable_is_refused_when_another_connection_maps_one_of_its_tokens(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    """A token names one practitioner of one connection: the disabled one gave it up (its
    map was edited, say) and another took it, then the first got it back by a restore."""
    shared_token = token()
    first = disabled(store, make_connection(store, fake_halaxy, verify_key))
    second = make_connection(
        store, fake_halaxy, verify_key, practitioners={shared_token: "PR-2002"}
    )
    # What a restore from a backup would bring back: the first connection with that token too.
    restored = first.model_copy(update={"practitioners": {shared_token: "PR-3003"}})
    store.save(restored)

    with pytest.raises(AlreadyConnected) as refused:
        enable(store, restored)
    assert refused.value.connection_id == second.id


def test_enable_of_a_connection_changed_since_it_was_read_is_refused(
    store: ConnectionStore, connection: Connection
) -> None:
    first_read = disabled(store, connection)
    edit(store, first_read, name="Renamed meanwhile")

    with pytest.raises(ConnectionChangedMeanwhile):
        enable(store, first_read)


# --- edit -------------------------------------------------------------------------------------


def test_edit_changes_the_name_and_keeps_the_id_urls_and_secrets(
    store: ConnectionStore, connection: Connection
) -> None:
    before = onboarding.setup_details(connection, "https://bridge.example.test")

    updated, changed = edit(store, connection, name="  Clinic Two  ")

    assert changed == ["name"]
    assert updated.name == "Clinic Two"
    assert store.get(connection.id) == updated
    after = onboarding.setup_details(updated, "https://bridge.example.test")
    assert {k: v for k, v in after.items() if k not in {"name", "updated_at"}} == {
        k: v for k, v in before.items() if k not in {"name", "updated_at"}
    }


def test_edit_sets_and_clears_the_default_author(
    store: ConnectionStore, connection: Connection
) -> None:
    updated, changed = edit(store, connection, author=" PR-7007 ")
    assert (changed, updated.default_author) == (["default_author"], "PR-7007")

    cleared, changed = edit(store, updated, author=None)
    assert (changed, cleared.default_author) == (["default_author"], None)


def test_edit_adds_changes_and_removes_practitioner_mappings(
    store: ConnectionStore, connection: Connection
) -> None:
    one, two = token(), token()
    added, changed = edit(store, connection, practitioners={one: "PR-2002", two: "PR-3003"})
    assert changed == ["practitioners"]
    assert added.practitioners == {one: "PR-2002", two: "PR-3003"}

    updated, _ = edit(store, added, practitioners={one: "PR-4004", two: None})

    assert updated.practitioners == {one: "PR-4004"}
    assert store.get(connection.id) == updated


def test_a_practitioner_mapping_is_removed_from_a_disabled_connection_too(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> None:
    """A disabled connection still holds its tokens (it can come back), so a token it maps
    cannot be given to another connection until it is removed from the disabled one."""
    held = token()
    first = disabled(
        store, make_connection(store, fake_halaxy, verify_key, practitioners={held: "PR-2002"})
    )
    second = make_connection(store, fake_halaxy, verify_key)
    with pytest.raises(AlreadyConnected):
        edit(store, second, practitioners={held: "PR-5005"})

    freed, changed = edit(store, first, practitioners={held: None})
    assert (changed, freed.practitioners, freed.enabled) == (["practitioners"], {}, False)

    taken, _ = edit(store, second, practitioners={held: "PR-5005"})
    assert taken.practitioners == {held: "PR-5005"}


def test_edit_replaces_the_pdf_hosts_and_goes_back_to_the_defaults(
    store: ConnectionStore, connection: Connection
) -> None:
    updated, changed = edit(store, connection, pdf_hosts=["Files.Example.com", "127.0.0.1:9000"])
    assert changed == ["pdf_hosts"]
    assert updated.allowed_pdf_hosts == ("files.example.com", "127.0.0.1:9000")

    back, changed = edit(store, updated, pdf_hosts=None)
    assert changed == ["pdf_hosts"]
    assert back.pdf_hosts is None
    assert back.allowed_pdf_hosts == connection.allowed_pdf_hosts


def test_edit_changes_the_platform_base_url(store: ConnectionStore, connection: Connection) -> None:
    updated, changed = edit(
        store, connection, platform_base_url="https://eu.physitrack.com/api/v2/"
    )
    assert changed == ["platform_base_url"]
    assert updated.platform_base_url == "https://eu.physitrack.com/api/v2"
    assert updated.platform_account.base_url == updated.platform_base_url


def test_an_edit_that_changes_nothing_stores_and_audits_nothing(
    store: ConnectionStore, connection: Connection
) -> None:
    same, changed = edit(store, connection, name=connection.name, author=connection.default_author)
    assert (same, changed) == (connection, [])
    assert not [e for e in audit_of(store).entries() if e.action == "connection.edited"]


def test_the_audit_entry_names_the_fields_changed_never_their_values(
    store: ConnectionStore, connection: Connection
) -> None:
    secret_token = token()
    edit(
        store,
        connection,
        name="Renamed Clinic",
        practitioners={secret_token: "PR-2002"},
        pdf_hosts=["files.example.com"],
    )
    [entry] = [e for e in audit_of(store).entries() if e.action == "connection.edited"]
    assert entry.resource_ids == "name practitioners pdf_hosts"
    assert (entry.actor, entry.connection_id) == ("ops-person", connection.id)
    written = repr(entry)
    for value in (secret_token, "Renamed Clinic", "files.example.com", "PR-2002"):
        assert value not in written


def test_two_edits_made_to_one_reading_store_only_the_first(
    store: ConnectionStore, connection: Connection
) -> None:
    edit(store, connection, name="First")
    with pytest.raises(ConnectionChangedMeanwhile):
        edit(store, connection, name="Second")
    stored = store.get(connection.id)
    assert stored is not None
    assert stored.name == "First"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "say what to change"),
        ({"practitioners": {}}, "say what to change"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"author": "someone"}, "PR-123456"),
        ({"author": "EP-1"}, "PR-123456"),
        ({"practitioners": {"tok": "EP-1"}}, "practitioner role"),
        ({"practitioners": {"  ": "PR-1"}}, "practitioners"),
        ({"practitioners": {"unknown-token-xyz": None}}, "no such practitioner token"),
        ({"pdf_hosts": []}, "at least one host"),
        ({"pdf_hosts": ["bad host!"]}, "host or host:port"),
        ({"platform_base_url": "ftp://x"}, "https"),
        ({"platform_base_url": "http://example.com"}, "https"),
        ({"platform_base_url": None}, "platform_base_url"),
        ({"enabled": False}, "enabled"),
        ({"webhook_secret": "mine"}, "webhook_secret"),
    ],
)
def test_bad_edits_are_refused_by_field_and_change_nothing(
    store: ConnectionStore, connection: Connection, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        edit(store, connection, **fields)
    assert named in "; ".join([str(refused.value), *refused.value.problems])
    assert "unknown-token-xyz" not in "; ".join([str(refused.value), *refused.value.problems])
    assert store.get(connection.id) == connection
    assert not [e for e in audit_of(store).entries() if e.action == "connection.edited"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["name", "author", "practitioners", "pdf_hosts", "platform_base_url", "enabled", "id"]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=4))
def test_any_edit_body_is_applied_whole_or_refused_with_nothing_changed(
    store: ConnectionStore, connection: Connection, body: dict[str, Any]
) -> None:
    current = store.get(connection.id)
    assert current is not None
    try:
        request = lifecycle.parse_edit(body)
        updated, changed = lifecycle.edit_connection(
            store, current, request, utcnow(), audit_of(store), "fuzz"
        )
    except InvalidInput as refused:
        assert store.get(connection.id) == current
        for problem in refused.problems:  # each names the field it is about
            assert any(problem.startswith((f"{n}:", f"{n}.")) for n in [*body, "body"]), problem
        return
    assert store.get(connection.id) == updated
    assert updated.id == current.id
    assert updated.webhook_secret == current.webhook_secret
    assert set(changed) <= set(lifecycle.EDITABLE)


def test_a_secret_is_not_editable() -> None:
    """Secrets change by rotation (connections rotate), which keeps the old one valid for a
    grace period; an edit cannot set them."""
    for name in ("webhook_secret", "program_api_key", "halaxy_key", "platform_api_key"):
        with pytest.raises(InvalidInput):
            lifecycle.parse_edit({name: SecretStr("x").get_secret_value()})

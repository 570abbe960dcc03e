"""Named admin credentials (`shared.ops.admins`) on real Redis: a token shown once and kept only
as its digest; unknown, revoked and expired tokens refused saying which; the bootstrap token;
names and lifetimes checked; every change audited under who made it."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import redis
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.infra.audit import AuditTrail
from shared.infra.clock import utcnow
from shared.infra.errors import InvalidInput
from shared.infra.store import Keys
from shared.ops.admins import (
    BOOTSTRAP_NAME,
    MAX_LIFETIME,
    NAME,
    RESERVED_NAMES,
    Admin,
    AdminState,
    AdminStore,
    CredentialRefused,
    Refusal,
    Role,
    UnknownAdmin,
    parse_lifetime,
)

BOOTSTRAP = "bootstrap-" + "b" * 30


@pytest.fixture
def audit(redis_server_client: redis.Redis, keys: Keys) -> AuditTrail:
    return AuditTrail(redis_server_client, keys)


@pytest.fixture
def admins(redis_server_client: redis.Redis, keys: Keys, audit: AuditTrail) -> AdminStore:
    return AdminStore(redis_server_client, keys, audit, SecretStr(BOOTSTRAP))


def all_values(client: redis.Redis, keys: Keys) -> bytes:
    """Every key and value under the test's namespace, as one blob to search."""
    blob = b""
    for key in client.scan_iter(match=f"{keys.namespace}*"):
        kind = client.type(key)
        blob += key
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                blob += field + value
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                blob += b"".join(k + v for k, v in fields.items())
    return blob


def test_roles_are_ordered_viewer_operator_admin() -> None:
    assert [role.value for role in Role] == ["viewer", "operator", "admin"]
    allowed = {(held, needed) for held in Role for needed in Role if held.allows(needed)}
    assert allowed == {
        (Role.VIEWER, Role.VIEWER),
        (Role.OPERATOR, Role.VIEWER),
        (Role.OPERATOR, Role.OPERATOR),
        (Role.ADMIN, Role.VIEWER),
        (Role.ADMIN, Role.OPERATOR),
        (Role.ADMIN, Role.ADMIN),
    }


def test_an_added_admin_authenticates_and_only_the_digest_is_stored(
    admins: AdminStore, redis_server_client: redis.Redis, keys: Keys, audit: AuditTrail
) -> None:
    token = admins.add("alice", Role.OPERATOR, utcnow() + timedelta(days=90), "carol")

    assert token.startswith("hbadm_")
    assert len(token) >= 40
    assert admins.authenticate(token) == Admin("alice", Role.OPERATOR)
    stored = all_values(redis_server_client, keys)
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored
    [record] = admins.list()
    assert (record.name, record.role, record.added_by) == ("alice", Role.OPERATOR, "carol")
    assert record.state(utcnow()) is AdminState.ACTIVE
    assert "token" not in str(record.shown(utcnow())).replace("token_digest", "")
    [entry] = audit.entries()
    assert (entry.actor, entry.action) == ("carol", "admin.added")
    assert entry.resource_ids.startswith("admin:alice role:operator expires:")
    assert token not in str(entry)


def test_two_admins_get_different_tokens(admins: AdminStore) -> None:
    one = admins.add("one", Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    two = admins.add("two", Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    assert one != two
    assert admins.authenticate(two).name == "two"


def test_an_unknown_token_is_refused_as_unknown(admins: AdminStore) -> None:
    admins.add("alice", Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    with pytest.raises(CredentialRefused) as caught:
        admins.authenticate("hbadm_" + "x" * 43)
    assert (caught.value.reason, caught.value.name) == (Refusal.UNKNOWN, None)
    assert str(caught.value) == "unknown admin token"


def test_a_revoked_token_is_refused_as_revoked_and_audited(
    admins: AdminStore, audit: AuditTrail
) -> None:
    token = admins.add("alice", Role.ADMIN, utcnow() + timedelta(days=1), "ops")

    revoked = admins.revoke("alice", "carol")

    assert (revoked.revoked_by, revoked.state(utcnow())) == ("carol", AdminState.REVOKED)
    with pytest.raises(CredentialRefused) as caught:
        admins.authenticate(token)
    assert (caught.value.reason, caught.value.name) == (Refusal.REVOKED, "alice")
    assert str(caught.value) == "the admin token of alice was revoked"
    assert token not in str(caught.value)
    assert [(e.actor, e.action, e.resource_ids) for e in audit.entries()][-1] == (
        "carol",
        "admin.revoked",
        "admin:alice",
    )


def test_a_token_past_its_expiry_is_refused_as_expired(admins: AdminStore) -> None:
    token = admins.add("alice", Role.VIEWER, utcnow() + timedelta(hours=1), "ops")
    assert admins.authenticate(token).name == "alice"

    with time_machine.travel(utcnow() + timedelta(hours=1, seconds=1), tick=False):
        with pytest.raises(CredentialRefused) as caught:
            admins.authenticate(token)
        assert admins.list()[0].state(utcnow()) is AdminState.EXPIRED
    assert (caught.value.reason, caught.value.name) == (Refusal.EXPIRED, "alice")
    assert str(caught.value).startswith("the admin token of alice expired at ")


def test_a_name_gets_a_new_token_once_revoked_and_the_old_one_stays_refused(
    admins: AdminStore,
) -> None:
    old = admins.add("alice", Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    with pytest.raises(InvalidInput, match="already has an active token"):
        admins.add("alice", Role.ADMIN, utcnow() + timedelta(days=1), "ops")
    assert admins.authenticate(old).role is Role.VIEWER  # the refused add changed nothing

    admins.revoke("alice", "ops")
    new = admins.add("alice", Role.ADMIN, utcnow() + timedelta(days=1), "ops")

    assert admins.authenticate(new) == Admin("alice", Role.ADMIN)
    with pytest.raises(CredentialRefused) as caught:
        admins.authenticate(old)
    assert caught.value.reason is Refusal.REVOKED


def test_an_expired_name_gets_a_new_token(admins: AdminStore) -> None:
    admins.add("alice", Role.VIEWER, utcnow() + timedelta(hours=1), "ops")
    with time_machine.travel(utcnow() + timedelta(hours=2), tick=False):
        token = admins.add("alice", Role.VIEWER, utcnow() + timedelta(hours=1), "ops")
        assert admins.authenticate(token).name == "alice"


def test_revoking_an_unknown_or_revoked_name_is_refused_and_changes_nothing(
    admins: AdminStore, audit: AuditTrail
) -> None:
    with pytest.raises(UnknownAdmin):
        admins.revoke("nobody", "ops")
    admins.add("alice", Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    admins.revoke("alice", "ops")
    before = (admins.list(), audit.entries())
    with pytest.raises(InvalidInput, match="already revoked"):
        admins.revoke("alice", "someone-else")
    assert (admins.list(), audit.entries()) == before


def test_the_bootstrap_token_is_the_bootstrap_admin_without_redis(keys: Keys) -> None:
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)
    admins = AdminStore(unreachable, keys, AuditTrail(unreachable, keys), SecretStr(BOOTSTRAP))
    assert admins.authenticate(BOOTSTRAP) == Admin(BOOTSTRAP_NAME, Role.ADMIN)
    assert admins.has_bootstrap


def test_without_a_bootstrap_token_it_is_unknown(
    redis_server_client: redis.Redis, keys: Keys, audit: AuditTrail
) -> None:
    admins = AdminStore(redis_server_client, keys, audit)
    with pytest.raises(CredentialRefused):
        admins.authenticate(BOOTSTRAP)
    assert not admins.has_bootstrap


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_are_refused(admins: AdminStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        admins.add(name, Role.VIEWER, utcnow() + timedelta(days=1), "ops")
    assert admins.list() == []


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(max_size=80))
def test_a_name_is_short_lower_case_and_on_one_line_or_refused(
    admins: AdminStore, audit: AuditTrail, name: str
) -> None:
    expires = utcnow() + timedelta(days=1)
    valid = NAME.fullmatch(name) is not None and name not in RESERVED_NAMES
    try:
        token = admins.add(name, Role.VIEWER, expires, "ops")
    except InvalidInput:
        assert not valid
        assert name not in {r.name for r in admins.list()}
        return
    assert valid
    assert admins.authenticate(token).name == name
    assert len(name) <= 64
    assert name == name.strip().lower()
    admins.revoke(name, "ops")


@pytest.mark.parametrize(
    "expires", [timedelta(0), timedelta(seconds=-1), MAX_LIFETIME + timedelta(minutes=1)]
)
def test_an_expiry_not_ahead_or_too_far_is_refused(admins: AdminStore, expires: timedelta) -> None:
    with pytest.raises(InvalidInput, match="expiry"):
        admins.add("alice", Role.VIEWER, utcnow() + expires, "ops")
    assert admins.list() == []


@pytest.mark.parametrize("by", ["", "a\nb", "x" * 101])
def test_who_adds_must_be_a_name_on_one_line(admins: AdminStore, by: str) -> None:
    with pytest.raises(InvalidInput, match="by"):
        admins.add("alice", Role.VIEWER, utcnow() + timedelta(days=1), by)
    assert admins.list() == []


@pytest.mark.parametrize(
    ("text", "lifetime"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30))],
)
def test_a_lifetime_is_minutes_hours_or_days(text: str, lifetime: timedelta) -> None:
    assert parse_lifetime(text) == lifetime


@given(text=st.text(max_size=12))
def test_any_other_lifetime_is_a_clear_error(text: str) -> None:
    try:
        lifetime = parse_lifetime(text)
    except InvalidInput as exc:
        assert str(exc).startswith("expires-in:")
        return
    assert timedelta(0) < lifetime <= MAX_LIFETIME
    assert text.strip()[-1] in "mhd"

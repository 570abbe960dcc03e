"""A connection's Physitrack practitioners: add, list, rotate and remove, against real Redis.

Through the real `ConnectionStore` (Fernet key from the test settings): what is stored is
sealed, a token names one practitioner of one connection across the deployment (checked in
the same atomic step as the write), and every change is audited with ids and actions only.
Keys are checked by the real `physitrack_key_verifier` against the fake Physitrack where the
test is about the check; elsewhere by a recording stand-in.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import FakePhysitrack
from shared.connections import roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.roster import PlatformKeyVerifier, PractitionerRequest
from shared.connections.store import ConnectionChangedMeanwhile, ConnectionStore
from shared.infra.audit import AuditEntry, AuditTrail
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.errors import AlreadyConnected, InvalidInput, Permanent, Transient
from shared.platforms import PlatformAccount
from tests.conftest import make_connection
from tests.connections.test_store import every_value
from tests.helpers import audit_of, run_together

BY = "ops-person"


def new_token() -> str:
    return "ptok-" + secrets.token_hex(8)


def new_pms_key() -> str:
    """A PMS key as Physitrack takes one: 30+ characters, upper, lower and digits."""
    return "PmsKey" + secrets.token_hex(16)


def request(**fields: Any) -> PractitionerRequest:
    data: dict[str, Any] = {
        "token": new_token(),
        "halaxy_practitioner": "PR-2001",
        "api_key": "pt-" + secrets.token_urlsafe(16),
        "verify": False,
    }
    data.update(fields)
    return roster.parse_practitioner(data)


class Verifier:
    """A stand-in key check: records each account, and raises `error` if given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.accounts: list[PlatformAccount] = []
        self.error = error

    def __call__(self, account: PlatformAccount) -> None:
        self.accounts.append(account)
        if self.error is not None:
            raise self.error


@pytest.fixture
def audit(store: ConnectionStore) -> AuditTrail:
    return audit_of(store)


@pytest.fixture
def physitrack_connection(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> Connection:
    return make_connection(store, fake_halaxy, verify_key)


def other_connection(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, **fields: Any
) -> Connection:
    return make_connection(store, fake_halaxy, verify_key, name="Clinic Two", **fields)


def add(
    store: ConnectionStore,
    connection: Connection,
    audit: AuditTrail,
    practitioner: PractitionerRequest,
    verify: PlatformKeyVerifier | None = None,
) -> Connection:
    return roster.add_practitioner(
        store, verify or Verifier(), connection, practitioner, utcnow(), audit, BY
    )


def secrets_in(practitioner: PractitionerRequest) -> list[str]:
    values = [practitioner.token, practitioner.api_key, practitioner.pms_key]
    return [v.get_secret_value() for v in values if v is not None]


def assert_unchanged(
    store: ConnectionStore, connection: Connection, audit: AuditTrail, before: list[AuditEntry]
) -> None:
    """A refused change: the connection stored as it was, and nothing audited."""
    assert store.get(connection.id) == connection
    assert audit.entries() == before


def audit_text(audit: AuditTrail) -> str:
    return "\n".join(repr(entry) for entry in audit.entries())


# --- parsing: pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"halaxy_practitioner": "EP-12"}, "PR-"),
        ({"token": "   "}, "token"),
        ({"api_key": "ke\x00y"}, "api_key"),
        ({"pms_name": "cliniko"}, "PMS name and the PMS key"),
        ({"pms_key": new_pms_key()}, "PMS name and the PMS key"),
        ({"pms_name": "Not A Name", "pms_key": new_pms_key()}, "PMS name"),
        ({"pms_name": "cliniko", "pms_key": "short"}, "30 characters"),
        ({"role": "PR-1"}, "role"),
    ],
)
def test_a_bad_practitioner_is_refused_naming_the_problem(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        roster.new_practitioner(request(**fields), utcnow())
    assert problem in "; ".join([str(refused.value), *refused.value.problems])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["token", "halaxy_practitioner", "api_key", "pms_name", "pms_key", "default", "verify"]
)


@given(st.dictionaries(field_names | st.text(max_size=10), json_values, max_size=8))
def test_any_body_is_a_practitioner_or_invalid_input_that_shows_no_value(
    data: dict[str, Any],
) -> None:
    # Secrets marked with a character no message holds, so an echo is found, not a word of the
    # message the generator happened to write.
    marked: dict[str, str] = {}
    for name in ("token", "api_key", "pms_key"):
        if isinstance(data.get(name), str):
            marked[name] = data[name] = "\u2603" + data[name]
    try:
        roster.new_practitioner(roster.parse_practitioner(data), utcnow())
    except InvalidInput as exc:
        said = "; ".join([str(exc), *exc.problems])
        for value in marked.values():
            assert value.strip() not in said


@given(st.dictionaries(field_names, json_values, max_size=6))
def test_any_rotation_body_is_a_rotation_or_invalid_input(data: dict[str, Any]) -> None:
    try:
        rotation = roster.parse_practitioner_rotation(data)
    except InvalidInput:
        return
    assert set(rotation.replaced()) == {
        name for name in ("token", "api_key", "pms_key", "default") if data.get(name) is not None
    }


# --- add and list -------------------------------------------------------------------------------


def test_added_practitioners_are_listed_without_secrets(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    first = request(halaxy_practitioner="PR-2002", default=True)
    second = request(halaxy_practitioner="PR-2001", pms_name="cliniko", pms_key=new_pms_key())
    add(store, physitrack_connection, audit, first)
    stored = store.get(physitrack_connection.id)
    assert stored is not None
    updated = add(store, stored, audit, second)

    assert store.get(physitrack_connection.id) == updated
    rows = roster.practitioner_rows(updated)
    assert [r["halaxy_practitioner"] for r in rows] == ["PR-2001", "PR-2002"]
    assert [r["auth"] for r in rows] == ["pms", "api_key"]
    assert [r["default"] for r in rows] == [False, True]
    assert rows[0]["pms_name"] == "cliniko"
    assert rows[1]["token_ends_with"] == first.token.get_secret_value()[-4:]
    for secret in secrets_in(first) + secrets_in(second):
        assert secret not in repr(rows)
        assert secret[:-4] not in repr(rows)


def test_no_token_or_key_is_stored_in_clear(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    practitioner = request(pms_name="cliniko", pms_key=new_pms_key())
    add(store, physitrack_connection, audit, practitioner)

    dumped = every_value(redis_server_client, settings.redis_namespace)
    assert physitrack_connection.id.encode() in dumped
    for secret in secrets_in(practitioner):
        assert secret.encode() not in dumped
    reopened = store.get(physitrack_connection.id)
    assert reopened is not None
    kept = reopened.practitioner("PR-2001")
    assert kept is not None
    assert kept.token == practitioner.token
    assert kept.pms_key == practitioner.pms_key


def test_the_same_practitioner_twice_is_refused(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    updated = add(store, physitrack_connection, audit, request())
    with pytest.raises(InvalidInput, match="practitioners rotate"):
        add(store, updated, audit, request())
    assert store.get(physitrack_connection.id) == updated


def test_a_second_default_takes_over(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    one = add(
        store, physitrack_connection, audit, request(halaxy_practitioner="PR-1", default=True)
    )
    two = add(store, one, audit, request(halaxy_practitioner="PR-2", default=True))

    assert [p.halaxy_practitioner for p in two.physitrack_practitioners if p.default] == ["PR-2"]
    assert two.default_seat().practitioner == "PR-2"
    assert store.get(two.id) == two


def test_a_rest_connection_takes_no_practitioners(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, audit: AuditTrail
) -> None:
    rest = make_connection(
        store, fake_halaxy, verify_key, platform="rest", platform_base_url="https://rest.example"
    )
    verifier = Verifier()
    with pytest.raises(InvalidInput, match="Physitrack connections"):
        add(store, rest, audit, request(verify=True), verifier)
    assert verifier.accounts == []
    assert store.get(rest.id) == rest


# --- the key check -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["api_key", "pms"])
def test_the_key_is_checked_against_physitrack_in_both_auth_modes(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    fake_physitrack: FakePhysitrack,
    verify_platform_key: PlatformKeyVerifier,
    mode: str,
) -> None:
    pms = ("cliniko", new_pms_key()) if mode == "pms" else None
    api_key = fake_physitrack.add_key(pms=pms)
    fields: dict[str, Any] = {"api_key": api_key, "verify": True}
    if pms is not None:
        fields.update(pms_name=pms[0], pms_key=pms[1])

    updated = add(store, physitrack_connection, audit, request(**fields), verify_platform_key)

    [call] = fake_physitrack.requests
    assert (call["method"], call["path"], call["status"]) == ("GET", "/api/v2/clients", 200)
    assert roster.practitioner_rows(updated)[0]["auth"] == mode


@pytest.mark.parametrize("wrong", ["api_key", "pms_key"])
def test_a_key_physitrack_refuses_stores_nothing_and_audits_nothing(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    fake_physitrack: FakePhysitrack,
    verify_platform_key: PlatformKeyVerifier,
    wrong: str,
) -> None:
    pms = ("cliniko", new_pms_key())
    fields: dict[str, Any] = {
        "api_key": fake_physitrack.add_key(pms=pms),
        "pms_name": pms[0],
        "pms_key": pms[1],
        "verify": True,
    }
    fields[wrong] = new_pms_key()
    before = audit.entries()

    with pytest.raises(InvalidInput, match="Physitrack refused") as refused:
        add(store, physitrack_connection, audit, request(**fields), verify_platform_key)

    assert "401" in "; ".join(refused.value.problems)
    assert fields[wrong] not in "; ".join([str(refused.value), *refused.value.problems])
    assert_unchanged(store, physitrack_connection, audit, before)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_physitrack_unavailable_is_transient_and_stores_nothing(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    fake_physitrack: FakePhysitrack,
    verify_platform_key: PlatformKeyVerifier,
    status: int,
) -> None:
    fake_physitrack.faults.script.append(status)
    practitioner = request(api_key=fake_physitrack.add_key(), verify=True)

    with pytest.raises(Transient, match="--no-verify"):
        add(store, physitrack_connection, audit, practitioner, verify_platform_key)

    assert store.get(physitrack_connection.id) == physitrack_connection


def test_no_verify_makes_no_check(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    verifier = Verifier(Permanent("refused"))
    add(store, physitrack_connection, audit, request(verify=False), verifier)
    assert verifier.accounts == []


# --- one token, one practitioner of one connection ----------------------------------------------


@pytest.mark.parametrize("where", ["record", "author-map"])
@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_a_token_another_connection_holds_is_refused_naming_it(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    physitrack_connection: Connection,
    audit: AuditTrail,
    where: str,
    enabled: bool,
) -> None:
    token = new_token()
    if where == "record":
        holder = other_connection(store, fake_halaxy, verify_key)
        holder = add(store, holder, audit, request(token=token, halaxy_practitioner="PR-9"))
    else:
        holder = other_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-9"})
    if not enabled:
        disabled = holder.model_copy(update={"enabled": False})
        store.replace(holder, disabled)
    before = audit.entries()

    with pytest.raises(AlreadyConnected) as refused:
        add(store, physitrack_connection, audit, request(token=token))

    assert refused.value.connection_id == holder.id
    assert holder.id in str(refused.value)
    assert token not in str(refused.value)
    assert_unchanged(store, physitrack_connection, audit, before)


def test_a_new_connection_mapping_a_token_a_practitioner_holds_is_refused(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    physitrack_connection: Connection,
    audit: AuditTrail,
) -> None:
    """The other way round: `connections add --practitioner TOKEN=PR-…` with a token a
    practitioner record of another connection holds."""
    token = new_token()
    add(store, physitrack_connection, audit, request(token=token))
    with pytest.raises(AlreadyConnected, match=physitrack_connection.id):
        other_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-9"})
    assert [c.id for c in store.list()] == [physitrack_connection.id]


def test_a_token_the_connection_maps_to_the_same_practitioner_becomes_their_record(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, audit: AuditTrail
) -> None:
    """A connection that mapped TOKEN=PR-2 for authors gives PR-2 an account of their own."""
    token = new_token()
    mapped = make_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-2"})

    updated = add(store, mapped, audit, request(token=token, halaxy_practitioner="PR-2"))

    assert updated.practitioners == {}
    assert updated.practitioner_with_token(token) is not None
    assert store.get(mapped.id) == updated


def test_a_token_the_connection_maps_to_another_practitioner_is_refused(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, audit: AuditTrail
) -> None:
    token = new_token()
    mapped = make_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-3"})

    with pytest.raises(InvalidInput, match="PR-3") as refused:
        add(store, mapped, audit, request(token=token, halaxy_practitioner="PR-2"))

    assert token not in str(refused.value)
    assert store.get(mapped.id) == mapped


def test_two_practitioners_of_one_connection_with_one_token_are_refused(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    token = new_token()
    one = add(store, physitrack_connection, audit, request(token=token, halaxy_practitioner="PR-1"))
    with pytest.raises(InvalidInput, match="same token"):
        add(store, one, audit, request(token=token, halaxy_practitioner="PR-2"))
    assert store.get(one.id) == one


def test_of_two_adds_of_one_token_at_once_one_is_stored_and_the_other_names_it(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, audit: AuditTrail
) -> None:
    """Both adds read the stored connections (neither holds the token) before either writes:
    a check made apart from the write would let both through. The later must be checked
    again, and refused naming the earlier, not told its own connection changed."""
    token = new_token()
    connections = [
        make_connection(store, fake_halaxy, verify_key, name=f"Clinic {n}") for n in range(2)
    ]
    both_read = threading.Barrier(2, timeout=10)
    first_read: set[int] = set()

    def refuse_after_both_read(new: Connection, stored: Sequence[Connection]) -> None:
        roster.token_refusal(new, stored)
        if threading.get_ident() not in first_read:
            first_read.add(threading.get_ident())
            both_read.wait()

    outcomes: dict[str, str] = {}
    turn = iter(connections)
    lock = threading.Lock()

    def add_one() -> None:
        with lock:
            connection = next(turn)
        practitioner = roster.new_practitioner(request(token=token), utcnow())
        updated = roster.with_practitioner(connection, practitioner, utcnow())
        try:
            store.replace(connection, updated, refuse_after_both_read)
            outcomes[connection.id] = "stored"
        except AlreadyConnected as exc:
            outcomes[connection.id] = f"refused: {exc.connection_id}"

    run_together(add_one, 2, timeout=20)

    [winner] = [cid for cid, outcome in outcomes.items() if outcome == "stored"]
    [loser] = [cid for cid in outcomes if cid != winner]
    assert outcomes[loser] == f"refused: {winner}"
    holders = [c.id for c in store.list() if c.knows_token(token)]
    assert holders == [winner]


def test_many_adds_of_one_token_at_once_store_one(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier, audit: AuditTrail
) -> None:
    token = new_token()
    connections = iter(
        [make_connection(store, fake_halaxy, verify_key, name=f"Clinic {n}") for n in range(6)]
    )
    lock = threading.Lock()
    start = threading.Barrier(6, timeout=10)
    outcomes: list[str] = []

    def add_one() -> None:
        with lock:
            connection = next(connections)
        start.wait()
        try:
            add(store, connection, audit, request(token=token))
            outcomes.append("stored")
        except AlreadyConnected:
            outcomes.append("refused")

    run_together(add_one, 6, timeout=30)

    assert sorted(outcomes) == ["refused"] * 5 + ["stored"]
    assert len([c for c in store.list() if c.knows_token(token)]) == 1
    assert [e.action for e in audit.entries()].count("practitioner.added") == 1


def test_a_change_to_the_connection_itself_meanwhile_is_still_refused(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    add(store, physitrack_connection, audit, request(halaxy_practitioner="PR-1"))
    with pytest.raises(ConnectionChangedMeanwhile, match="look at it again"):
        add(store, physitrack_connection, audit, request(halaxy_practitioner="PR-2"))


# --- rotate ------------------------------------------------------------------------------------


def rotate(
    store: ConnectionStore,
    connection: Connection,
    audit: AuditTrail,
    halaxy_practitioner: str = "PR-2001",
    verify: PlatformKeyVerifier | None = None,
    check: bool = False,
    **fields: Any,
) -> Connection:
    rotation = roster.parse_practitioner_rotation({"verify": check, **fields})
    return roster.rotate_practitioner(
        store, verify or Verifier(), connection, halaxy_practitioner, rotation, utcnow(), audit, BY
    )


def test_rotate_replaces_each_secret_and_checks_a_new_key(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    fake_physitrack: FakePhysitrack,
    verify_platform_key: PlatformKeyVerifier,
) -> None:
    pms = ("cliniko", new_pms_key())
    added = add(
        store,
        physitrack_connection,
        audit,
        request(api_key=fake_physitrack.add_key(pms=pms), pms_name=pms[0], pms_key=pms[1]),
    )
    new_pms = new_pms_key()
    new_key = fake_physitrack.add_key(pms=(pms[0], new_pms))
    token = new_token()

    rotated = rotate(
        store,
        added,
        audit,
        verify=verify_platform_key,
        check=True,
        token=token,
        api_key=new_key,
        pms_key=new_pms,
    )

    practitioner = rotated.practitioner("PR-2001")
    assert practitioner is not None
    assert practitioner.token.get_secret_value() == token
    assert practitioner.api_key.get_secret_value() == new_key
    assert practitioner.pms_key == SecretStr(new_pms)
    assert practitioner.rotated_at is not None
    assert store.get(added.id) == rotated
    assert [r["status"] for r in fake_physitrack.requests] == [200]


def test_rotate_only_the_token_or_the_default_checks_no_key(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    added = add(store, physitrack_connection, audit, request())
    verifier = Verifier(Permanent("refused"))
    rotated = rotate(store, added, audit, verify=verifier, check=True, token=new_token())
    assert verifier.accounts == []
    rotated = rotate(store, rotated, audit, verify=verifier, check=True, default=True)
    assert rotated.default_seat().practitioner == "PR-2001"


def test_rotate_a_refused_key_changes_nothing(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    added = add(store, physitrack_connection, audit, request())
    before = audit.entries()
    with pytest.raises(InvalidInput, match="Physitrack refused"):
        rotate(store, added, audit, verify=Verifier(Permanent("401")), check=True, api_key="k2")
    assert_unchanged(store, added, audit, before)


def test_rotate_to_a_token_another_connection_holds_is_refused(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    physitrack_connection: Connection,
    audit: AuditTrail,
) -> None:
    token = new_token()
    holder = other_connection(store, fake_halaxy, verify_key, practitioners={token: "PR-9"})
    added = add(store, physitrack_connection, audit, request())
    with pytest.raises(AlreadyConnected, match=holder.id):
        rotate(store, added, audit, token=token)
    assert store.get(added.id) == added


@pytest.mark.parametrize(
    ("practitioner", "fields", "problem"),
    [
        ("PR-2001", {}, "say what to replace"),
        ("PR-404", {"token": new_token()}, "no practitioner 'PR-404'"),
        ("PR-2001", {"pms_key": new_pms_key()}, "no PMS name"),
        ("PR-2001", {"token": " "}, "token"),
    ],
)
def test_a_bad_rotation_is_refused(
    store: ConnectionStore,
    physitrack_connection: Connection,
    audit: AuditTrail,
    practitioner: str,
    fields: dict[str, Any],
    problem: str,
) -> None:
    added = add(store, physitrack_connection, audit, request())
    with pytest.raises(InvalidInput) as refused:
        rotate(store, added, audit, practitioner, **fields)
    assert problem in "; ".join([str(refused.value), *refused.value.problems])
    assert store.get(added.id) == added


# --- remove ------------------------------------------------------------------------------------


def test_remove_takes_the_practitioner_and_their_default_away(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    added = add(store, physitrack_connection, audit, request(default=True))
    removed = roster.remove_practitioner(store, added, "PR-2001", utcnow(), audit, BY)
    assert removed.physitrack_practitioners == ()
    assert removed.default_seat().practitioner is None  # the connection's own account
    assert store.get(added.id) == removed
    with pytest.raises(InvalidInput, match="no practitioner"):
        roster.remove_practitioner(store, removed, "PR-2001", utcnow(), audit, BY)


def test_a_removed_token_can_be_added_again_elsewhere(
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    verify_key: KeyVerifier,
    physitrack_connection: Connection,
    audit: AuditTrail,
) -> None:
    token = new_token()
    added = add(store, physitrack_connection, audit, request(token=token))
    roster.remove_practitioner(store, added, "PR-2001", utcnow(), audit, BY)
    elsewhere = other_connection(store, fake_halaxy, verify_key)
    assert add(store, elsewhere, audit, request(token=token)).practitioner_with_token(token)


# --- the audit trail ---------------------------------------------------------------------------


def test_every_change_is_audited_with_ids_and_actions_only(
    store: ConnectionStore, physitrack_connection: Connection, audit: AuditTrail
) -> None:
    first = request(pms_name="cliniko", pms_key=new_pms_key())
    added = add(store, physitrack_connection, audit, first)
    new_key, new_token_value = "pt-" + secrets.token_urlsafe(16), new_token()
    rotated = rotate(store, added, audit, api_key=new_key, token=new_token_value)
    roster.remove_practitioner(store, rotated, "PR-2001", utcnow(), audit, BY)

    entries = [e for e in audit.entries() if e.action.startswith("practitioner.")]
    assert [(e.action, e.actor, e.connection_id, e.resource_ids) for e in entries] == [
        ("practitioner.added", BY, added.id, "PR-2001"),
        ("practitioner.rotated", BY, added.id, "PR-2001 token api_key"),
        ("practitioner.removed", BY, added.id, "PR-2001"),
    ]  # the fields exactly: not even a token's last four characters
    text = audit_text(audit)
    for secret in [*secrets_in(first), new_key, new_token_value]:
        assert secret not in text

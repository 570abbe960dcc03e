"""The console's CSRF tokens (`services.webhook_receiver.csrf`), as pure functions: a token
works for the caller and the action it was issued for, for two hours on the product clock, and
any change to it, or any other caller, action, key or time, is refused."""

from __future__ import annotations

import base64
import string
from datetime import timedelta

import pytest
import time_machine
from cryptography.fernet import Fernet
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import SecretStr

from services.webhook_receiver.csrf import (
    CLOCK_SKEW,
    TOKEN_LIFETIME,
    CsrfKeys,
    CsrfRefused,
    check_token,
    credential_identity,
    csrf_keys,
    derive_key,
    issue_token,
)
from shared.infra import ConfigError, Settings, utcnow

KEYS = CsrfKeys((derive_key(b"k" * 32),))
OTHER_KEYS = CsrfKeys((derive_key(b"o" * 32),))
IDENTITY = credential_identity("admin-token-of-someone-0123456789")
SCOPE = "/ops/dead-letters/replay"
NOW = 1_900_000_000.0  # a fixed instant for the pure checks (no clock is read with `now=`)

identities = st.text(max_size=80)
scopes = st.text(max_size=120)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."


def refused(code: str, *args: object, **kwargs: object) -> None:
    with pytest.raises(CsrfRefused) as caught:
        check_token(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert caught.value.detail  # a sentence for the person


@given(identity=identities, scope=scopes, age=st.floats(0, TOKEN_LIFETIME.total_seconds()))
def test_a_token_works_for_its_caller_and_action_within_its_lifetime(
    identity: str, scope: str, age: float
) -> None:
    token = issue_token(KEYS, identity, scope, now=NOW)
    check_token(KEYS, identity, scope, token, now=NOW + age)


@given(
    identity=identities,
    scope=scopes,
    position=st.integers(min_value=0),
    replacement=st.sampled_from(TOKEN_ALPHABET),
)
def test_a_token_changed_in_any_one_character_is_refused(
    identity: str, scope: str, position: int, replacement: str
) -> None:
    token = issue_token(KEYS, identity, scope, now=NOW)
    index = position % len(token)
    assume(token[index] != replacement)
    tampered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(CsrfRefused) as caught:
        check_token(KEYS, identity, scope, tampered, now=NOW)
    assert caught.value.code in {"csrf_invalid", "csrf_expired"}
    if caught.value.code == "csrf_expired":
        # Only a genuine token is told it has expired: a changed issue time breaks the MAC.
        pytest.fail(f"a tampered token {tampered!r} was taken as a genuine, expired one")


@given(identity=identities, scope=scopes, forged=st.text(max_size=120))
@example(identity="", scope="", forged="0." + "A" * 43)
@example(identity="", scope="", forged=" ")
def test_any_other_text_is_refused(identity: str, scope: str, forged: str) -> None:
    assume(forged != issue_token(KEYS, identity, scope, now=NOW))
    with pytest.raises(CsrfRefused) as caught:
        check_token(KEYS, identity, scope, forged, now=NOW)
    assert caught.value.code in {"csrf_invalid", "csrf_missing"}


@given(
    identity=identities,
    scope=scopes,
    other_identity=identities,
    other_scope=scopes,
)
def test_a_token_is_refused_to_another_caller_or_for_another_action(
    identity: str, scope: str, other_identity: str, other_scope: str
) -> None:
    assume((identity, scope) != (other_identity, other_scope))
    token = issue_token(KEYS, identity, scope, now=NOW)
    refused("csrf_invalid", KEYS, other_identity, other_scope, token, now=NOW)


def test_a_token_is_refused_under_another_key_and_with_a_changed_or_padded_spelling() -> None:
    token = issue_token(KEYS, IDENTITY, SCOPE, now=NOW)
    refused("csrf_invalid", OTHER_KEYS, IDENTITY, SCOPE, token, now=NOW)
    issued, _, mac = token.partition(".")
    for respelled in (f"0{issued}.{mac}", f"{issued}.{mac}=", f" {token}", token.upper()):
        refused("csrf_invalid", KEYS, IDENTITY, SCOPE, respelled, now=NOW)


@pytest.mark.parametrize("missing", [None, ""])
def test_no_token_is_refused_as_missing(missing: str | None) -> None:
    refused("csrf_missing", KEYS, IDENTITY, SCOPE, missing, now=NOW)


@given(past=st.floats(1, 10 * 365 * 86400))
def test_a_token_older_than_its_lifetime_is_refused_as_expired(past: float) -> None:
    token = issue_token(KEYS, IDENTITY, SCOPE, now=NOW)
    refused(
        "csrf_expired",
        KEYS,
        IDENTITY,
        SCOPE,
        token,
        now=NOW + TOKEN_LIFETIME.total_seconds() + past,
    )


@given(ahead=st.floats(CLOCK_SKEW.total_seconds() + 1, 10 * 365 * 86400))
def test_a_token_from_the_future_is_refused(ahead: float) -> None:
    token = issue_token(KEYS, IDENTITY, SCOPE, now=NOW + ahead)
    refused("csrf_invalid", KEYS, IDENTITY, SCOPE, token, now=NOW)


def test_expiry_follows_the_product_clock() -> None:
    with time_machine.travel(utcnow(), tick=False) as traveller:
        token = issue_token(KEYS, IDENTITY, SCOPE)
        traveller.shift(TOKEN_LIFETIME - timedelta(seconds=1))
        check_token(KEYS, IDENTITY, SCOPE, token)
        traveller.shift(timedelta(seconds=2))
        refused("csrf_expired", KEYS, IDENTITY, SCOPE, token)
        traveller.shift(-TOKEN_LIFETIME)  # a clock set back: the token works again
        check_token(KEYS, IDENTITY, SCOPE, token)


def test_keys_come_from_bridge_secret_key_newest_first_and_every_one_verifies() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = csrf_keys(Settings(secret_key=SecretStr(old)))
    during = csrf_keys(Settings(secret_key=SecretStr(f"{new}, {old}")))
    after = csrf_keys(Settings(secret_key=SecretStr(new)))
    issued_before = issue_token(before, IDENTITY, SCOPE, now=NOW)
    check_token(during, IDENTITY, SCOPE, issued_before, now=NOW)  # a rotation under way
    refused("csrf_invalid", after, IDENTITY, SCOPE, issued_before, now=NOW)
    check_token(after, IDENTITY, SCOPE, issue_token(during, IDENTITY, SCOPE, now=NOW), now=NOW)
    # Derived, not the Fernet key itself; and not shown.
    assert base64.urlsafe_b64decode(old) not in before.keys
    assert "keys" in repr(before)
    assert repr(before.keys[0]) not in repr(before)


def test_without_a_secret_key_there_are_no_keys() -> None:
    with pytest.raises(ConfigError):
        csrf_keys(Settings(secret_key=None))


@given(st.text(max_size=60), st.text(max_size=60))
def test_identities_are_digests_that_tell_credentials_apart(a: str, b: str) -> None:
    assert (credential_identity(a) == credential_identity(b)) == (a == b)
    assert len(credential_identity(a)) == 64

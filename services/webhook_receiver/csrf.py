"""Synchronizer tokens for the console's forms (CSRF): who may submit which form, until when.

A token is `<issued>.<mac>`: the issue time (whole seconds since the epoch, on the product
clock) and HMAC-SHA256 over (version, the caller's identity, the action's scope, the issue
time). The server keeps no state: it recomputes the MAC for the caller presenting the form and
the action it posts to. So a token taken from one person's page does not work for another
person, nor for another action, nor after `TOKEN_LIFETIME`.

The MAC key is derived with HKDF-SHA256 from each key of `BRIDGE_SECRET_KEY` (the Fernet keys
that already seal the connection secrets), under a label of its own, so no new setting is
needed and the CSRF key is never the encryption key itself. The first key signs and every key
verifies, as Fernet does: a rotation of `BRIDGE_SECRET_KEY` (new key first, old one kept)
keeps the forms already open valid until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import timedelta

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.infra import ConfigError, Settings, epoch_seconds

VERSION = "v1"
TOKEN_LIFETIME = timedelta(hours=2)
# A token issued this far ahead of the clock checking it is still taken: the processes of one
# deployment may read clocks a little apart. Any further ahead, it was not issued by the bridge.
CLOCK_SKEW = timedelta(seconds=60)
HKDF_SALT = b"halaxy-bridge/console"
HKDF_INFO = b"csrf-token-key/" + VERSION.encode()
# Issue time (at most 12 digits, no leading zero), a dot, 32 bytes of MAC in unpadded url-safe
# base64. Only the one spelling the bridge issues is taken: a token is compared as text.
TOKEN = re.compile(r"(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")


class CsrfRefused(Exception):
    """The token does not allow this caller this action now. `code` is for machines and the
    audit trail; the message is a sentence for the person, and names no secret."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class CsrfKeys:
    """MAC keys, newest first: the first signs, every one verifies."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one key")

    def __repr__(self) -> str:
        return f"CsrfKeys({len(self.keys)} keys)"  # never the key material


def derive_key(material: bytes) -> bytes:
    """The CSRF MAC key for one secret key's material."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(
        material
    )


def csrf_keys(settings: Settings) -> CsrfKeys:
    """The keys derived from `BRIDGE_SECRET_KEY` (each a Fernet key: 32 url-safe base64 bytes,
    which `Settings` has checked)."""
    if settings.secret_key is None:
        raise ConfigError("BRIDGE_SECRET_KEY is not set: the console's forms cannot be signed")
    parts = [part.strip() for part in settings.secret_key.get_secret_value().split(",")]
    return CsrfKeys(tuple(derive_key(base64.urlsafe_b64decode(part)) for part in parts))


def credential_identity(credential: str) -> str:
    """Who presents `credential` (today: the admin token), as a digest: what a token is bound
    to. One-way, so neither a token nor a log of it reveals the credential."""
    return hashlib.sha256(b"halaxy-bridge caller\x00" + credential.encode()).hexdigest()


def _mac(key: bytes, identity: str, scope: str, issued: int) -> bytes:
    # A JSON array: unambiguous whatever the identity or the scope hold (no separator to forge).
    message = orjson.dumps([VERSION, identity, scope, issued])
    return hmac.new(key, message, hashlib.sha256).digest()


def issue_token(keys: CsrfKeys, identity: str, scope: str, now: float | None = None) -> str:
    """A token for `identity` to submit the form of `scope`, issued `now` (the product clock)."""
    issued = int(epoch_seconds() if now is None else now)
    return f"{issued}.{_encoded(_mac(keys.keys[0], identity, scope, issued)).decode()}"


def _encoded(mac: bytes) -> bytes:
    return base64.urlsafe_b64encode(mac).rstrip(b"=")


def check_token(
    keys: CsrfKeys, identity: str, scope: str, token: str | None, now: float | None = None
) -> None:
    """Return if `token` lets `identity` submit the form of `scope` `now`; else raise
    `CsrfRefused` saying why. The age is judged only once the MAC holds, so a forged token is
    never told apart from any other wrong one."""
    if not token:
        raise CsrfRefused(
            "csrf_missing",
            "the form carried no CSRF token: open the page again and submit the form from it",
        )
    match = TOKEN.fullmatch(token)
    if match is None:
        raise _invalid()
    issued = int(match.group(1))
    presented = match.group(2).encode()
    matched = False
    for key in keys.keys:  # every key, no early exit
        matched |= hmac.compare_digest(presented, _encoded(_mac(key, identity, scope, issued)))
    if not matched:
        raise _invalid()
    moment = epoch_seconds() if now is None else now
    if issued > moment + CLOCK_SKEW.total_seconds():
        raise _invalid()
    if moment - issued > TOKEN_LIFETIME.total_seconds():
        hours = TOKEN_LIFETIME.total_seconds() / 3600
        raise CsrfRefused(
            "csrf_expired",
            f"the form has expired (a form is valid {hours:g} hours after the page was "
            "opened): open the page again and submit the form from it",
        )


def _invalid() -> CsrfRefused:
    return CsrfRefused(
        "csrf_invalid",
        "the form's CSRF token is not valid for you and this action: open the page again "
        "and submit the form from it",
    )

"""Which bridge error each platform answer becomes (halaxy-api.md 7: retry 5xx but 501)."""

from __future__ import annotations

import httpx
import pytest

from shared.infra.errors import Permanent, RateLimited, Transient
from shared.platforms.http import PlatformNotFound, raise_for_status


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (408, Transient),
        (425, Transient),
        (429, RateLimited),
        (500, Transient),
        (502, Transient),
        (503, Transient),
        (504, Transient),
        (501, Permanent),
        (400, Permanent),
        (401, Permanent),
        (403, Permanent),
        (404, PlatformNotFound),
        (422, Permanent),
    ],
)
def test_each_status_has_its_class(status: int, error: type[Exception]) -> None:
    response = httpx.Response(status, json={"errors": ["said so"]})
    with pytest.raises(error) as raised:
        raise_for_status("Physitrack", response)
    assert type(raised.value) is error
    assert status in (429, 501) or "said so" in str(raised.value)


def test_501_is_not_retried_and_says_so() -> None:
    with pytest.raises(Permanent, match="501 \\(not implemented\\)") as raised:
        raise_for_status("Physitrack", httpx.Response(501))
    assert not isinstance(raised.value, Transient)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 302])
def test_what_is_not_an_error(status: int) -> None:
    raise_for_status("Physitrack", httpx.Response(status))

"""The /ops page's circuit breakers: in words, highlighted while open or half-open, and read
from any status (an older bridge's has none)."""

from __future__ import annotations

import re
from typing import Any

from services.webhook_receiver.ops_page import render


def status_with(circuits: Any) -> dict[str, Any]:
    return {
        "generated_at": "2026-12-07T10:00:00+00:00",
        "connections": [{"id": "cn_a", "name": "Clinic A", "enabled": True, "circuits": circuits}],
    }


def circuit(upstream: str, state: str, failures: int) -> dict[str, Any]:
    open_ = state == "open"
    return {
        "upstream": upstream,
        "state": state,
        "since": "2026-12-07T09:58:00+00:00",
        "failures": failures,
        "retry_at": "2026-12-07T10:00:30+00:00" if open_ else None,
    }


def section(page: str) -> str:
    found = re.search(r'<section aria-labelledby="circuits-heading">.*?</section>', page, re.S)
    assert found is not None
    return found.group(0)


def test_an_open_circuit_needs_attention_in_words_and_a_closed_one_is_not_listed() -> None:
    page = render(status_with([circuit("halaxy", "closed", 0), circuit("platform", "open", 5)]))

    shown = section(page)
    assert shown.count('<tr class="attention">') == 1
    assert "circuit open" in shown
    assert "platform" in shown
    assert "halaxy" not in shown
    assert "platform circuit open" in page  # the connection's own row says why
    assert "a circuit breaker open or half-open" in page  # the legend


def test_half_open_and_failures_counted_while_closed_are_listed() -> None:
    page = render(
        status_with([circuit("halaxy", "closed", 2), circuit("platform", "half_open", 6)])
    )

    shown = section(page)
    assert "circuit half-open" in shown
    assert shown.count('<tr class="attention">') == 1  # a closed one counting is no alarm
    assert "halaxy" in shown


def test_a_status_without_circuits_or_with_odd_ones_still_renders() -> None:
    for circuits in (None, "open", [None, 3], [{"state": 7}], [{"state": "open"}]):
        assert "Circuit breakers" in render(status_with(circuits))

"""The redaction processor: the backstop that keeps PHI and secrets out of logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from shared.infra.config import load_settings
from shared.infra.logs import PATTERNS, REDACTED, configure_logging, mask, redact


def test_known_fields_are_dropped_and_shapes_are_masked() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "email": "jane@example.com",
            "given": ["Jane"],
            "birthDate": "1980-02-03",
            "note": "call +61412345678 or 0412 345 678, mail jane.doe@example.com",
            "header": "Bearer abc.def-ghi",
            "sealed": "gAAAAABlZ2V0aGVyLXRoaXMtaXMtYS1mZXJuZXQtdG9rZW4=",
            "nested": {"Authorization": "secret", "ok": "fine", "list": ["x@y.io"]},
            "connection_id": "cn_abc123",
            "event_id": "3f2a1c4e-1111-2222-3333-444455556666",
        },
    )
    assert event["email"] == event["given"] == event["birthDate"] == REDACTED
    assert "+61412345678" not in event["note"]
    assert "0412 345 678" not in event["note"]
    assert "jane.doe@example.com" not in event["note"]
    assert event["header"] == REDACTED
    assert event["sealed"] == REDACTED
    assert event["nested"] == {"Authorization": REDACTED, "ok": "fine", "list": [REDACTED]}
    assert event["connection_id"] == "cn_abc123"
    assert event["event_id"] == "3f2a1c4e-1111-2222-3333-444455556666"


def test_json_logs_from_structlog_and_stdlib_are_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure_logging(load_settings())
    structlog.get_logger("t").info("hello", email="jane@example.com", connection_id="cn_1")
    logging.getLogger("lib").warning("token Bearer sk_live_123 for jane@example.com")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["email"] == REDACTED
    assert lines[0]["connection_id"] == "cn_1"
    assert "sk_live_123" not in lines[1]["event"]
    assert "jane@example.com" not in lines[1]["event"]
    monkeypatch.setenv("LOG_FORMAT", "console")
    configure_logging(load_settings())


def mask_every_pattern(text: str) -> str:
    """`mask` without its shortcut: every pattern applied to every text."""
    for _, pattern in PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


@given(
    st.text(
        alphabet=st.sampled_from(list("0123456789+-@._ aAgGbBeErRwhsc_=/()Zé٣")) | st.characters(),
        max_size=60,
    )
    | st.sampled_from(
        [
            "Bearer abc.def",
            "BEARER x",
            "gAAAAABlZ2V0aGVyLXRoaXMtaXMtYS1mZXJuZXQtdG9rZW4=",
            "whsec_abc",
            "jane@example.com",
            "+61412345678",
            "0412 345 678",
            "born 1984-02-03",
        ]
    )
)
def test_masking_skips_only_patterns_that_cannot_match(text: str) -> None:
    assert mask(text) == mask_every_pattern(text)
    assert mask(f"x {text} y") == mask_every_pattern(f"x {text} y")


def test_json_lines_keep_their_fields_whatever_the_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure_logging(load_settings())
    log = structlog.get_logger("t")
    log.info("counts", by_status={200: 3}, big=2**70, connection_id="cn_1")  # orjson refuses
    log.info("when", at=datetime(2026, 1, 2, tzinfo=UTC), connection_id="cn_1")
    first, second = (orjson.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (first["by_status"], first["big"], first["connection_id"]) == ({"200": 3}, 2**70, "cn_1")
    assert second["at"] == repr(datetime(2026, 1, 2, tzinfo=UTC))  # as the json module wrote it
    monkeypatch.setenv("LOG_FORMAT", "console")
    configure_logging(load_settings())

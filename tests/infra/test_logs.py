"""The redaction processor: the backstop that keeps PHI and secrets out of logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from services.sandbox.physitrack import program_callback
from shared.connections.model import new_connection_id
from shared.infra.config import load_settings
from shared.infra.logs import PATTERNS, REDACTED, configure_logging, mask, redact
from shared.notes.callback import note_id_for, parse_callback
from shared.patients.reconcile import SweepKind, _bulk_sync


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


# The ids the bridge logs, as the bridge makes them; and ids from Halaxy shaped like a phone
# number or a date (a zero-padded event number, a patient id).
sweep_event_ids = st.builds(
    lambda kind, started, patient: _bulk_sync("cn_x", patient, kind, started).kwargs["event_id"],
    st.sampled_from(SweepKind),
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ).map(lambda moment: moment.isoformat(timespec="seconds")),
    st.from_regex(r"\A[0-9]{1,12}\Z"),
)
note_ids = st.builds(
    lambda patient: note_id_for(
        "cn_x",
        parse_callback(
            program_callback(api_key="k", file_url="https://f.example/p.pdf", patient_id=patient)
        ),
        None,
    ),
    st.from_regex(r"\A[0-9]{1,10}\Z"),
)
bridge_ids = st.one_of(
    st.builds(new_connection_id),
    st.uuids().map(str),
    sweep_event_ids,
    note_ids,
    st.from_regex(r"\A0[0-9]{9}\Z"),  # a national phone number's shape
    st.from_regex(r"\A\+[0-9]{8,15}\Z"),  # E.164's
    st.from_regex(r"\A(19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]\Z"),  # a birth date's
    st.from_regex(r"\Ahttps://au-api\.halaxy\.com/main/Subscription/[0-9]{1,8}#0[0-9]{9}\Z"),
)
ID_FIELDS = ["id", "connection_id", "event_id", "message_id", "note_id", "patient_id", "job_id"]


@given(st.sampled_from(ID_FIELDS), bridge_ids, st.lists(bridge_ids, max_size=3))
def test_ids_are_left_as_they_are(field: str, value: str, values: list[str]) -> None:
    event = redact(None, "info", {"event": "x", field: value, "event_ids": values})
    assert event[field] == value
    assert event["event_ids"] == values
    nested = redact(None, "info", {"event": "x", "job": {field: value}})
    assert nested["job"] == {field: value}


@given(sweep_event_ids | st.from_regex(r"\A0[0-9]{9}\Z"))
def test_the_same_shapes_outside_an_id_field_are_masked(value: str) -> None:
    """Ids keep their digits and dates by the field they are in, not because the patterns let
    phone numbers or dates through."""
    assert value not in redact(None, "info", {"event": f"about {value}", "note": value})["note"]


@pytest.mark.parametrize(
    "secret",
    [
        "Bearer abc.def-ghi",
        "gAAAAABlZ2V0aGVyLXRoaXMtaXMtYS1mZXJuZXQtdG9rZW4=",
        "whsec_c2VjcmV0LXNpZ25pbmcta2V5",
        "jane.citizen@example.com",
    ],
)
def test_what_no_id_looks_like_is_masked_in_id_fields_too(secret: str) -> None:
    event = redact(None, "info", {"event": "x", "event_id": f"ev:{secret}", "note_ids": [secret]})
    assert secret not in event["event_id"]
    assert event["note_ids"] == [REDACTED]


def test_a_logger_used_before_logging_is_configured_again_follows_the_new_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """structlog caches a logger on its first use; the level and format configured later
    still apply to it (the processors are one list, changed in place)."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    configure_logging(load_settings())
    log = structlog.get_logger("cached")
    log.info("dropped", connection_id="cn_1")
    log.warning("kept", connection_id="cn_1")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    configure_logging(load_settings())
    log.info("now kept", connection_id="cn_1", email="jane@example.com")
    monkeypatch.setenv("LOG_FORMAT", "console")
    configure_logging(load_settings())
    log.info("in the console format", connection_id="cn_1")
    *json_lines, console_line = capsys.readouterr().err.splitlines()
    events = [orjson.loads(line) for line in json_lines]
    assert [(e["event"], e["level"], e["logger"]) for e in events] == [
        ("kept", "warning", "cached"),
        ("now kept", "info", "cached"),
    ]
    assert events[1]["email"] == REDACTED
    assert "in the console format" in console_line
    assert not console_line.startswith("{")


def test_the_urls_httpx_logs_are_not_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx logs each request's URL at INFO, and a FHIR search URL can carry a patient's
    name or email: only its warnings are written."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure_logging(load_settings())
    logging.getLogger("httpx").info("HTTP Request: GET https://h.example/Patient?email=j@x.io")
    logging.getLogger("httpcore.connection").info("connect_tcp.started host='h.example'")
    logging.getLogger("httpx").warning("a warning")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["a warning"]
    monkeypatch.setenv("LOG_FORMAT", "console")
    configure_logging(load_settings())

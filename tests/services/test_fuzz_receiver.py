"""Fuzzing the receiver: no input may produce a 500 or an unhandled traceback in the log.

Two layers, both against the app built from the conftest fixtures (real Redis, real Dramatiq
broker, the in-process fake Halaxy as key verifier):

1. Schemathesis over the OpenAPI document the app serves at /openapi.json (checked equal to
   the document fuzzed): every operation, positive and negative data, its examples, coverage
   and fuzzing phases, each case sent to the fixture app. Each answer must not be a server
   error, must have a documented status, content type and schema, and every rejection must be
   exactly `{"error", "detail"}`. Most generated requests carry the real connection id and its
   webhook secret, or the admin token, so they reach past the 401/404.
2. Hypothesis against `POST /webhooks/halaxy/{connection_id}/{event}`: arbitrary bytes,
   arbitrary JSON, mutations of Halaxy's documented notification, content types and
   Content-Length values (streamed or not), connection ids, events and credentials, and any
   path with any method. `expected_outcome` states the exact answer the bad-input contract
   requires (status and error code), and every 202 is checked against the Dramatiq messages it
   queued.

Every test also fails when the app logs at ERROR level or logs a traceback (the app logs
`request.failed` with the exception for anything unexpected).

Bugs it found are kept as regression tests at the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import string
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
import hypothesis
import orjson
import pytest
import redis
import schemathesis
import structlog.testing
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.testclient import TestClient

from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.samples import notification
from services.webhook_receiver.app import create_app
from services.webhook_receiver.openapi import SPEC
from shared.connections import onboarding, roster
from shared.connections.model import Connection
from shared.connections.onboarding import KeyVerifier
from shared.connections.store import ConnectionStore
from shared.halaxy.events import HALAXY_EVENTS
from shared.infra.clock import utcnow
from shared.infra.config import Settings
from shared.infra.store import Keys
from tests.conftest import make_connection
from tests.helpers import queued_messages as queued_on

pytestmark = pytest.mark.dateless  # reads no date: left out of the year-ahead run

# The contract: Halaxy's notifications are small; anything over 256 KiB is refused with 413.
BODY_CAP = 256 * 1024
RESOURCE_TYPES = sorted({event.resource_type for event in HALAXY_EVENTS.values()})
ACTORS = {"Patient": "sync_patient", "Appointment": "sync_appointment", "Invoice": "record_invoice"}

# Generated requests per test, reported (and checked against the budget) by the last test.
REQUESTS: collections.Counter[str] = collections.Counter()
# (test, status, error code) of every answer, to show what the generators reached.
OUTCOMES: collections.Counter[tuple[str, int, str]] = collections.Counter()
BUDGET = 3000


def queued_messages(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The messages queued for work, live or on the storm lane: the examples of one test are one
    connection's events, and past BRIDGE_STORM_EVENTS_PER_MINUTE in a minute they go there."""
    return queued_on(client, keys, "live") + queued_on(client, keys, "storm")


def fuzz_settings(max_examples: int) -> hypothesis.settings:
    # No example database: the suite writes nothing outside the key namespace of each test.
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# --- The log: nothing at ERROR level, no traceback ----------------------------------------------


class LogWatch:
    """structlog events (captured) and standard-library records (caplog) seen during a test."""

    def __init__(self, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
        self._events = events
        self._caplog = caplog
        self._events_checked = 0
        self._records_checked = 0
        self.errors_expected = False

    def _problems(
        self, events: list[dict[str, Any]], records: list[logging.LogRecord]
    ) -> list[str]:
        problems = []
        for event in events:
            level = str(event.get("log_level", ""))
            exc = event.get("exc_info")
            if level in {"error", "critical", "exception"} or exc:
                text = f"{level} {event.get('event')!r} {event.get('error', '')}"
                if isinstance(exc, BaseException):
                    text += "\n" + "".join(traceback.format_exception(exc))
                problems.append(text)
        for record in records:
            if record.levelno >= logging.ERROR or record.exc_info:
                problems.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        return problems

    def assert_clean(self, context: str) -> None:
        """Nothing bad logged since the previous call."""
        records = self._caplog.records
        problems = self._problems(
            self._events[self._events_checked :], records[self._records_checked :]
        )
        self._events_checked = len(self._events)
        self._records_checked = len(records)
        assert not problems, f"{context}: the app logged an error\n" + "\n".join(problems)

    def problems_in_test(self) -> list[str]:
        records = self._caplog.get_records("setup") + self._caplog.get_records("call")
        return self._problems(self._events, records)

    def unreported_problems(self) -> list[str]:
        """What no `assert_clean` call has looked at yet."""
        records = self._caplog.get_records("setup")
        records += self._caplog.get_records("call")[self._records_checked :]
        return self._problems(self._events[self._events_checked :], records)


@pytest.fixture(autouse=True)
def log_watch(caplog: pytest.LogCaptureFixture) -> Iterator[LogWatch]:
    with structlog.testing.capture_logs() as events:
        watch = LogWatch(events, caplog)
        yield watch
    if not watch.errors_expected:
        problems = watch.unreported_problems()
        assert not problems, "the app logged an error:\n" + "\n".join(problems)


# --- Checks shared by every test -----------------------------------------------------------------


def _error_code(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def media_type(response: Any) -> str:
    """The media type of an httpx or a schemathesis response (whose header values are lists)."""
    value = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
    if isinstance(value, list):
        value = value[0]
    return str(value).split(";")[0].strip()


def assert_error_body(response: Any, status: int, error: str | None = None) -> None:
    """`status`, JSON, and a body of exactly {"error": str, "detail": str}."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert media_type(response) == "application/json"
    body = orjson.loads(response.content)
    assert isinstance(body, dict)
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if error is not None:
        assert body["error"] == error, body


# --- 1. Schemathesis over the served OpenAPI document -----------------------------------------
#
# `schemathesis.pytest.from_fixture` (schemathesis 4.32) fails under pytest 9.2: its LazySchema
# reads `request.node._nodeid`, which pytest 9.2 removed (AttributeError at lazy.py:212). So the
# schema is loaded from the same document object the app serves (checked against GET
# /openapi.json of the fixture app below), and every case is sent to the fixture app with
# `case.call(app=app)`.

SCHEMA = schemathesis.openapi.from_dict(orjson.loads(orjson.dumps(SPEC)))
SCHEMATHESIS_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Which credentials a fuzzed case carries, chosen by Hypothesis through the hook below:
# "real": the real connection id and its secret (or the admin token); "any-id": real
# credentials, the generated connection id; "wrong-secret": the real id, a wrong secret;
# "generated": the case as Schemathesis made it.
MODE_HEADER = "X-Fuzz-Credentials"
CREDENTIAL_MODES = ["real", "real", "real", "any-id", "wrong-secret", "generated"]


@SCHEMA.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    def mark(mode: str) -> Any:
        case.headers = {**(case.headers or {}), MODE_HEADER: mode}
        return case

    return st.sampled_from(CREDENTIAL_MODES).map(mark)


def test_openapi_document_is_the_one_fuzzed(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert orjson.loads(response.content) == orjson.loads(orjson.dumps(SPEC))
    REQUESTS["test_openapi_document_is_the_one_fuzzed"] += 1


def _apply_credentials(
    case: Any, mode: str | None, connection: Connection, fake_halaxy: FakeHalaxy
) -> None:
    """Fuzzing cases: as `mode` says. Coverage and example cases (no mode): the real connection
    id, and real credentials unless the case leaves Authorization out."""
    headers = case.headers if case.headers is not None else {}
    webhook = case.path.startswith("/webhooks/")
    secret = (
        connection.webhook_secret.get_secret_value()
        if webhook
        else os.environ["BRIDGE_ADMIN_TOKEN"]
    )
    params = case.path_parameters if case.path_parameters is not None else {}
    if mode not in {"generated", "any-id"} and "connection_id" in params:
        params["connection_id"] = connection.id
    if mode in {"real", "any-id"} or (mode is None and "Authorization" in headers):
        headers["Authorization"] = f"Bearer {secret}"
    elif mode == "wrong-secret":
        headers["Authorization"] = f"Bearer {secret}x"
    case.headers = headers
    # Give admin creates a chance to succeed: a key the fake Halaxy knows, a sound platform URL.
    if (
        mode == "real"
        and case.method == "POST"
        and case.path == "/admin/connections"
        and isinstance(case.body, dict)
    ):
        if "halaxy_key" in case.body:
            case.body["halaxy_key"] = fake_halaxy.add_key()
        if "platform_base_url" in case.body:
            case.body["platform_base_url"] = "https://au.physitrack.com/api/v2"


# The practitioner the "real" practitioner cases name: there before a rotate or a remove.
FUZZ_PRACTITIONER = "PR-FUZZ1"


def _aim_practitioner_case(
    case: Any, mode: str | None, deps: Any, connection: Connection, physitrack: FakePhysitrack
) -> None:
    """Practitioner cases in the "real" mode: the practitioner of the path exists, and a key in
    the body is one the fake Physitrack knows, so adds and rotations can succeed."""
    if mode != "real" or not case.path.startswith("/admin/connections/{connection_id}/pract"):
        return
    params = case.path_parameters if case.path_parameters is not None else {}
    if "halaxy_practitioner" in params:
        params["halaxy_practitioner"] = FUZZ_PRACTITIONER
        stored = deps.connections.get(connection.id)
        if stored is not None and stored.practitioner(FUZZ_PRACTITIONER) is None:
            there = {"halaxy_practitioner": FUZZ_PRACTITIONER, "api_key": physitrack.add_key()}
            request = roster.parse_practitioner(
                {**there, "token": "ptok-" + uuid.uuid4().hex, "verify": False}
            )
            roster.add_practitioner(
                deps.connections,
                deps.verify_platform_key,
                stored,
                request,
                utcnow(),
                deps.audit,
                "fuzz",
            )
    if isinstance(case.body, dict) and "api_key" in case.body:
        case.body["api_key"] = physitrack.add_key()
    if isinstance(case.body, dict) and "halaxy_practitioner" in case.body:
        case.body["halaxy_practitioner"] = f"PR-{uuid.uuid4().hex[:8]}"


@SCHEMA.parametrize()
@fuzz_settings(max_examples=200)
def test_openapi_contract(
    case: Any,
    app: Starlette,
    connection: Connection,
    fake_halaxy: FakeHalaxy,
    fake_physitrack: FakePhysitrack,
    log_watch: LogWatch,
) -> None:
    mode = case.headers.pop(MODE_HEADER, None) if case.headers else None
    _apply_credentials(case, mode, connection, fake_halaxy)
    _aim_practitioner_case(case, mode, app.state.deps, connection, fake_physitrack)
    response = case.call(app=app)
    REQUESTS["test_openapi_contract"] += 1
    OUTCOMES[("test_openapi_contract", response.status_code, _error_code(response.content))] += 1
    label = f"{case.method} {case.formatted_path} ({mode or 'coverage'})"
    log_watch.assert_clean(label)
    case.validate_response(response, checks=SCHEMATHESIS_CHECKS)
    if response.status_code >= 400 and case.method != "HEAD":
        assert_error_body(response, response.status_code)


# --- 2. Hypothesis against the webhook ---------------------------------------------------------
#
# The oracle: what the bad-input contract says the receiver must answer to a body, once the
# connection, event, credentials, content type and size are right. It restates the contract
# (the list, and the docstrings of shared.halaxy.notifications: tolerant of unknown
# fields, counters as strings or integers, one bad event rejects the whole delivery, dedup by
# event id, else subscription#eventNumber, else a hash) independently of the receiver's models.
# It reads the JSON value as orjson (the receiver's parser) does: big integers beyond 64 bits,
# NaN, lone surrogates and a BOM are orjson's call, not the contract's.


@dataclass(frozen=True)
class Rejected:
    status: int
    error: str | None  # None: any machine-readable code


@dataclass(frozen=True)
class Accepted:
    events: list[tuple[str, str]]  # (event key, resource id), distinct keys, delivery order


# Type/id, optionally /_history/vid, and nothing else (not even a trailing newline).
FOCUS_PATH = re.compile(r"(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[^/]+)(/_history/(?P<vid>[^/]+))?\Z")
# FHIR's id grammar (https://hl7.org/fhir/R4/datatypes.html#id), less ids of dots only.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
NOT_A_NOTIFICATION = Rejected(422, "not_a_notification")


def _usable_id(value: str | None) -> bool:
    return value is None or (FHIR_ID.match(value) is not None and set(value) != {"."})


def _str_ok(value: Any, max_length: int, *, optional: bool = True, min_length: int = 0) -> bool:
    if value is None:
        return optional
    return isinstance(value, str) and min_length <= len(value) <= max_length


def _reference_ok(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _str_ok(value.get("reference"), 2048, optional=False, min_length=1)
        and _str_ok(value.get("type"), 10**9)
    )


def _counter(value: Any) -> Any:
    # Counters arrive as JSON strings ("1"); integers are accepted too.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _event_ok(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and _str_ok(event.get("id"), 200)
        and _str_ok(_counter(event.get("eventNumber")), 200)
        and _str_ok(event.get("timestamp"), 64)
        and "focus" in event
        and _reference_ok(event["focus"])
    )


def _status_ok(resource: dict[str, Any]) -> bool:
    subscription = resource.get("subscription")
    events = resource.get("notificationEvent", [])
    return (
        (subscription is None or _reference_ok(subscription))
        and _str_ok(resource.get("type"), 10**9)
        and isinstance(events, list)
        and all(_event_ok(e) for e in events)
    )


def _focus_target(focus: dict[str, Any], resource_type: str, base_url: str) -> str | Rejected:
    reference: str = focus["reference"]
    base = base_url.rstrip("/")
    base_path = urlsplit(base).path
    if reference.startswith(base + "/"):
        path = reference[len(base) + 1 :]
    elif "://" in reference:
        return Rejected(422, "focus_host")
    elif base_path and reference.startswith(base_path + "/"):
        path = reference[len(base_path) + 1 :]
    else:
        path = reference.lstrip("/")
    match = FOCUS_PATH.match(path)
    if match is None:
        return NOT_A_NOTIFICATION
    if not (_usable_id(match["id"]) and _usable_id(match["vid"])):
        return Rejected(422, "focus_id")
    if match["type"] != resource_type or focus.get("type") not in (None, match["type"]):
        return Rejected(422, "focus_type")
    return match["id"]


def _event_key(
    event: dict[str, Any], status: dict[str, Any], bundle: dict[str, Any], body: bytes
) -> str:
    """The event id, else subscription#eventNumber, else a hash of focus and timestamp."""
    event_id = event.get("id")
    if event_id and event_id.strip():
        return str(event_id.strip())
    number = _counter(event.get("eventNumber"))
    if status.get("subscription") is not None and number:
        return f"{status['subscription']['reference']}#{number}"
    moment = (
        event.get("timestamp")
        or bundle.get("timestamp")
        or f"body:{hashlib.sha256(body).hexdigest()}"
    )
    reference = event["focus"]["reference"]
    return "sha256:" + hashlib.sha256(f"{reference}|{moment}".encode()).hexdigest()


def expected_outcome(body: bytes, resource_type: str, base_url: str) -> Rejected | Accepted:
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Rejected(400, "malformed_json")
    if not isinstance(bundle, dict):
        return NOT_A_NOTIFICATION
    entries = bundle.get("entry", [])
    if not (
        _str_ok(bundle.get("resourceType"), 10**9, optional=False)
        and _str_ok(bundle.get("id"), 200)
        and _str_ok(bundle.get("timestamp"), 64)
        and isinstance(entries, list)
        and all(isinstance(entry, dict) for entry in entries)
    ):
        return NOT_A_NOTIFICATION
    if bundle["resourceType"] != "Bundle":
        return NOT_A_NOTIFICATION
    statuses = [
        entry["resource"]
        for entry in entries
        if isinstance(entry.get("resource"), dict)
        and entry["resource"].get("resourceType") == "SubscriptionStatus"
    ]
    if not statuses or not all(_status_ok(status) for status in statuses):
        return NOT_A_NOTIFICATION
    found: dict[str, str] = {}
    for status in statuses:
        for event in status.get("notificationEvent", []):
            target = _focus_target(event["focus"], resource_type, base_url)
            if isinstance(target, Rejected):
                return target
            found.setdefault(_event_key(event, status, bundle, body), target)
    return Accepted(list(found.items()))


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media in {"application/json", "application/fhir+json"} or (
        media.startswith("application/") and media.endswith("+json")
    )


def accepts_secret(header: str | None, secret: str) -> bool:
    """`Authorization: Bearer <secret>` (scheme in any case) or the bare secret."""
    if header is None:
        return False
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value == secret


@dataclass
class Webhook:
    """Posts to the receiver, checks each answer, remembers which event keys it accepted."""

    client: TestClient
    connection: Connection
    redis: redis.Redis
    keys: Keys
    log_watch: LogWatch
    test_name: str

    def __post_init__(self) -> None:
        self.seen: set[str] = set()  # event keys the receiver accepted for this connection

    @property
    def secret(self) -> str:
        return self.connection.webhook_secret.get_secret_value()

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.secret}",
            **extra,
        }

    def clear_queue(self) -> None:
        namespace = self.keys.dramatiq_namespace()
        for queue in ("live", "storm"):
            self.redis.delete(f"{namespace}:{queue}", f"{namespace}:{queue}.msgs")

    def send(
        self,
        event: str,
        body: bytes,
        headers: dict[str, str],
        connection_id: str | None = None,
        content_length: str | None = None,
        chunk_size: int | None = None,
    ) -> tuple[httpx.Response, set[str], str | None]:
        """The answer, the keys seen before it, and the Content-Length actually sent.

        With `chunk_size`, the body is streamed in chunks (Transfer-Encoding: chunked, no
        Content-Length unless `content_length` adds one)."""
        self.clear_queue()
        path_id = quote(connection_id or self.connection.id, safe="")
        content: bytes | Iterator[bytes] = body
        if chunk_size is not None:
            content = iter([body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
        request = self.client.build_request(
            "POST",
            f"/webhooks/halaxy/{path_id}/{quote(event, safe='')}",
            content=content,
            headers=headers,
        )
        if content_length is not None:
            request.headers["Content-Length"] = content_length
        sent_length = request.headers.get("content-length")
        seen_before = set(self.seen)
        response = self.client.send(request)
        REQUESTS[self.test_name] += 1
        OUTCOMES[(self.test_name, response.status_code, _error_code(response.content))] += 1
        if response.status_code == 202:
            self.seen.update(orjson.loads(response.content).get("accepted", []))
        self.log_watch.assert_clean(f"POST {request.url.path} body={body[:200]!r}")
        assert response.status_code < 500, (response.status_code, response.text)
        return response, seen_before, sent_length

    def check(
        self,
        response: httpx.Response,
        expected: Rejected | Accepted,
        event: str,
        seen_before: set[str],
    ) -> None:
        if isinstance(expected, Rejected):
            assert_error_body(response, expected.status, expected.error)
            assert queued_messages(self.redis, self.keys) == []
            return
        assert response.status_code == 202, (response.status_code, response.text)
        assert media_type(response) == "application/json"
        answer = orjson.loads(response.content)
        assert set(answer) == {"accepted", "duplicates"}, answer
        assert all(isinstance(k, str) for k in answer["accepted"] + answer["duplicates"])
        keys = [key for key, _ in expected.events]
        assert answer["accepted"] == [k for k in keys if k not in seen_before]
        assert answer["duplicates"] == [k for k in keys if k in seen_before]
        resource_ids = dict(expected.events)
        resource_type = HALAXY_EVENTS[event].resource_type
        messages = queued_messages(self.redis, self.keys)
        assert len(messages) == len(answer["accepted"])
        by_key = {m["kwargs"]["event_id"]: m for m in messages}
        assert set(by_key) == set(answer["accepted"])
        for key, message in by_key.items():
            lane = (message["queue_name"], message["actor_name"])
            actor = ACTORS[resource_type]
            assert lane in {("live", actor), ("storm", f"{actor}_storm")}, lane
            assert message["kwargs"] == {
                "connection_id": self.connection.id,
                "resource_id": resource_ids[key],
                "event": event,
                "event_id": key,
            }

    def deliver(self, event: str, body: bytes, **extra_headers: str) -> httpx.Response:
        """Post `body` with valid credentials and check the answer against the oracle."""
        response, seen_before, _ = self.send(event, body, self.headers(**extra_headers))
        base_url = self.connection.halaxy_base_url
        expected = expected_outcome(body, HALAXY_EVENTS[event].resource_type, base_url)
        self.check(response, expected, event, seen_before)
        return response


@pytest.fixture
def webhook(
    client: TestClient,
    connection: Connection,
    redis_server_client: redis.Redis,
    keys: Keys,
    log_watch: LogWatch,
    request: pytest.FixtureRequest,
) -> Webhook:
    return Webhook(
        client, connection, redis_server_client, keys, log_watch, request.node.originalname
    )


# --- Strategies -----------------------------------------------------------------------------------

BASE = "https://au-api.halaxy.com/main"  # the conftest connection's region (au)
EVENT_NAMES = st.sampled_from(sorted(HALAXY_EVENTS))
FHIR_IDS = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True).filter(lambda i: set(i) != {"."})
FIELD_NAMES = [
    "resourceType",
    "type",
    "id",
    "timestamp",
    "entry",
    "fullUrl",
    "resource",
    "subscription",
    "notificationEvent",
    "eventNumber",
    "eventsSinceSubscriptionStart",
    "focus",
    "reference",
]
FHIR_WORDS = st.sampled_from(
    [
        "Bundle",
        "SubscriptionStatus",
        "history",
        "event-notification",
        *RESOURCE_TYPES,
        f"{BASE}/Patient/1001",
        f"{BASE}/Appointment/2002",
        "Patient/1001",
        "https://evil.example/main/Patient/1",
        "0",
        "",
    ]
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | FHIR_WORDS
)
JSON_KEYS = st.sampled_from(FIELD_NAMES) | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_KEYS, children, max_size=5)
    ),
    max_leaves=30,
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn in proportion to its weight."""
    indexes = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indexes).flatmap(lambda i: choices[i][1])


def _or_anything(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return weighted((3, strategy), (1, JSON_VALUES))


# Arbitrary JSON in the shape of a notification: each field the right kind, or anything.
REFERENCE_SHAPED = st.fixed_dictionaries(
    {"reference": _or_anything(FHIR_WORDS | st.text(max_size=40))},
    optional={"type": _or_anything(st.sampled_from(RESOURCE_TYPES))},
)
EVENT_SHAPED = st.fixed_dictionaries(
    {"focus": _or_anything(REFERENCE_SHAPED)},
    optional={
        "id": _or_anything(st.text(max_size=12)),
        "eventNumber": JSON_SCALARS,
        "timestamp": _or_anything(st.text(max_size=70)),
        "extension": JSON_VALUES,
    },
)
STATUS_SHAPED = st.fixed_dictionaries(
    {
        "resourceType": _or_anything(st.just("SubscriptionStatus")),
        "notificationEvent": _or_anything(st.lists(EVENT_SHAPED, max_size=3)),
    },
    optional={"subscription": _or_anything(REFERENCE_SHAPED), "type": JSON_VALUES},
)
BUNDLE_SHAPED = st.fixed_dictionaries(
    {
        "resourceType": _or_anything(st.just("Bundle")),
        "entry": _or_anything(
            st.lists(
                st.fixed_dictionaries(
                    {"resource": _or_anything(STATUS_SHAPED)}, optional={"fullUrl": JSON_VALUES}
                ),
                max_size=3,
            )
        ),
    },
    optional={
        "id": _or_anything(st.text(max_size=12)),
        "timestamp": _or_anything(st.text(max_size=70)),
        "type": JSON_VALUES,
    },
)
JUNK = (
    JSON_SCALARS
    | st.lists(JSON_SCALARS, max_size=3)
    | st.dictionaries(JSON_KEYS, JSON_SCALARS, max_size=3)
)


def encode(value: Any, style: str = "orjson") -> bytes:
    if style == "ascii":  # \u escapes everywhere, as some senders do
        return json.dumps(value, ensure_ascii=True).encode()
    return orjson.dumps(value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from _paths(child, (*prefix, index))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    return _get(doc, path[:-1])


def _events(doc: Any) -> list[dict[str, Any]]:
    """The well-formed-enough notificationEvent objects in `doc`, to mutate."""
    found = []
    entries = doc.get("entry") if isinstance(doc, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        events = resource.get("notificationEvent") if isinstance(resource, dict) else None
        found += [e for e in (events if isinstance(events, list) else []) if isinstance(e, dict)]
    return found


@st.composite
def focus_references(draw: st.DrawFn, resource_type: str) -> str:
    """Focus references on the connection's host, relative, on other hosts, or malformed."""
    rid = draw(FHIR_IDS)
    kind = draw(
        st.sampled_from(["own", "other-type", "other-host", "other-host", "malformed", "any"])
    )
    type_ = resource_type
    if kind == "other-type":
        type_ = draw(st.sampled_from([*RESOURCE_TYPES, "Observation", "Practitioner"]))
    if kind in {"own", "other-type"}:
        return draw(
            st.sampled_from(
                [
                    f"{BASE}/{type_}/{rid}",
                    f"{BASE}/{type_}/{rid}/_history/2",
                    f"{BASE}//{type_}/{rid}",
                    f"{type_}/{rid}",
                    f"/{type_}/{rid}",
                    f"/main/{type_}/{rid}",
                    f"{BASE}/{type_}/{rid}\n",
                ]
            )
        )
    if kind == "other-host":
        host = draw(
            st.sampled_from(
                [
                    "https://eu-api.halaxy.com/main",
                    "http://au-api.halaxy.com/main",
                    "HTTPS://AU-API.HALAXY.COM/main",
                    "https://au-api.halaxy.com.evil.example/main",
                    "https://au-api.halaxy.com:8443/main",
                    "https://evil.example",
                    "ftp://au-api.halaxy.com/main",
                ]
            )
        )
        return f"{host}/{type_}/{rid}"
    if kind == "malformed":
        return draw(
            st.sampled_from(
                [
                    " ",
                    type_,
                    f"{type_}/",
                    f"{type_.lower()}/{rid}",
                    f"{type_}/{'9' * 65}",
                    f"{type_}/a b",
                    f"{type_}/{rid}/extra",
                    f"main/{type_}/{rid}",
                    f"{BASE}/../{type_}/{rid}",
                    f"//evil.example/{type_}/{rid}",
                    f"urn:uuid:{uuid.UUID(int=0)}",
                    f"{BASE}/{type_}/{rid}?x=1",
                    "x" * 2049,
                ]
            )
        )
    return draw(st.text(max_size=40))


@st.composite
def documented_notifications(draw: st.DrawFn, event: str) -> dict[str, Any]:
    """Halaxy's documented payload: one or more entries, each with zero to three events."""
    resource_type = HALAXY_EVENTS[event].resource_type
    entries = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        ids = draw(st.lists(FHIR_IDS, min_size=0, max_size=3))
        single = notification(BASE, resource_type, ids or ["1"])
        if not ids:
            single["entry"][0]["resource"]["notificationEvent"] = []
        entries += single["entry"]
    doc = notification(BASE, resource_type, ["1"])
    doc["entry"] = entries
    return doc


# Structure-breaking mutations (drop, replace, bundle) end most documents with a 422; the
# others keep it a notification more often, so they are drawn more often.
MUTATIONS = st.sampled_from(
    ["drop", "replace", "bundle", "extra-entry", "extra-field", "focus-type"]
    + ["counter", "event-id", "focus"] * 2
    + ["focus"] * 2
)


@st.composite
def mutated_notifications(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """(event, notification, JSON style): the documented payload, then up to five mutations."""
    event = draw(EVENT_NAMES)
    resource_type = HALAXY_EVENTS[event].resource_type
    doc = draw(documented_notifications(event))
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = draw(MUTATIONS)
        paths = list(_paths(doc))
        events = _events(doc)
        if kind == "drop" and paths:
            path = draw(st.sampled_from(paths))
            del _parent(doc, path)[path[-1]]
        elif kind == "replace" and paths:
            path = draw(st.sampled_from(paths))
            _parent(doc, path)[path[-1]] = draw(JUNK)
        elif kind == "counter" and events:
            target = draw(st.sampled_from(events))
            target["eventNumber"] = draw(
                st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.integers(min_value=0, max_value=99).map(str)
                | st.sampled_from(["", "0", True, 1.5, None, "9" * 201])
            )
        elif kind == "focus" and events:
            target = draw(st.sampled_from(events))
            target["focus"] = {
                "reference": draw(focus_references(resource_type)),
                "type": resource_type,
            }
        elif kind == "focus-type" and events:
            focus = draw(st.sampled_from(events)).get("focus")
            if isinstance(focus, dict):
                focus["type"] = draw(st.sampled_from([None, *RESOURCE_TYPES, "Observation", 7, ""]))
        elif kind == "event-id" and events:
            target = draw(st.sampled_from(events))
            choice = draw(
                st.sampled_from(["drop", "blank", "padded", "same", "long", "junk", "dup"])
            )
            if choice == "drop":
                target.pop("id", None)
            elif choice == "blank":
                target["id"] = draw(st.sampled_from(["", "   ", "\t"]))
            elif choice == "padded":
                target["id"] = f"  {uuid.uuid4()}  "
            elif choice == "same":  # the same key in every example: a duplicate next time
                target["id"] = "evt-fixed"
            elif choice == "long":
                target["id"] = "e" * draw(st.sampled_from([200, 201]))
            elif choice == "junk":
                target["id"] = draw(JUNK)
            else:
                target["id"] = draw(st.sampled_from(events)).get("id")
        elif kind == "extra-entry" and isinstance(doc.get("entry"), list):
            extra = draw(
                st.sampled_from(
                    [
                        {"resource": {"resourceType": "Patient", "id": "1"}},
                        {"fullUrl": "x"},
                        {"resource": None},
                        {"resource": "SubscriptionStatus"},
                        {"resource": {"resourceType": "SubscriptionStatus"}},
                        {
                            "resource": {
                                "resourceType": "SubscriptionStatus",
                                "notificationEvent": None,
                            }
                        },
                        "not an object",
                    ]
                )
            )
            if draw(st.booleans()) and doc["entry"]:
                extra = copy.deepcopy(draw(st.sampled_from(doc["entry"])))
            doc["entry"].insert(draw(st.integers(0, len(doc["entry"]))), copy.deepcopy(extra))
        elif kind == "extra-field":
            containers = [doc, *(c for c in (_get(doc, p) for p in paths) if isinstance(c, dict))]
            draw(st.sampled_from(containers))[draw(st.text(max_size=12))] = draw(JUNK)
        elif kind == "bundle":
            field = draw(st.sampled_from(["resourceType", "type", "timestamp", "id", "entry"]))
            doc[field] = draw(
                JUNK | st.sampled_from(["Bundle", "bundle", "t" * 65, "i" * 201, [], {}])
            )
    style = draw(st.sampled_from(["orjson", "orjson", "ascii"]))
    return event, doc, style


# --- (a) arbitrary bytes, (b) arbitrary JSON, (c) mutations of the documented payload ----------


def _splice(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for position, removed, inserted in edits:
        at = position % (len(data) + 1)
        data = data[:at] + inserted + data[at + removed :]
    return data


VALID_BYTES = st.builds(lambda: orjson.dumps(notification(BASE, "Patient", ["1001", "1002"])))
BYTE_EDITS = st.lists(
    st.tuples(st.integers(0, 4000), st.integers(0, 3), st.binary(max_size=3)),
    min_size=1,
    max_size=4,
)
ARBITRARY_BYTES = (
    st.binary(max_size=600)
    | st.builds(_splice, VALID_BYTES, BYTE_EDITS)
    | st.sampled_from(
        [
            b"",
            b" ",
            b"null",
            b"[]",
            b"{}",
            b"\xef\xbb\xbf{}",
            b'"\\ud800"',
            b"NaN",
            b"1e400",
            b"[" * 2000,
            b'{"resourceType":"Bundle","entry":[]}\x00',
            '{"resourceType":"Bundle"}'.encode("utf-16"),
        ]
    )
)


@fuzz_settings(max_examples=350)
@given(body=ARBITRARY_BYTES, event=EVENT_NAMES)
def test_arbitrary_bytes(webhook: Webhook, body: bytes, event: str) -> None:
    webhook.deliver(event, body)


@fuzz_settings(max_examples=600)
@given(
    value=weighted((1, JSON_VALUES), (2, BUNDLE_SHAPED)),
    event=EVENT_NAMES,
    style=st.sampled_from(["orjson", "ascii"]),
)
def test_arbitrary_json(webhook: Webhook, value: Any, event: str, style: str) -> None:
    body = encode(value, style)
    response = webhook.deliver(event, body)
    assert response.status_code in {202, 422}  # well-formed JSON is never a 400


@fuzz_settings(max_examples=1000)
@given(case=mutated_notifications())
def test_mutated_notifications(webhook: Webhook, case: tuple[str, dict[str, Any], str]) -> None:
    event, doc, style = case
    response = webhook.deliver(event, encode(doc, style))
    assert response.status_code in {202, 422}


# Oracle-free anchors: the exact answers the issue names, stated without `expected_outcome`.


@fuzz_settings(max_examples=150)
@given(
    event=EVENT_NAMES,
    resource_ids=st.lists(FHIR_IDS, min_size=1, max_size=4),
    int_counters=st.booleans(),
    content_type=st.sampled_from(["application/json", "application/fhir+json"]),
)
def test_documented_notification_is_queued(
    webhook: Webhook, event: str, resource_ids: list[str], int_counters: bool, content_type: str
) -> None:
    resource_type = HALAXY_EVENTS[event].resource_type
    event_ids = [str(uuid.uuid4()) for _ in resource_ids]
    doc = notification(BASE, resource_type, resource_ids, event_ids=event_ids)
    if int_counters:
        for item in doc["entry"][0]["resource"]["notificationEvent"]:
            item["eventNumber"] = int(item["eventNumber"])
    response, _, _ = webhook.send(
        event, orjson.dumps(doc), webhook.headers(**{"Content-Type": content_type})
    )
    assert response.status_code == 202, response.text
    assert orjson.loads(response.content) == {"accepted": event_ids, "duplicates": []}
    messages = queued_messages(webhook.redis, webhook.keys)
    assert [m["kwargs"]["event_id"] for m in messages] == event_ids
    assert [m["kwargs"]["resource_id"] for m in messages] == resource_ids
    # The storm lane's twin past a connection's events a minute (docs/isolation.md).
    assert {m["actor_name"].removesuffix("_storm") for m in messages} == {ACTORS[resource_type]}
    # The same delivery again: every event is a duplicate, nothing more is queued.
    response, _, _ = webhook.send(event, orjson.dumps(doc), webhook.headers())
    assert orjson.loads(response.content) == {"accepted": [], "duplicates": event_ids}
    assert queued_messages(webhook.redis, webhook.keys) == []


OTHER_HOSTS = st.sampled_from(
    [
        "https://eu-api.halaxy.com/main",
        "http://au-api.halaxy.com/main",
        "https://au-api.halaxy.com.evil.example/main",
        "https://evil.example",
        "https://au-api.halaxy.com:444/main",
    ]
)


@fuzz_settings(max_examples=100)
@given(event=EVENT_NAMES, host=OTHER_HOSTS, rid=FHIR_IDS, position=st.integers(0, 2))
def test_focus_on_another_host_is_422_focus_host(
    webhook: Webhook, event: str, host: str, rid: str, position: int
) -> None:
    resource_type = HALAXY_EVENTS[event].resource_type
    doc = notification(BASE, resource_type, ["1", "2", "3"])
    focus = doc["entry"][0]["resource"]["notificationEvent"][position]["focus"]
    focus["reference"] = f"{host}/{resource_type}/{rid}"
    response, _, _ = webhook.send(event, orjson.dumps(doc), webhook.headers())
    assert_error_body(response, 422, "focus_host")
    assert queued_messages(webhook.redis, webhook.keys) == []


@fuzz_settings(max_examples=100)
@given(
    event=EVENT_NAMES,
    other=st.sampled_from([*RESOURCE_TYPES, "Observation"]),
    in_type_field=st.booleans(),
    rid=FHIR_IDS,
)
def test_focus_of_another_type_is_422_focus_type(
    webhook: Webhook, event: str, other: str, in_type_field: bool, rid: str
) -> None:
    resource_type = HALAXY_EVENTS[event].resource_type
    if other == resource_type:
        other = "Observation"
    doc = notification(BASE, resource_type, [rid])
    focus = doc["entry"][0]["resource"]["notificationEvent"][0]["focus"]
    if in_type_field:  # reference of the right type, `type` says otherwise
        focus["type"] = other
    else:
        focus["reference"] = f"{BASE}/{other}/{rid}"
        focus["type"] = other
    response, _, _ = webhook.send(event, orjson.dumps(doc), webhook.headers())
    assert_error_body(response, 422, "focus_type")
    assert queued_messages(webhook.redis, webhook.keys) == []


def test_appointment_focus_on_patient_created_is_422_focus_type(webhook: Webhook) -> None:
    doc = notification(BASE, "Appointment", ["2002"])
    response, _, _ = webhook.send("patient-created", orjson.dumps(doc), webhook.headers())
    assert_error_body(response, 422, "focus_type")


# --- (d) content types and Content-Length ------------------------------------------------------

JSON_CONTENT_TYPES = [
    "application/json",
    "application/fhir+json",
    "APPLICATION/JSON",
    "application/json; charset=utf-8",
    " application/fhir+json ;charset=UTF-8",
    "application/vnd.api+json",
    "application/merge-patch+json",
    "application/json;",
]
OTHER_CONTENT_TYPES = [
    "",
    "text/plain",
    "text/json",
    "json",
    "application/xml",
    "application/fhir+xml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-patch",
    "application/octet-stream",
    "*/*",
]
HEADER_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=40
)
CONTENT_TYPES = weighted(
    (1, st.none()),
    (5, st.sampled_from(JSON_CONTENT_TYPES)),
    (2, st.sampled_from(OTHER_CONTENT_TYPES)),
    (1, HEADER_TEXT),
)
# Content-Length as sent; None leaves httpx's own (correct) value. Very long digit strings
# are covered by test_odd_content_length_is_not_a_server_error.
CONTENT_LENGTHS = weighted(
    (3, st.none()),
    (2, st.integers(min_value=0, max_value=10**12).map(str)),
    (1, HEADER_TEXT),
    (
        2,
        st.sampled_from(
            [
                "",
                " ",
                "-1",
                "+5",
                "1.5",
                "0x10",
                "1e3",
                " 12 ",
                "9" * 30,
                str(BODY_CAP),
                str(BODY_CAP + 1),
            ]
        ),
    ),
)


def _bodies(kind: str) -> bytes:
    valid = orjson.dumps(notification(BASE, "Patient", ["1001"]))
    if kind == "valid":
        return valid
    if kind == "at-cap":  # exactly 256 KiB of valid JSON: accepted
        return valid + b" " * (BODY_CAP - len(valid))
    if kind == "over-cap":
        return valid + b" " * (BODY_CAP + 1 - len(valid))
    if kind == "far-over-cap":
        return valid + b" " * (BODY_CAP * 2)
    if kind == "empty":
        return b""
    return b'{"resourceType": "Bundle",'


@fuzz_settings(max_examples=350)
@given(
    content_type=CONTENT_TYPES,
    content_length=CONTENT_LENGTHS,
    kind=st.sampled_from(
        ["valid", "valid", "at-cap", "over-cap", "far-over-cap", "empty", "malformed"]
    ),
    chunk_size=st.none() | st.sampled_from([1024, 16 * 1024, 64 * 1024]),
)
def test_content_type_and_length(
    webhook: Webhook,
    content_type: str | None,
    content_length: str | None,
    kind: str,
    chunk_size: int | None,
) -> None:
    body = _bodies(kind)
    headers = {"Authorization": f"Bearer {webhook.secret}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response, seen_before, sent_length = webhook.send(
        "patient-created", body, headers, content_length=content_length, chunk_size=chunk_size
    )
    expected: Rejected | Accepted
    if not is_json_media_type(content_type):
        expected = Rejected(415, "unsupported_media_type")
    elif sent_length is not None and not sent_length.strip().isdigit():
        expected = Rejected(400, "bad_request")
    elif (sent_length is not None and int(sent_length) > BODY_CAP) or len(body) > BODY_CAP:
        expected = Rejected(413, "body_too_large")
    else:
        expected = expected_outcome(body, "Patient", BASE)
    webhook.check(response, expected, "patient-created", seen_before)


# --- (e) connection ids, events and credentials ------------------------------------------------


@pytest.fixture
def disabled_connection(
    store: ConnectionStore, fake_halaxy: FakeHalaxy, verify_key: KeyVerifier
) -> Connection:
    made = make_connection(store, fake_halaxy, verify_key, name="Closed Clinic")
    disabled = onboarding.disable(made, utcnow())
    store.save(disabled)
    return disabled


SAFE_ID = st.text(alphabet=string.ascii_letters + string.digits + "-_~", min_size=1, max_size=40)
UNKNOWN_IDS = (
    SAFE_ID
    | SAFE_ID.map("cn_{}".format)
    | st.text(min_size=1, max_size=20).filter(lambda s: s not in {".", ".."})
)
UNKNOWN_EVENTS = (
    SAFE_ID | st.sampled_from(["Patient-Created", "patient_created", "patient", "invoice-paid"])
).filter(lambda s: s not in HALAXY_EVENTS)


AUTHORIZATION_FORMS = {
    # (this connection's secret, another connection's secret, some text) -> header value
    "bearer": lambda s, o, t: f"Bearer {s}",
    "bare": lambda s, o, t: s,
    "lower": lambda s, o, t: f"bearer {s}",
    "spaces": lambda s, o, t: f"  BEARER   {s}  ",
    "missing": lambda s, o, t: None,
    "empty": lambda s, o, t: "",
    "scheme-only": lambda s, o, t: "Bearer",
    "basic": lambda s, o, t: f"Basic {s}",
    "suffix": lambda s, o, t: f"Bearer {s}x",
    "prefix": lambda s, o, t: f"Bearer {s[:-1]}",
    "other-secret": lambda s, o, t: f"Bearer {o}",
    "tab": lambda s, o, t: f"Bearer\t{s}",
    "text": lambda s, o, t: t,
}


@fuzz_settings(max_examples=300)
@given(
    target=st.sampled_from(["connection", "connection", "disabled", "unknown"]),
    unknown_id=UNKNOWN_IDS,
    event=weighted((3, EVENT_NAMES), (1, UNKNOWN_EVENTS)),
    authorization=st.sampled_from(sorted(AUTHORIZATION_FORMS)),
    text=HEADER_TEXT,
)
def test_connections_events_and_credentials(
    webhook: Webhook,
    disabled_connection: Connection,
    target: str,
    unknown_id: str,
    event: str,
    authorization: str,
    text: str,
) -> None:
    other = disabled_connection.webhook_secret.get_secret_value()
    secret = webhook.secret
    connection_id = {"connection": webhook.connection.id, "disabled": disabled_connection.id}.get(
        target, unknown_id
    )
    if target == "disabled":
        secret, other = other, secret
    header = AUTHORIZATION_FORMS[authorization](secret, other, text)
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    resource_type = HALAXY_EVENTS[event].resource_type if event in HALAXY_EVENTS else "Patient"
    body = orjson.dumps(notification(BASE, resource_type, ["1001"]))
    response, seen_before, _ = webhook.send(event, body, headers, connection_id=connection_id)
    expected: Rejected | Accepted
    if "/" in connection_id:  # not a path segment: no route
        expected = Rejected(404, None)
    elif event not in HALAXY_EVENTS:
        expected = Rejected(404, "unknown_event")
    elif target != "connection":
        expected = Rejected(404, "unknown_connection")
    elif not accepts_secret(header, webhook.secret):
        expected = Rejected(401, "unauthorized")
    else:
        expected = expected_outcome(body, resource_type, BASE)
    webhook.check(
        response, expected, event if event in HALAXY_EVENTS else "patient-created", seen_before
    )


# --- (f) any path, any method: router-level answers keep the error shape ---------------------

PATH_WORDS = [
    "webhooks",
    "halaxy",
    "admin",
    "connections",
    "disable",
    "rotate",
    "practitioners",
    "openapi.json",
    "healthz",
    "readyz",
    "metrics",
    *sorted(HALAXY_EVENTS),
]
DOCUMENTED_STATUSES = {200, 201, 202, 400, 401, 404, 405, 413, 415, 422}


ROUTES = [
    "/webhooks/halaxy/{connection}/{event}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin/connections",
    "/admin/connections/{connection}",
    "/admin/connections/{connection}/disable",
    "/admin/connections/{connection}/rotate",
    "/admin/connections/{connection}/practitioners",
    "/admin/connections/{connection}/practitioners/{practitioner}",
    "/admin/connections/{connection}/practitioners/{practitioner}/rotate",
    "/ops/events",
    "/ops/events/{event}",
]


@st.composite
def paths(draw: st.DrawFn, connection_id: str) -> str:
    """A route of the app, filled in and perhaps bent; or a path of random segments."""
    if draw(st.booleans()):
        segments = draw(st.lists(st.sampled_from(PATH_WORDS) | SAFE_ID, max_size=6))
        return "/" + "/".join(segments)
    path = draw(st.sampled_from(ROUTES))
    path = path.replace("{connection}", draw(st.sampled_from([connection_id]) | SAFE_ID))
    path = path.replace("{event}", draw(EVENT_NAMES | SAFE_ID))
    path = path.replace("{practitioner}", draw(st.just("PR-1001") | SAFE_ID))
    bend = draw(st.sampled_from(["none", "none", "slash", "upper", "drop", "append", "double"]))
    if bend == "slash":
        path += "/"
    elif bend == "upper":
        path = path.upper()
    elif bend == "drop":
        path = path.rsplit("/", 1)[0] or "/"
    elif bend == "append":
        path += "/" + draw(SAFE_ID)
    elif bend == "double":
        path = path.replace("/", "//", 1)
    return path


@fuzz_settings(max_examples=300)
@given(
    data=st.data(),
    method=st.sampled_from(
        ["GET", "GET", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"]
    ),
    credentials=st.sampled_from(["webhook", "admin", "none"]),
    body=st.sampled_from(
        [b"", b"{}", b"[]", b"{", orjson.dumps(notification(BASE, "Patient", ["1"]))]
    ),
)
def test_any_path_and_method(
    webhook: Webhook, data: st.DataObject, method: str, credentials: str, body: bytes
) -> None:
    path = data.draw(paths(webhook.connection.id), label="path")
    headers = {"Content-Type": "application/json"}
    if credentials == "webhook":
        headers["Authorization"] = f"Bearer {webhook.secret}"
    elif credentials == "admin":
        headers["Authorization"] = f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}"
    webhook.clear_queue()
    response = webhook.client.request(method, path, content=body, headers=headers)
    REQUESTS["test_any_path_and_method"] += 1
    OUTCOMES[("test_any_path_and_method", response.status_code, _error_code(response.content))] += 1
    webhook.log_watch.assert_clean(f"{method} {path}")
    if response.status_code == 202:  # a real delivery: seen from now on
        webhook.seen.update(orjson.loads(response.content)["accepted"])
    if 300 <= response.status_code < 400:  # Starlette's redirect to the path without the slash
        assert response.status_code == 307, (method, path, response.status_code)
        assert path.endswith("/")
        assert response.headers["location"].endswith(path.rstrip("/"))
        return
    assert response.status_code in DOCUMENTED_STATUSES, (method, path, response.status_code)
    if response.status_code >= 400 and method != "HEAD":
        assert_error_body(response, response.status_code)


# --- The log check itself, and known bugs --------------------------------------------------------


class _BrokenIntake:
    async def accept(self, *args: Any) -> Any:
        raise RuntimeError("boom")


def test_log_watch_sees_unexpected_exceptions(
    settings: Settings,
    verify_key: KeyVerifier,
    connection: Connection,
    log_watch: LogWatch,
) -> None:
    """The no-error-log check is not vacuous: an unexpected exception is caught by it."""
    log_watch.errors_expected = True
    app = create_app(settings, intake=_BrokenIntake(), verify_key=verify_key)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            f"/webhooks/halaxy/{connection.id}/patient-created",
            content=orjson.dumps(notification(BASE, "Patient", ["1"])),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {connection.webhook_secret.get_secret_value()}",
            },
        )
    assert_error_body(response, 500, "internal_error")
    problems = log_watch.problems_in_test()
    assert any("request.failed" in p and "RuntimeError: boom" in p for p in problems), problems


def _admin_headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {os.environ['BRIDGE_ADMIN_TOKEN']}",
        "Content-Type": "application/json",
    }


async def _raw_asgi_post(
    app: Starlette, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> int:
    """POST straight to the ASGI app, header bytes as given (a test client re-encodes them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    with contextlib.suppress(Exception):  # Starlette re-raises after answering 500
        await app(scope, receive, send)
    return statuses[0]


@pytest.mark.parametrize(
    ("content_length", "status"),
    [(b"1" + b"0" * 4300, 413), (b"\xb2", 400), (b"\xb9\xb2", 400)],
    ids=["4301-digits", "superscript-two", "superscript-one-two"],
)
def test_odd_content_length_is_not_a_server_error(
    app: Starlette, connection: Connection, log_watch: LogWatch, content_length: bytes, status: int
) -> None:
    secret = connection.webhook_secret.get_secret_value().encode()
    headers = [
        (b"authorization", b"Bearer " + secret),
        (b"content-type", b"application/json"),
        (b"content-length", content_length),
    ]
    body = orjson.dumps(notification(BASE, "Patient", ["1001"]))
    path = f"/webhooks/halaxy/{connection.id}/patient-created"
    assert anyio.run(_raw_asgi_post, app, path, headers, body) == status
    assert not log_watch.problems_in_test()


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("platform_base_url", "https://[::1/main"),  # urlsplit cannot parse it
        ("halaxy_base_url", "https://[::1/main"),
        ("halaxy_base_url", "https://xn--a.com/main"),  # httpx cannot build a request for it
        ("halaxy_base_url", "https://halaxy.example/ma\x01in"),
    ],
)
def test_admin_create_with_an_unusable_url_is_422(
    client: TestClient, fake_halaxy: FakeHalaxy, log_watch: LogWatch, field: str, url: str
) -> None:
    body = {
        "name": "Clinic",
        "halaxy_key": fake_halaxy.add_key(),
        "platform": "rest",
        "platform_base_url": "https://platform.example",
        "platform_api_key": "key",
        field: url,
    }
    response = client.post(
        "/admin/connections", content=orjson.dumps(body), headers=_admin_headers()
    )
    assert response.status_code == 422, response.text
    assert not log_watch.problems_in_test()


# --- The budget: must stay last in the module ----------------------------------------------------

FUZZ_TESTS = {
    "test_openapi_contract",
    "test_arbitrary_bytes",
    "test_arbitrary_json",
    "test_mutated_notifications",
    "test_documented_notification_is_queued",
    "test_focus_on_another_host_is_422_focus_host",
    "test_focus_of_another_type_is_422_focus_type",
    "test_content_type_and_length",
    "test_connections_events_and_credentials",
    "test_any_path_and_method",
}


def test_generated_request_budget(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """At least BUDGET generated requests when the whole module ran (skipped otherwise).

    Prints the count per test; with -v, also what the answers were (test, status, error)."""
    total = sum(REQUESTS.values())
    with capsys.disabled():
        lines = [f"{name}: {count}" for name, count in sorted(REQUESTS.items())]
        print(f"\nfuzz requests sent: {total}\n  " + "\n  ".join(lines))
        if request.config.get_verbosity() > 0:
            print("answers (test, status, error): count")
            for (name, status, error), count in sorted(OUTCOMES.items()):
                print(f"  {name} {status} {error or '-'}: {count}")
    if not FUZZ_TESTS.issubset(REQUESTS):
        pytest.skip("the budget is checked only when every fuzz test of the module ran")
    assert total >= BUDGET

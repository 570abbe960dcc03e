"""The notification parser on Halaxy's documented payload and its variations."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sandbox.samples import notification
from shared.halaxy.notifications import NotificationError, parse_notification
from tests.strategies import json_values

BASE = "https://au-api.halaxy.com/main"

# The docs example as stored in halaxy-api.md section 1.3, ids filled in.
DOCUMENTED = {
    "resourceType": "Bundle",
    "id": "5d0f4b1e-2f9e-4c8c-a0a6-0c8d1c3f9b11",
    "meta": {
        "profile": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
        "backport-subscription-notification",
        "security": [],
        "tag": [],
    },
    "timestamp": "2025-12-03T01:48:04+00:00",
    "type": "history",
    "link": [],
    "entry": [
        {
            "fullUrl": "0e0c7a63-4f5c-4bd4-9b39-3c7e0a3f1b2d",
            "resource": {
                "resourceType": "SubscriptionStatus",
                "id": "a3a1c1a8-9f3e-4b43-8a55-1d2f6f1f0a10",
                "meta": {"profile": "http://hl7.org/fhir/uv/subscriptions-backport/x"},
                "subscription": {
                    "reference": f"{BASE}/Subscription/9a7e6c1d-3b1f-4c55-bb0e-1a2b3c4d5e6f",
                    "type": "Subscription",
                },
                "topic": {
                    "reference": f"{BASE}/SubscriptionTopic/7c1e2d3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f",
                    "type": "SubscriptionTopic",
                },
                "status": "active",
                "type": "event-notification",
                "eventsSinceSubscriptionStart": "0",
                "notificationEvent": [
                    {
                        "id": "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b",
                        "eventNumber": "1",
                        "timestamp": "2025-12-03T01:48:04+00:00",
                        "focus": {"reference": f"{BASE}/Patient/123456", "type": "Patient"},
                    }
                ],
            },
        }
    ],
    "contained": [],
    "extension": [],
    "modifierExtension": [],
}


def parse(body: dict[str, Any] | bytes, expected: str = "Patient") -> list[Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_notification(raw, expected, BASE)


def events_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = body["entry"][0]["resource"]["notificationEvent"]
    return events


def test_documented_payload_names_the_patient_and_its_event_id() -> None:
    [changed] = parse(DOCUMENTED)
    assert changed.resource_type == "Patient"
    assert changed.resource_id == "123456"
    assert changed.event_key == "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"


def test_several_events_and_entries_each_yield_a_resource_in_order() -> None:
    body = notification(BASE, "Patient", ["1", "2", "3"])
    second = notification(BASE, "Patient", ["4"])
    body["entry"].append(second["entry"][0])
    assert [c.resource_id for c in parse(body)] == ["1", "2", "3", "4"]


def test_same_event_twice_in_one_delivery_is_taken_once() -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body).append(copy.deepcopy(events_of(body)[0]))
    assert len(parse(body)) == 1


def test_without_event_id_the_key_is_subscription_and_event_number() -> None:
    body = copy.deepcopy(DOCUMENTED)
    del events_of(body)[0]["id"]
    [changed] = parse(body)
    assert changed.event_key == f"{BASE}/Subscription/9a7e6c1d-3b1f-4c55-bb0e-1a2b3c4d5e6f#1"


def test_integer_counters_are_read_like_strings() -> None:
    body = copy.deepcopy(DOCUMENTED)
    del events_of(body)[0]["id"]
    events_of(body)[0]["eventNumber"] = 1
    [changed] = parse(body)
    assert changed.event_key.endswith("#1")


def test_without_id_or_number_the_key_hashes_focus_and_timestamp() -> None:
    body = copy.deepcopy(DOCUMENTED)
    for field in ("id", "eventNumber"):
        del events_of(body)[0][field]
    [first] = parse(body)
    assert first.event_key.startswith("sha256:")
    later = copy.deepcopy(body)
    events_of(later)[0]["timestamp"] = "2025-12-03T02:00:00+00:00"
    [second] = parse(later)
    assert second.event_key != first.event_key
    assert parse(copy.deepcopy(body))[0].event_key == first.event_key


def test_unknown_fields_are_tolerated() -> None:
    body = copy.deepcopy(DOCUMENTED)
    body["somethingNew"] = {"x": [1, 2]}
    events_of(body)[0]["additionalContext"] = [{"reference": "Practitioner/PR-1"}]
    assert parse(body)[0].resource_id == "123456"


@pytest.mark.parametrize(
    "reference",
    [f"{BASE}/Patient/123456", "/main/Patient/123456", "Patient/123456"],
)
def test_relative_references_resolve_to_the_connection_host(reference: str) -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body)[0]["focus"]["reference"] = reference
    assert parse(body)[0].resource_id == "123456"


def test_heartbeat_without_events_yields_nothing() -> None:
    body = copy.deepcopy(DOCUMENTED)
    body["entry"][0]["resource"]["type"] = "heartbeat"
    body["entry"][0]["resource"]["notificationEvent"] = []
    assert parse(body) == []


@pytest.mark.parametrize(
    ("reference", "code"),
    [
        ("https://eu-api.halaxy.com/main/Patient/1", "focus_host"),
        ("https://au-api.halaxy.com.evil.example/main/Patient/1", "focus_host"),
        ("http://au-api.halaxy.com/main/Patient/1", "focus_host"),
        (f"{BASE}/Appointment/1", "focus_type"),
        (f"{BASE}/Patient/1/extra/segments", "not_a_notification"),
        (f"{BASE}/Patient/", "not_a_notification"),
        (f"{BASE}/Patient/{'9' * 65}", "focus_id"),
        # FHIR's id grammar allows dots; ids of dots only are path segments httpx resolves.
        (f"{BASE}/Patient/.", "focus_id"),
        (f"{BASE}/Patient/..", "focus_id"),
        (f"{BASE}/Patient/...", "focus_id"),
        ("Patient/..", "focus_id"),
        (f"{BASE}/Patient/1/_history/..", "focus_id"),
        (f"{BASE}/Patient/%2E%2E", "focus_id"),
        (f"{BASE}/Patient/1 2", "focus_id"),
    ],
)
def test_bad_focus_is_refused_with_its_reason(reference: str, code: str) -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body)[0]["focus"]["reference"] = reference
    with pytest.raises(NotificationError) as caught:
        parse(body)
    assert caught.value.code == code


@pytest.mark.parametrize("resource_id", ["1.2", "a-b.c", "9" * 64, ".1", "1.."])
def test_ids_with_dots_that_are_not_only_dots_are_fhir_ids(resource_id: str) -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body)[0]["focus"]["reference"] = f"{BASE}/Patient/{resource_id}"
    [changed] = parse(body)
    assert changed.resource_id == resource_id


def test_focus_type_field_must_agree_with_the_reference() -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body)[0]["focus"]["type"] = "Appointment"
    with pytest.raises(NotificationError) as caught:
        parse(body)
    assert caught.value.code == "focus_type"


def test_one_bad_event_rejects_the_whole_delivery() -> None:
    body = notification(BASE, "Patient", ["1", "2"])
    events_of(body)[1]["focus"]["reference"] = "https://example.com/main/Patient/2"
    with pytest.raises(NotificationError):
        parse(body)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[]", "not_a_notification"),
        (b'{"resourceType": "Bundle", "id": 123456789012345678901234567890}', "not_a_notification"),
        (b'{"resourceType": "Patient", "id": "1"}', "not_a_notification"),
        (b'{"resourceType": "Bundle", "entry": []}', "not_a_notification"),
        (b'{"resourceType": "Bundle", "entry": "x"}', "not_a_notification"),
        (
            b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"SubscriptionStatus",'
            b'"notificationEvent":[{"id":"1"}]}}]}',
            "not_a_notification",
        ),
    ],
)
def test_bodies_that_are_not_notifications(body: bytes, code: str) -> None:
    with pytest.raises(NotificationError) as caught:
        parse(body)
    assert caught.value.code == code


@given(st.binary(max_size=512))
def test_any_bytes_either_parse_or_raise_a_notification_error(body: bytes) -> None:
    try:
        parse(body)
    except NotificationError as exc:
        assert exc.code in {"malformed_json", "not_a_notification", "focus_host", "focus_type"}


@given(json_values)
def test_any_json_either_parses_or_raises_a_notification_error(value: Any) -> None:
    try:
        parse(orjson.dumps(value))
    except NotificationError as exc:
        assert exc.code in {"not_a_notification", "focus_host", "focus_type"}


@given(
    field=st.sampled_from(["id", "eventNumber", "timestamp", "focus"]),
    value=json_values,
)
def test_any_value_in_an_event_field_is_parsed_or_refused_cleanly(field: str, value: Any) -> None:
    body = copy.deepcopy(DOCUMENTED)
    events_of(body)[0][field] = value
    try:
        result = parse(body)
    except NotificationError as exc:
        assert exc.code in {"not_a_notification", "focus_host", "focus_type"}
    else:
        assert [c.resource_id for c in result] == ["123456"]

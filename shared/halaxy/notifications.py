"""Parse Halaxy's webhook notification Bundle into the resources that changed. Pure.

Halaxy posts a FHIR `history` Bundle whose entries are `SubscriptionStatus` resources of type
`event-notification`; each `notificationEvent[].focus` holds an absolute reference to the
changed resource, and nothing else about it (halaxy-api.md section 1.3). `SubscriptionStatus`
is R4B, so the body is read as plain JSON with tolerant models, not a strict R4 parser.
Observed quirks handled here: `fullUrl` is a bare UUID, counters are JSON strings, and one
delivery may carry several entries and several events (the docs do not say it cannot).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.halaxy.fhir import is_resource_id

RESOURCE_PATH = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[^/]+)(/_history/(?P<version>[^/]+))?$"
)
MAX_EVENT_ID = 200


class NotificationError(ValueError):
    """The body is not an acceptable notification; `code` is the machine-readable reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Reference(_Tolerant):
    reference: str = Field(min_length=1, max_length=2048)
    type: str | None = None


class NotificationEvent(_Tolerant):
    id: str | None = Field(default=None, max_length=MAX_EVENT_ID)
    eventNumber: str | None = Field(default=None, max_length=MAX_EVENT_ID)
    timestamp: str | None = Field(default=None, max_length=64)
    focus: Reference

    @field_validator("eventNumber", mode="before")
    @classmethod
    def _counter_as_string(cls, value: Any) -> Any:
        # Halaxy sends counters as JSON strings ("0"); accept integers too.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class SubscriptionStatus(_Tolerant):
    subscription: Reference | None = None
    type: str | None = None
    notificationEvent: list[NotificationEvent] = Field(default_factory=list)


class NotificationBundle(_Tolerant):
    resourceType: str
    id: str | None = Field(default=None, max_length=MAX_EVENT_ID)
    timestamp: str | None = Field(default=None, max_length=64)
    entry: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class ChangedResource:
    """One changed resource named by a notification, and the key that identifies the event."""

    event_key: str
    resource_type: str
    resource_id: str


def parse_notification(
    body: bytes, expected_type: str, halaxy_base_url: str
) -> list[ChangedResource]:
    """The changed resources in `body`, one per distinct event, in delivery order.

    Every focus must be a `expected_type` on the connection's own Halaxy host
    (`halaxy_base_url`); one bad event rejects the whole delivery, so nothing is half-taken.
    A status-only delivery (heartbeat, handshake) yields an empty list.
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotificationError("malformed_json", "the body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise _not_a_notification("the body is not a JSON object")
    try:
        bundle = NotificationBundle.model_validate(raw)
    except ValidationError as exc:
        raise _not_a_notification(_first_problem(exc)) from None
    if bundle.resourceType != "Bundle":
        raise _not_a_notification("resourceType is not Bundle")

    statuses = _subscription_statuses(bundle)
    if not statuses:
        raise _not_a_notification("the Bundle has no SubscriptionStatus entry")

    body_digest = hashlib.sha256(body).hexdigest()
    changed: dict[str, ChangedResource] = {}
    for status in statuses:
        for event in status.notificationEvent:
            resource_type, resource_id = _focus_target(event.focus, expected_type, halaxy_base_url)
            key = _event_key(event, status, bundle, body_digest)
            changed.setdefault(key, ChangedResource(key, resource_type, resource_id))
    return list(changed.values())


def _subscription_statuses(bundle: NotificationBundle) -> list[SubscriptionStatus]:
    statuses = []
    for index, entry in enumerate(bundle.entry):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "SubscriptionStatus":
            continue  # other entry kinds carry nothing we act on
        try:
            statuses.append(SubscriptionStatus.model_validate(resource))
        except ValidationError as exc:
            raise _not_a_notification(f"entry[{index}]: {_first_problem(exc)}") from None
    return statuses


def _focus_target(focus: Reference, expected_type: str, base_url: str) -> tuple[str, str]:
    reference = focus.reference
    base = base_url.rstrip("/")
    base_path = urlsplit(base).path
    if reference.startswith(base + "/"):
        path = reference[len(base) + 1 :]
    elif "://" in reference:
        raise NotificationError(
            "focus_host", "a focus reference points outside the connection's Halaxy host"
        )
    elif base_path and reference.startswith(base_path + "/"):
        path = reference[len(base_path) + 1 :]
    else:
        path = reference.lstrip("/")
    match = RESOURCE_PATH.fullmatch(path)
    if match is None:
        raise _not_a_notification("a focus reference is not of the form Type/id")
    if not is_resource_id(match["id"]) or not (
        match["version"] is None or is_resource_id(match["version"])
    ):
        # FHIR's id grammar, less ids of dots only: `Patient/.` would reach Halaxy as a
        # search of every patient, `Patient/..` as the API's root (dot segments, RFC 3986).
        raise NotificationError(
            "focus_id",
            "a focus id is not a FHIR id (1 to 64 of A-Z, a-z, 0-9, '-' and '.', not dots only)",
        )
    resource_type = match.group("type")
    if resource_type != expected_type or (focus.type not in (None, resource_type)):
        raise NotificationError(
            "focus_type",
            f"a focus is a {focus.type or resource_type}, but this webhook URL takes "
            f"{expected_type} events",
        )
    return resource_type, match.group("id")


def _event_key(
    event: NotificationEvent, status: SubscriptionStatus, bundle: NotificationBundle, digest: str
) -> str:
    """The dedup key: the event id, else subscription and eventNumber, else a hash.

    The hash covers the focus and the event's (or the Bundle's) timestamp; with neither
    timestamp, the whole body, so an exact re-delivery is still recognised and a different
    one never is.
    """
    if event.id and event.id.strip():
        return event.id.strip()
    if status.subscription is not None and event.eventNumber:
        return f"{status.subscription.reference}#{event.eventNumber}"
    moment = event.timestamp or bundle.timestamp or f"body:{digest}"
    return "sha256:" + hashlib.sha256(f"{event.focus.reference}|{moment}".encode()).hexdigest()


def _not_a_notification(reason: str) -> NotificationError:
    return NotificationError(
        "not_a_notification", f"the body is not a Halaxy notification Bundle: {reason}"
    )


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "body"
    return f"{where}: {error['msg']}"

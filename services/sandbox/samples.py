"""Halaxy notification payloads in Halaxy's own shape (halaxy-api.md section 1.3).

The docs example, not a simplified one: a `history` Bundle, a bare-UUID `fullUrl`, counters as
JSON strings, the `SubscriptionStatus` backport profile, and absolute focus references.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.infra import iso_now


def notification(
    base_url: str,
    resource_type: str,
    resource_ids: list[str],
    *,
    event_ids: list[str] | None = None,
    subscription_id: str | None = None,
    first_event_number: int = 1,
) -> dict[str, Any]:
    """A notification naming each resource in `resource_ids` in its own notificationEvent."""
    now = iso_now()
    subscription_id = subscription_id or str(uuid.uuid4())
    ids = event_ids or [str(uuid.uuid4()) for _ in resource_ids]
    events = [
        {
            "id": event_id,
            "eventNumber": str(first_event_number + index),
            "timestamp": now,
            "focus": {"reference": f"{base_url}/{resource_type}/{rid}", "type": resource_type},
        }
        for index, (event_id, rid) in enumerate(zip(ids, resource_ids, strict=True))
    ]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {
            "profile": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
            "backport-subscription-notification",
            "security": [],
            "tag": [],
        },
        "timestamp": now,
        "type": "history",
        "link": [],
        "entry": [
            {
                "fullUrl": str(uuid.uuid4()),
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "id": str(uuid.uuid4()),
                    "meta": {
                        "profile": "http://hl7.org/fhir/uv/subscriptions-backport/"
                        "StructureDefinition/backport-subscription-status"
                    },
                    "subscription": {
                        "reference": f"{base_url}/Subscription/{subscription_id}",
                        "type": "Subscription",
                    },
                    "topic": {
                        "reference": f"{base_url}/SubscriptionTopic/{uuid.uuid4()}",
                        "type": "SubscriptionTopic",
                    },
                    "status": "active",
                    "type": "event-notification",
                    "eventsSinceSubscriptionStart": "0",
                    "notificationEvent": events,
                },
            }
        ],
        "contained": [],
        "extension": [],
        "modifierExtension": [],
    }

"""The Halaxy webhook events the bridge accepts, one URL each.

Halaxy's payload does not say which event fired (halaxy-api.md section 1.4: the topic UUID is
opaque and unmapped), so each webhook is configured in Halaxy with its own URL and the event is
read from the path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HalaxyEvent:
    name: str
    resource_type: str
    action: str
    label: str


HALAXY_EVENTS: dict[str, HalaxyEvent] = {
    event.name: event
    for event in (
        HalaxyEvent("patient-created", "Patient", "created", "Patient · Create"),
        HalaxyEvent("patient-updated", "Patient", "updated", "Patient · Update"),
        HalaxyEvent("appointment-created", "Appointment", "created", "Appointment · Create"),
        HalaxyEvent("appointment-updated", "Appointment", "updated", "Appointment · Update"),
        HalaxyEvent("appointment-deleted", "Appointment", "deleted", "Appointment · Delete"),
        HalaxyEvent("invoice-created", "Invoice", "created", "Invoice · Create"),
        HalaxyEvent("invoice-updated", "Invoice", "updated", "Invoice · Update"),
        HalaxyEvent("invoice-deleted", "Invoice", "deleted", "Invoice · Delete"),
    )
}

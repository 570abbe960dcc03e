"""Therapy platforms: one adapter per platform behind the `TherapyPlatform` Protocol
(`base.py`), the details they store (`details.py`) and the factory that picks one
(`factory.py`); Physitrack's events read as program events (`physitrack_events.py`). This
module only names what the rest of the bridge may use.
"""

from shared.platforms.base import (
    PlatformAccount,
    PlatformKind,
    PlatformPatient,
    TherapyPlatform,
    fingerprint,
)
from shared.platforms.details import Gender, PatientDetails
from shared.platforms.factory import platform_for
from shared.platforms.http import GenderRefused
from shared.platforms.physitrack import Physitrack
from shared.platforms.physitrack_events import EventsPage, ProgramEvent, parse_event

__all__ = [
    "EventsPage",
    "Gender",
    "GenderRefused",
    "PatientDetails",
    "Physitrack",
    "PlatformAccount",
    "PlatformKind",
    "PlatformPatient",
    "ProgramEvent",
    "TherapyPlatform",
    "fingerprint",
    "parse_event",
    "platform_for",
]

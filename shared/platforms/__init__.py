"""Therapy platforms: one adapter per platform behind the `TherapyPlatform` Protocol
(`base.py`), the details they store (`details.py`) and the factory that picks one
(`factory.py`). This module only names what the rest of the bridge may use.
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

__all__ = [
    "Gender",
    "GenderRefused",
    "PatientDetails",
    "PlatformAccount",
    "PlatformKind",
    "PlatformPatient",
    "TherapyPlatform",
    "fingerprint",
    "platform_for",
]

"""`shared.platforms` names what the rest of the bridge may use: no more, no less."""

from __future__ import annotations

import shared.platforms as face
from shared.infra.errors import Permanent
from tests.helpers import public_members


def test_the_face_exports_exactly_what_it_names() -> None:
    assert public_members(face) == set(face.__all__)


def test_the_face_names_the_program_events_and_the_gender_refusal() -> None:
    """What the events poll and the patient sync use (issue 19)."""
    assert {"EventsPage", "ProgramEvent", "parse_event", "GenderRefused"} <= set(face.__all__)
    assert issubclass(face.GenderRefused, Permanent)  # a refusal, never a retry

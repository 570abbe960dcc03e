"""`shared.halaxy` names what the rest of the bridge may use: no more, no less."""

from __future__ import annotations

import shared.halaxy as face
from tests.helpers import public_members


def test_the_face_exports_exactly_what_it_names() -> None:
    assert public_members(face) == set(face.__all__)

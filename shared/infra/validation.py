"""Validating raw input against a pydantic model, with problems named field by field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.infra.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, message: str) -> M:
    """`data` as a `model`; raise `InvalidInput(message, problems)` naming each bad field
    (its location and what is wrong, never the value)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{field_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise InvalidInput(message, problems) from None


def field_path(loc: tuple[int | str, ...]) -> str:
    """The field, then positions in it. Any name past the field is a key of a mapping, which
    is data and may be a secret (a practitioner token is a key of `practitioners`): it is not
    shown."""
    if not loc:
        return "body"
    return ".".join([str(loc[0]), *("[key]" if isinstance(p, str) else str(p) for p in loc[1:])])

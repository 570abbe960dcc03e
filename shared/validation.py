"""Validating raw input against a pydantic model, with problems named field by field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, message: str) -> M:
    """`data` as a `model`; raise `InvalidInput(message, problems)` naming each bad field
    (its location and what is wrong, never the value)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise InvalidInput(message, problems) from None

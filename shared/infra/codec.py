"""One typed codec for every record the bridge keeps in Redis.

A record type is a dataclass or a pydantic model. `RecordCodec(Type)` writes it as JSON (or as
the flat field map of a Redis hash) and reads it back through pydantic's `TypeAdapter`, so what
comes back is what went in: enums as enums, tuples as tuples, nested records as records.
Rebuilding a record by hand (`Type(**json)`) hands back strings where enums were written, which
is how `status` once crashed on a recorded sweep.

A stored value that does not fit its type (written by another version, or damaged) raises
`UnreadableRecord`, naming the record type and never the value: it may hold ids an operator
must not see in a log line out of context, and the caller decides what an unreadable record
means (skip it, start over, or report it).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from shared.infra.errors import UnreadableRecord
from shared.infra.validation import field_path

T = TypeVar("T")


class RecordCodec(Generic[T]):
    """Encodes and decodes one record type; one instance per type, made at import."""

    def __init__(self, kind: type[T]) -> None:
        self.name = kind.__name__
        self._adapter: TypeAdapter[T] = TypeAdapter(kind)

    def encode(self, record: T) -> bytes:
        return self._adapter.dump_json(record)

    def decode(self, raw: bytes | str) -> T:
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            raise self._unreadable(exc) from None

    def dump(self, record: T) -> Any:
        """The record as JSON-ready data, for a store that seals some of it before writing."""
        return self._adapter.dump_python(record, mode="json")

    def load(self, data: Any) -> T:
        """The record from JSON-ready data (`dump`'s, or a Redis hash's string fields);
        fields the type does not know are ignored."""
        try:
            return self._adapter.validate_python(data)
        except ValidationError as exc:
            raise self._unreadable(exc) from None

    def encode_fields(self, record: T) -> dict[str, str]:
        """The record as a Redis hash's fields (read back with `load`): every value a string,
        booleans as "1"/"0". For flat records only."""
        return {name: _field_text(value) for name, value in self.dump(record).items()}

    def _unreadable(self, exc: ValidationError) -> UnreadableRecord:
        where = sorted({field_path(error["loc"]) for error in exc.errors()})
        return UnreadableRecord(f"a stored {self.name} could not be read (fields: {where})")


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)

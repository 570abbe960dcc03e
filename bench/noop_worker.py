"""P2's floor: `dramatiq bench.noop_worker`, the product's broker and middleware plus an actor
that does nothing, declared like the patient sync it is the floor for (`bench.floor_actor`)."""

from __future__ import annotations

from typing import Any

from bench.floor_actor import broker, declare


def bench_noop(**kwargs: Any) -> None:
    """Nothing: what is left is Dramatiq's own cost per message."""


declare(bench_noop)

__all__ = ["broker"]

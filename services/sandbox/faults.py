"""Failure injection shared by the sandbox fakes: scripted or random errors, 429s, latency."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from starlette.responses import Response


@dataclass
class Faults:
    """What a fake does to a request before answering it normally.

    `script` is consumed first, one entry a request: a status to answer with, or "timeout"
    (the fake sleeps `timeout_seconds` before answering). Then the random rates apply.
    """

    script: list[int | str] = field(default_factory=list)
    error_rate: float = 0.0
    error_status: int = 503
    rate_limited_rate: float = 0.0
    retry_after: int = 1
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    latency: float = 0.0
    seed: int | None = None
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)  # noqa: S311  (test fakes, not security)

    def pick(self) -> int | str | None:
        """The fault for this request, if any."""
        if self.script:
            return self.script.pop(0)
        roll = self._random.random()
        if roll < self.error_rate:
            return self.error_status
        roll -= self.error_rate
        if roll < self.rate_limited_rate:
            return 429
        roll -= self.rate_limited_rate
        if roll < self.timeout_rate:
            return "timeout"
        return None

    async def apply(self, error_body: bytes, media_type: str) -> Response | None:
        """Sleep for the latency, then a fault response, or None to answer normally."""
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self.pick()
        if fault is None:
            return None
        if fault == "timeout":
            await asyncio.sleep(self.timeout_seconds)
            return Response(error_body, status_code=504, media_type=media_type)
        status = int(fault)
        headers = {"retry-after": str(self.retry_after)} if status == 429 else None
        return Response(error_body, status_code=status, media_type=media_type, headers=headers)

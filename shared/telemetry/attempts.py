"""What one attempt at a job did: the requests it made and the outcome its code reported.

A worker's middleware opens an `AttemptRecorder` on the thread about to run a job
(`begin_attempt`); while it is open, every request the connection's HTTP client sends is
noted (`note_call`, from `MeteredClient`), and the job may say how it ended
(`note_result("unchanged")`). Nothing is noted when no recorder is open: the receiver, the
scheduler and the CLI make requests outside any job.

A call is noted by its upstream, method, a route template and its status, never by its URL: a
query string can carry a patient's details and a PDF link is a capability, so the route keeps
only the path's words and puts `{id}` for every other segment (`/main/Patient/{id}`); a
request to any other host, and any request made inside `capability_url` (the PDF download,
wherever its host), has no route at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

# An attempt keeps its first calls; a job that makes more (a long paged read) is counted.
MAX_CALLS = 8
WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,39}|v[0-9]{1,3}")
NO_ROUTE = "(not recorded)"


@dataclass(frozen=True)
class Call:
    """One request: `status` is None when no answer came (a timeout, a refused connection)."""

    upstream: str
    method: str
    route: str
    status: int | None
    seconds: float


@dataclass
class AttemptRecorder:
    calls: list[Call] = field(default_factory=list)
    calls_not_kept: int = 0
    result: str = ""

    def add(self, call: Call) -> None:
        if len(self.calls) < MAX_CALLS:
            self.calls.append(call)
        else:
            self.calls_not_kept += 1

    @property
    def last_status(self) -> int | None:
        """The status of the last request that got an answer, or None."""
        for call in reversed(self.calls):
            if call.status is not None:
                return call.status
        return None


_current: ContextVar[AttemptRecorder | None] = ContextVar("attempt_recorder", default=None)
_capability: ContextVar[str | None] = ContextVar("attempt_capability_url", default=None)


def begin_attempt() -> tuple[AttemptRecorder, Token[AttemptRecorder | None]]:
    """Open a recorder on this thread; give the token back to `end_attempt`."""
    recorder = AttemptRecorder()
    return recorder, _current.set(recorder)


def end_attempt(token: Token[AttemptRecorder | None]) -> None:
    _current.reset(token)


def note_call(upstream: str, method: str, path: str, status: int | None, seconds: float) -> None:
    """Note a request in the open recorder, if any. `path` is reduced to a route template;
    pass "" for a host whose paths are not to be kept."""
    recorder = _current.get()
    if recorder is None:
        return
    capability = _capability.get()
    if capability is not None:
        upstream, path = capability, ""
    recorder.add(Call(upstream, method.upper()[:10], route_of(path), status, round(seconds, 4)))


@contextmanager
def capability_url(upstream: str) -> Iterator[None]:
    """Requests sent inside go to a URL that is a capability (a PDF link): they are noted as
    `upstream`, with no route, whatever host they go to."""
    token = _capability.set(upstream)
    try:
        yield
    finally:
        _capability.reset(token)


def current_capability() -> str | None:
    """The upstream named by the `capability_url` block this thread is in, if any."""
    return _capability.get()


def note_result(result: str) -> None:
    """What the job reports as its outcome (`created`, `unchanged`, `posted`, ...)."""
    recorder = _current.get()
    if recorder is not None:
        recorder.result = result


def route_of(path: str) -> str:
    """The path's words kept, every other segment (ids, codes, digests) as `{id}`."""
    if not path:
        return NO_ROUTE
    segments = path.split("?", 1)[0].split("#", 1)[0].strip("/").split("/")
    kept = [s if WORD.fullmatch(s) else "{id}" for s in segments if s]
    return "/" + "/".join(kept[:12])

"""structlog set-up: JSON lines in production, readable in a terminal, PHI and secrets redacted.

Log calls pass ids only (connection, event, message, resource). The redaction processor is the
backstop: it drops fields whose names are known to carry patient details or secrets, and masks
anything in a string that looks like an email, a phone number, a date (a birth date), a bearer
token or a Fernet token. Id fields (`id`, `*_id`, `*_ids`) keep their digits and dates: a
sweep's event id holds the time it started, a Halaxy event number may be zero-padded to ten
digits; only what no id can look like by chance (a token, a secret, an email) is masked in them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from shared.infra.config import LogFormat, Settings

REDACTED = "[redacted]"

SENSITIVE_KEYS = frozenset(
    {
        "name",
        "given",
        "family",
        "first_name",
        "last_name",
        "email",
        "phone",
        "mobile",
        "mobile_phone",
        "telecom",
        "birth_date",
        "birthdate",
        "birthDate",
        "year_of_birth",
        "address",
        "authorization",
        "secret",
        "client_secret",
        "api_key",
        "token",
        "access_token",
        "practitioner_token",
        "password",
        "webhook_secret",
        "signing_secret",
        "halaxy_key",
        "platform_api_key",
        "platform_pms_key",
        "program_api_key",
        "practitioners",
        "file_url",
        "body",
    }
)

# Each pattern with a string it cannot match without (skipping it then changes nothing).
# First what no id looks like by chance: secrets, tokens, emails.
ID_PATTERNS = (
    ("", re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")),
    ("gAAAAA", re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}")),  # Fernet token
    ("whsec_", re.compile(r"whsec_[A-Za-z0-9+/=]+")),
    ("@", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
)
PATTERNS = (
    *ID_PATTERNS,
    ("+", re.compile(r"\+\d{8,15}")),  # E.164, the form Halaxy stores phones in
    ("0", re.compile(r"(?<![\w-])0\d(?:\s?\d){8}(?![\w-])")),  # national form, 04xx xxx xxx
    # A date: could be a birth date.
    ("-", re.compile(r"(?<!\d)(?:19|20)\d\d-[01]\d-[0-3]\d(?!\d)")),
)
PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|“[^”]*”")


def mask(text: str, patterns: tuple[tuple[str, re.Pattern[str]], ...] = PATTERNS) -> str:
    """Mask anything shaped like an email, phone number, date, bearer token or Fernet token."""
    for needed, pattern in patterns:
        if needed in text:
            text = pattern.sub(REDACTED, text)
    return text


def is_id_field(key: object) -> bool:
    """`id`, `connection_id`, `event_ids` and the like: ids, the bridge's own or Halaxy's."""
    name = str(key).lower()
    return name == "id" or name.endswith(("_id", "_ids"))


def remote_text(text: str, limit: int = 160) -> str:
    """Text from Halaxy or a platform, made fit for a log or a dead letter: quoted values
    (where error messages echo what was sent, a name say) dropped, then masked and cut."""
    return mask(QUOTED.sub("[value]", " ".join(str(text).split())))[:limit]


def _scrub(value: Any, patterns: tuple[tuple[str, re.Pattern[str]], ...] = PATTERNS) -> Any:
    if isinstance(value, str):
        return mask(value, patterns)
    if isinstance(value, dict):
        return {k: _field(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, patterns) for v in value]
    return value


def _field(key: object, value: Any) -> Any:
    if str(key).lower() in SENSITIVE_KEYS:
        return REDACTED
    return _scrub(value, ID_PATTERNS if is_id_field(key) else PATTERNS)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop sensitive fields, mask sensitive-looking text (in id fields,
    only what no id can look like)."""
    for key in list(event_dict):
        if key != "timestamp":
            event_dict[key] = _field(key, event_dict[key])
    return event_dict


def _orjson_text(event_dict: Any, default: Any = None) -> str:
    # A fifth of the stdlib json module's time: every webhook and every job writes a line.
    # Datetimes and dataclasses go to `default` as they did with json; what orjson refuses
    # (keys that are not strings, integers past 64 bits) is still written, by json.
    try:
        return orjson.dumps(event_dict, default=default, option=PASSTHROUGH).decode()
    except TypeError:
        return json.dumps(event_dict, default=default)


# Held while a line is written, by structlog's lines and the standard library's alike, so that
# two never interleave; made anew in a forked child, as the standard library's own locks are.
_WRITING = threading.RLock()
os.register_at_fork(after_in_child=_WRITING._at_fork_reinit)  # type: ignore[attr-defined]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is when a line is written, not as it was when logging was
    configured: a stream swapped since (a test's captured output, a daemon's redirect) may be
    closed by then, and every line would fail with "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def createLock(self) -> None:
        self.lock = _WRITING

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # always the current sys.stderr


class _StderrLines:
    """structlog's logger: each rendered line goes to `sys.stderr` as it is when written, as
    `_StderrHandler`'s lines do."""

    def __init__(self, name: str) -> None:
        self.name = name  # for `add_logger_name`

    def msg(self, line: str) -> None:
        with _WRITING:
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


class _AtLeast:
    """structlog processor: drops what is below the level last configured. Read at each call,
    so a logger cached before `configure_logging` ran again follows it."""

    def __init__(self) -> None:
        self.level = logging.INFO

    def __call__(
        self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if LEVELS.get(method, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_at_least = _AtLeast()
# One list, changed in place: a logger cached on first use keeps the list it was made with
# (as structlog's `capture_logs` relies on), so a later `configure_logging` still reaches it.
_processors: list[Any] = []


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library's logging through the same redacted output.

    structlog's own calls (every line the bridge writes: one per webhook, several per job) are
    rendered by structlog and written straight to stderr: the standard library's record,
    handler and formatter, which they went through before, took more than half the time of
    each line (benchmark P1). The standard library's records (Dramatiq, uvicorn, httpx) go
    through its handler, with the same processors."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.processors.format_exc_info,
                redact,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    _at_least.level = logging.getLevelName(settings.log_level.value)
    _processors[:] = [
        _at_least,
        *pre_chain,
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=_processors,
        logger_factory=lambda *names: _StderrLines(str(names[0]) if names else ""),
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    # The logging HOWTO's "Optimization": no line we write shows the caller's file and line,
    # or the multiprocessing process name, so do not look them up for every record. (It also
    # turns off `stack_info=True`, which nothing here uses.)
    logging._srcfile = None
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.value)
    # httpx logs every URL at INFO; a FHIR search URL can carry a patient's name or email.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # uvicorn gives its loggers handlers of their own: send them through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

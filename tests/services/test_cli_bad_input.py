"""Bad input to every CLI command: a wrong id, a wrong flag value, an unreachable Redis.

Each ends with a non-zero exit and one readable line on stderr, never a traceback. The
commands are read from the click tree, so a command added later is covered (or this test
fails until it says how to run it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from services.cli.main import cli
from shared.infra.config import Settings

Path_ = tuple[str, ...]


def leaves(group: click.Group, path: Path_ = ()) -> Iterator[tuple[Path_, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # a command too (`audit`, beside its own)
                yield (*path, name), command
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(leaves(cli))

# A valid invocation of each command that reads or writes Redis.
USES_REDIS: dict[Path_, list[str]] = {
    ("admins", "add"): ["ops-person", "--role=viewer"],
    ("admins", "list"): [],
    ("admins", "revoke"): ["ops-person"],
    ("audit",): [],
    ("audit", "export"): [],
    ("audit", "verify"): [],
    ("connections", "add"): [
        "--name=Clinic",
        "--halaxy-key=cid:secret",
        "--platform=physitrack",
        "--platform-base-url=https://au.physitrack.com/api/v2",
        "--platform-api-key=pt-key",
        "--no-verify",
    ],
    ("connections", "disable"): ["cn_aaaaaaaaaaaa", "--yes"],
    ("connections", "edit"): ["cn_aaaaaaaaaaaa", "--name=Clinic"],
    ("connections", "enable"): ["cn_aaaaaaaaaaaa"],
    ("connections", "list"): [],
    ("connections", "offboard"): ["cn_aaaaaaaaaaaa", "--yes"],
    ("connections", "pause"): ["cn_aaaaaaaaaaaa"],
    ("connections", "resume"): ["cn_aaaaaaaaaaaa"],
    ("connections", "rotate"): ["cn_aaaaaaaaaaaa", "--webhook-secret"],
    ("connections", "show"): ["cn_aaaaaaaaaaaa"],
    ("dead-letters", "list"): [],
    ("dead-letters", "purge"): ["--all-matching"],
    ("dead-letters", "replay"): ["--all-matching"],
    ("events", "list"): [],
    ("events", "show"): ["ev-1"],
    ("notes", "failed"): [],
    ("notes", "parked"): [],
    ("notes", "resolve"): ["nt_x", "--drop"],
    ("practitioners", "add"): [
        "cn_aaaaaaaaaaaa",
        "--token=ptok-0123456789",
        "--halaxy-practitioner=PR-1",
        "--api-key=pt-key",
        "--no-verify",
    ],
    ("practitioners", "list"): ["cn_aaaaaaaaaaaa"],
    ("practitioners", "remove"): ["cn_aaaaaaaaaaaa", "PR-1", "--yes"],
    ("practitioners", "rotate"): ["cn_aaaaaaaaaaaa", "PR-1", "--token=ptok-0123456789"],
    ("probe",): ["worker"],
    ("programs", "unrouted"): [],
    ("status",): [],
}
# Commands that do not stop for a Redis they cannot reach, on purpose.
REDIS_OPTIONAL = {
    ("demo",): "runs on in-process stand-ins when no Redis answers (a fresh machine)",
    ("sandbox",): "serves the fake Halaxy and platforms; uses no Redis",
    ("scheduler",): "a Procfile process: waits out a Redis outage (tested below)",
}
# The id each command takes, and what stands in for the rest of a valid invocation.
TAKES_AN_ID: dict[Path_, list[str]] = {
    ("connections", "disable"): ["--yes"],
    ("connections", "edit"): ["--name=Clinic"],
    ("connections", "enable"): [],
    ("connections", "offboard"): ["--yes"],
    ("connections", "pause"): [],
    ("connections", "resume"): [],
    ("connections", "rotate"): ["--webhook-secret"],
    ("connections", "show"): [],
    ("dead-letters", "purge"): [],
    ("dead-letters", "replay"): [],
    ("events", "show"): [],
    ("notes", "resolve"): ["--drop"],
    ("practitioners", "add"): [
        "--token=ptok-0123456789",
        "--halaxy-practitioner=PR-1",
        "--api-key=pt-key",
        "--no-verify",
    ],
    ("practitioners", "list"): [],
    ("practitioners", "remove"): ["--yes"],
    ("practitioners", "rotate"): ["--token=ptok-0123456789"],
}
# Arguments after the id, for commands that take more than one.
AFTER_THE_ID: dict[Path_, list[str]] = {
    ("practitioners", "remove"): ["PR-1"],
    ("practitioners", "rotate"): ["PR-1"],
}


def test_every_command_is_covered() -> None:
    assert set(USES_REDIS) | set(REDIS_OPTIONAL) == set(COMMANDS)
    with_id_argument = {
        path
        for path, command in COMMANDS.items()
        if any(isinstance(p, click.Argument) and "id" in (p.name or "") for p in command.params)
    }
    assert with_id_argument == set(TAKES_AN_ID)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(settings: Settings, args: list[str], env: dict[str, str] | None = None) -> Result:
    environment = {"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace, **(env or {})}
    return CliRunner().invoke(cli, args, env=environment)


def assert_one_line_error(result: Result, as_json: bool = False) -> str:
    """Non-zero exit, nothing on stdout, exactly one readable line on stderr."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert "Traceback" not in line
    if as_json:
        error = orjson.loads(line)
        assert set(error) == {"error", "detail"}
        return str(error["detail"])
    assert line.startswith("error: ")
    assert line.isprintable()
    return line


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("path", sorted(USES_REDIS), ids=" ".join)
def test_an_unreachable_redis_is_one_line_naming_host_and_port_never_the_password(
    settings: Settings, path: Path_, as_json: bool
) -> None:
    port = closed_port()
    url = f"redis://opsuser:pa55-w0rd-xyz@127.0.0.1:{port}/3"
    started = time.monotonic()

    result = run(
        settings, [*path, *USES_REDIS[path], *(["--json"] if as_json else [])], {"REDIS_URL": url}
    )

    detail = assert_one_line_error(result, as_json)
    assert result.exit_code == 3
    assert f"127.0.0.1:{port}" in detail
    assert "pa55-w0rd-xyz" not in result.stderr
    assert "opsuser" not in result.stderr
    assert "Redis" in detail
    assert time.monotonic() - started < 10


IDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@pytest.mark.parametrize("path", sorted(TAKES_AN_ID), ids=" ".join)
@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(wrong_id=IDS)
def test_a_wrong_id_is_one_line(settings: Settings, path: Path_, wrong_id: str) -> None:
    # `--` so an id that looks like a flag is still read as the id.
    result = run(settings, [*path, *TAKES_AN_ID[path], "--", wrong_id, *AFTER_THE_ID.get(path, [])])

    assert_one_line_error(result)


def without(flags: set[str], args: list[str]) -> list[str]:
    """`args` (all `--flag=value` or bare) without the given flags."""
    return [a for a in args if a.split("=")[0] not in flags]


def bad_values(param: click.Option) -> st.SearchStrategy[str]:
    """Values the option's type refuses."""
    kind = param.type
    if isinstance(kind, click.Choice):
        allowed = {str(c).lower() for c in kind.choices}
        return IDS.filter(lambda v: v.strip().lower() not in allowed)
    if isinstance(kind, click.types._NumberRangeBase):
        low = kind.min if kind.min is not None else 0
        return st.one_of(
            st.floats(max_value=low - 1, allow_nan=False, allow_infinity=False).map(str),
            st.text(alphabet="abcxyz!?,", min_size=1, max_size=10),
        )
    if isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
        return st.text(alphabet="abcxyz!?,", min_size=1, max_size=10)
    raise AssertionError(f"no bad values for {param.name}")


TYPED_OPTIONS = [
    (path, param.opts[-1])
    for path, command in sorted(COMMANDS.items())
    for param in command.params
    if isinstance(param, click.Option)
    and not param.is_flag
    and not isinstance(param.type, click.types.StringParamType)
]


def test_there_are_typed_options_to_try() -> None:
    assert (("connections", "add"), "--region") in TYPED_OPTIONS
    assert (("status",), "--interval") in TYPED_OPTIONS


@pytest.mark.parametrize(("path", "flag"), TYPED_OPTIONS, ids=lambda x: str(x))
@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_wrong_flag_value_is_one_line(
    settings: Settings, path: Path_, flag: str, data: st.DataObject
) -> None:
    [param] = [p for p in COMMANDS[path].params if isinstance(p, click.Option) and flag in p.opts]
    value = data.draw(bad_values(param))

    result = run(settings, [*path, *without({flag}, USES_REDIS.get(path, [])), f"{flag}={value}"])

    line = assert_one_line_error(result)
    assert result.exit_code == 2
    assert flag in line


# Options whose value the command itself checks: each of these is wrong.
WRONG_TEXT_VALUES: list[tuple[Path_, list[str]]] = [
    (("admins", "add"), ["--expires-in", "forever"]),
    (("admins", "add"), ["--expires-in", "400d"]),
    (("admins", "add"), ["--by", "\n"]),
    (("audit",), ["--since", "yesterday"]),
    (("audit", "export"), ["--since", "yesterday"]),
    (("dead-letters", "list"), ["--since", "2020-01-01T00:00:00"]),  # no timezone
    (("connections", "add"), ["--halaxy-key=no-colon"]),
    (("connections", "add"), ["--pdf-hosts=,,"]),
    (("connections", "add"), ["--practitioner=tok=EP-1"]),
    (("connections", "add"), ["--author=someone"]),
    (("connections", "add"), ["--platform-base-url=ftp://x"]),
    (("connections", "edit"), ["--author=someone"]),
    (("connections", "edit"), ["--pdf-hosts=,,"]),
    (("connections", "edit"), ["--practitioner=tok=EP-1"]),
    (("connections", "edit"), ["--platform-base-url=ftp://x"]),
    (("connections", "edit"), ["--name=\n"]),
    (("notes", "resolve"), ["--by", "\n"]),
    (("events", "list"), ["--since", "yesterday"]),
    (("events", "list"), ["--cursor", "ev1.AAAA"]),
    (("events", "list"), ["--state", "finished"]),
]


@pytest.mark.parametrize(("path", "wrong"), WRONG_TEXT_VALUES, ids=lambda x: str(x))
def test_a_wrong_text_value_is_one_line(settings: Settings, path: Path_, wrong: list[str]) -> None:
    flags = {w.split("=")[0] for w in wrong if w.startswith("--")}
    valid = [a for a in USES_REDIS[path] if not any(a == f or a.startswith(f + "=") for f in flags)]

    assert_one_line_error(run(settings, [*path, *valid, *wrong]))


@pytest.mark.parametrize("region", ["au", "AU", "Au", "eu", "EU"])
def test_a_region_is_read_in_any_case(settings: Settings, region: str) -> None:
    args = without({"--halaxy-key"}, USES_REDIS[("connections", "add")])
    key = f"--halaxy-key=cid-{region}:s"
    result = run(settings, ["connections", "add", "--json", key, f"--region={region}", *args])

    assert result.exit_code == 0, result.output
    base = orjson.loads(result.stdout)["halaxy_base_url"]
    assert base == f"https://{region.lower()}-api.halaxy.com/main"


def test_the_scheduler_waits_out_an_unreachable_redis_and_stops_cleanly(tmp_path: Path) -> None:
    """A Procfile process does not exit when Redis is away (it restarts, fails over): it
    says so in its log, and stops on SIGTERM without a traceback."""
    binary = Path(sys.executable).with_name("halaxy-bridge")
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    with (tmp_path / "err").open("w+") as err:
        process = subprocess.Popen([str(binary), "scheduler"], stdout=err, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 30
            while "scheduler.redis_unavailable" not in (tmp_path / "err").read_text():
                assert time.monotonic() < deadline, (tmp_path / "err").read_text()
                assert process.poll() is None, (tmp_path / "err").read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = (tmp_path / "err").read_text()
    assert "Traceback" not in log
    assert "Logging error" not in log

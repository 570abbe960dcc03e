"""What `connections add` and `connections rotate` tell a person agrees with the runbook and
with the platforms as they are (therapy-platforms.md 2.1): Physitrack's PDF webhook is
registered by Physitrack support, not by the clinic; a rotated webhook secret is pasted into
the existing Halaxy webhooks, not into new ones."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from services.cli.main import cli
from shared.infra.config import Settings

RUNBOOK = Path(__file__).resolve().parent.parent.parent / "docs" / "operations.md"
BY_SUPPORT = "registered by physitrack support, not by the clinic"
EMAIL_SUPPORT = "email physitrack support"
EDIT = "edit each of the"
NOT_NEW = "do not create new webhooks"


def flat(text: str) -> str:
    """Lower case, one space between words: phrases compare across line breaks."""
    return " ".join(text.lower().replace("*", "").split())


def run(settings: Settings, *args: str) -> Result:
    result = CliRunner().invoke(
        cli, ["connections", *args], env={"BRIDGE_REDIS_NAMESPACE": settings.redis_namespace}
    )
    assert result.exit_code == 0, result.output
    return result


def add(settings: Settings, platform: str, *extra: str) -> Result:
    return run(
        settings,
        "add",
        "--no-verify",
        "--name=Clinic",
        f"--halaxy-key=cid-{secrets.token_hex(4)}:secret",
        f"--platform={platform}",
        "--platform-base-url=https://au.physitrack.com/api/v2",
        f"--platform-api-key=key-{secrets.token_hex(8)}",
        *extra,
    )


def added_id(settings: Settings, platform: str = "physitrack") -> str:
    return str(orjson.loads(add(settings, platform, "--json").stdout)["id"])


def test_the_runbook_says_what_the_cli_says() -> None:
    runbook = flat(RUNBOOK.read_text())
    for phrase in (
        BY_SUPPORT,
        EMAIL_SUPPORT,
        NOT_NEW,
        "edit each of the eight existing",
        "once for the whole deployment",
        "/webhooks/physitrack/programs",
        "halaxy-bridge practitioners add",
    ):
        assert phrase in runbook, phrase


def test_adding_a_physitrack_connection_says_physitrack_support_registers_the_webhook(
    settings: Settings,
) -> None:
    text = flat(add(settings, "physitrack").stdout)

    assert BY_SUPPORT in text
    assert EMAIL_SUPPORT in text
    assert "in the therapy platform" not in text
    # One URL for the deployment, and each practitioner added to the connection.
    assert "https://bridge.example.test/webhooks/physitrack/programs" in text
    assert "once for the whole deployment" in text
    assert "halaxy-bridge practitioners add" in text


def test_adding_a_rest_connection_says_to_set_it_in_the_platform(settings: Settings) -> None:
    text = flat(add(settings, "rest").stdout)

    assert "in the therapy platform (rest), set the program-assigned (pdf) webhook" in text
    assert "physitrack" not in text.replace("au.physitrack.com", "")


def test_a_rotated_webhook_secret_goes_into_the_existing_halaxy_webhooks(
    settings: Settings,
) -> None:
    connection_id = added_id(settings)

    text = flat(run(settings, "rotate", connection_id, "--webhook-secret").stdout)
    header = orjson.loads(run(settings, "show", connection_id, "--reveal", "--json").stdout)

    assert EDIT in text
    assert NOT_NEW in text
    assert "create webhook" not in text
    assert "create one webhook" not in text
    assert flat(header["halaxy_auth_header"]) in text
    assert EMAIL_SUPPORT not in text  # the program key did not change


@pytest.mark.parametrize(("platform", "where"), [("physitrack", EMAIL_SUPPORT), ("rest", "set")])
def test_a_rotated_program_key_goes_to_the_platform_and_nothing_to_halaxy(
    settings: Settings, platform: str, where: str
) -> None:
    connection_id = added_id(settings, platform)

    text = flat(run(settings, "rotate", connection_id, "--program-key").stdout)
    details = orjson.loads(run(settings, "show", connection_id, "--reveal", "--json").stdout)

    assert where in text
    assert flat(details["program_api_key"]) in text
    assert "authentication header" not in text


def test_a_rotated_halaxy_key_changes_nothing_outside(settings: Settings) -> None:
    connection_id = added_id(settings)

    text = flat(
        run(settings, "rotate", connection_id, "--no-verify", "--halaxy-key=cid-new:s").stdout
    )

    assert "nothing changes in halaxy's webhooks or in the platform's pdf webhook" in text

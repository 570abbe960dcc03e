"""`halaxy-bridge connections ...`: the CLI run in-process (CliRunner) against the real Redis.

Each test passes its own BRIDGE_REDIS_NAMESPACE, so what the CLI stores is what the `store`
fixture and the receiver app of the `client` fixture see. Key verification goes over real HTTP
to the fake Halaxy served on a loopback port (`halaxy_base`).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from services.cli.main import cli
from services.sandbox.halaxy import FakeHalaxy
from services.sandbox.samples import notification
from services.sandbox.serve import ServerThread
from shared.connections.store import ConnectionStore
from shared.infra.config import Settings
from tests.helpers import (
    EVENTS,
    PUBLIC_URL,
    SETUP_KEYS,
    WITHHELD,
    assert_key_checked,
    assert_lacks,
    audit_of,
)

USER_AGENT = "bridge-cli-tests (qa@example.test)"
PLATFORM_URL = "https://au.physitrack.com/api/v2"

Invoke = Callable[..., Result]


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def halaxy_base(fake_halaxy: FakeHalaxy) -> Iterator[str]:
    """The fake Halaxy served by uvicorn on a free loopback port; yields its API base URL."""
    with ServerThread(fake_halaxy.app()) as server:
        yield f"{server.url}/main"


@pytest.fixture
def invoke(settings: Settings) -> Invoke:
    """Run `halaxy-bridge connections ARGS...` under this test's Redis namespace."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        environment: dict[str, str | None] = {
            "BRIDGE_REDIS_NAMESPACE": settings.redis_namespace,
            "BRIDGE_USER_AGENT": USER_AGENT,
            **(env or {}),
        }
        return CliRunner().invoke(cli, ["connections", *args], env=environment)

    return run


def add_args(
    halaxy_key: str, *extra: str, platform_api_key: str = "pt-key-0123456789abcdef"
) -> list[str]:
    return [
        "add",
        "--name",
        "Clinic One",
        f"--halaxy-key={halaxy_key}",
        "--platform",
        "physitrack",
        "--platform-base-url",
        PLATFORM_URL,
        f"--platform-api-key={platform_api_key}",
        *extra,
    ]


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.output, result.exception)
    data = orjson.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def assert_clean_failure(result: Result, exit_code: int | None = None) -> None:
    """Non-zero exit through SystemExit (a message, not an unhandled exception)."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert result.stdout == ""


def assert_nothing_stored(
    store: ConnectionStore, redis_server_client: redis.Redis, settings: Settings
) -> None:
    assert store.list() == []
    assert list(redis_server_client.scan_iter(match=f"{settings.redis_namespace}:*")) == []


def auth_secret(details: dict[str, Any]) -> str:
    header = details["halaxy_auth_header"]
    assert header.startswith("Bearer ")
    return str(header.removeprefix("Bearer "))


def post_webhook(
    client: TestClient,
    details: dict[str, Any],
    authorization: str,
    event: str = "patient-created",
    connection_id: str | None = None,
) -> Any:
    """POST a Halaxy-shaped notification to the path of the printed webhook URL (or to the
    same event of `connection_id`)."""
    path = urlsplit(details["webhook_urls"][event]).path
    if connection_id is not None:
        path = f"/webhooks/halaxy/{connection_id}/{event}"
    resource_type = event.partition("-")[0].capitalize()  # patient-created -> Patient
    body = notification(details["halaxy_base_url"], resource_type, [str(secrets.randbelow(10**6))])
    return client.post(
        path,
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )


def stored_values(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key and value under `namespace` (the bridge's keys and Dramatiq's), read by type:
    DUMP could hide clear text in LZF compression."""
    found: list[bytes] = []
    keys = [
        *client.scan_iter(match=f"{namespace}:*"),
        *client.scan_iter(match=f"{namespace}-dramatiq*"),
    ]
    for key in keys:
        kind = client.type(key).decode()
        found.append(key)
        if kind == "string":
            found.append(client.get(key))
        elif kind == "set":
            found.extend(client.smembers(key))
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                found += [field, value]
        elif kind == "list":
            found.extend(client.lrange(key, 0, -1))
        elif kind == "zset":
            found.extend(client.zrange(key, 0, -1))
        else:
            found.append(client.dump(key))
    return found


# --- add ------------------------------------------------------------------------------------


def test_add_json_prints_every_setup_value(
    invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str
) -> None:
    key = fake_halaxy.add_key()

    result = invoke(*add_args(key, "--halaxy-base-url", halaxy_base, "--json"))

    details = ok_json(result)
    assert result.stderr == ""
    assert set(details) >= SETUP_KEYS
    connection_id = details["id"]
    assert connection_id
    assert details["webhook_urls"] == {
        event: f"{PUBLIC_URL}/webhooks/halaxy/{connection_id}/{event}" for event in EVENTS
    }
    assert details["program_webhook_url"] == f"{PUBLIC_URL}/webhooks/programs/{connection_id}"
    assert isinstance(details["program_api_key"], str)
    assert len(details["program_api_key"]) >= 30
    assert len(auth_secret(details)) >= 32
    assert details["signing_secret"] is None
    assert details["halaxy_base_url"] == halaxy_base
    # The key was checked against Halaxy once, with the configured User-Agent.
    assert_key_checked(fake_halaxy, USER_AGENT)


def test_auth_header_from_add_authenticates_a_webhook(
    invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str, client: TestClient
) -> None:
    details = ok_json(
        invoke(*add_args(fake_halaxy.add_key(), "--halaxy-base-url", halaxy_base, "--json"))
    )

    for event in EVENTS:  # every printed URL routes to the receiver and takes the secret
        accepted = post_webhook(client, details, details["halaxy_auth_header"], event)
        assert accepted.status_code == 202, accepted.text
        assert len(accepted.json()["accepted"]) == 1
    # The bare secret is accepted too; a wrong one is not.
    assert post_webhook(client, details, auth_secret(details)).status_code == 202
    refused = post_webhook(client, details, "Bearer " + secrets.token_urlsafe(32))
    assert refused.status_code == 401


def test_add_with_signing_prints_a_standard_webhooks_secret(
    invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str
) -> None:
    details = ok_json(
        invoke(
            *add_args(
                fake_halaxy.add_key(), "--halaxy-base-url", halaxy_base, "--signing", "--json"
            )
        )
    )

    secret = details["signing_secret"]
    assert isinstance(secret, str)
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    assert details["signing"] is True


def test_add_no_verify_makes_no_token_request(
    invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str, store: ConnectionStore
) -> None:
    # A key the fake Halaxy does not know: only skipping the check lets it through.
    result = invoke(
        *add_args("unknown-id:unknown-secret", "--halaxy-base-url", halaxy_base, "--no-verify")
    )

    assert result.exit_code == 0, result.output
    assert fake_halaxy.requests == []
    [stored] = store.list()
    assert stored.halaxy_client_id == "unknown-id"


def test_add_human_output_names_each_url_and_the_auth_header(
    invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str, store: ConnectionStore
) -> None:
    result = invoke(*add_args(fake_halaxy.add_key(), "--halaxy-base-url", halaxy_base))

    assert result.exit_code == 0, result.output
    [connection] = store.list()
    text = result.stdout
    assert f"Bearer {connection.webhook_secret.get_secret_value()}" in text
    for event in EVENTS:
        assert f"{PUBLIC_URL}/webhooks/halaxy/{connection.id}/{event}" in text
    assert f"{PUBLIC_URL}/webhooks/programs/{connection.id}" in text
    assert connection.program_api_key.get_secret_value() in text


@pytest.mark.parametrize("as_json", [False, True])
def test_add_with_a_refused_halaxy_key_stores_nothing(
    invoke: Invoke,
    fake_halaxy: FakeHalaxy,
    halaxy_base: str,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
    as_json: bool,
) -> None:
    client_id = fake_halaxy.add_key().partition(":")[0]
    args = add_args(f"{client_id}:wrong-secret", "--halaxy-base-url", halaxy_base)

    result = invoke(*args, *(["--json"] if as_json else []))

    assert_clean_failure(result)
    assert len(fake_halaxy.requests) == 1
    if as_json:
        error = orjson.loads(result.stderr)
        assert set(error) == {"error", "detail"}
        assert error["error"] == "invalid"
        detail = error["detail"]
    else:
        detail = result.stderr
        assert detail.startswith("error: ")
    assert "Halaxy key could not be verified" in detail
    assert "refused" in detail
    assert "wrong-secret" not in result.output
    assert_nothing_stored(store, redis_server_client, settings)
    assert ok_json(invoke("list", "--json")) == {"connections": []}


@pytest.mark.parametrize("withheld", WITHHELD.values(), ids=WITHHELD.keys())
def test_add_with_a_key_lacking_permissions_names_each_and_stores_nothing(
    invoke: Invoke,
    fake_halaxy: FakeHalaxy,
    halaxy_base: str,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
    withheld: frozenset[str],
) -> None:
    key = fake_halaxy.add_key(withheld=withheld)

    result = invoke(*add_args(key, "--halaxy-base-url", halaxy_base, "--json"))

    assert_clean_failure(result, exit_code=2)
    error = orjson.loads(result.stderr)
    assert error["error"] == "invalid"
    assert_lacks(error["detail"], withheld)
    assert fake_halaxy.notes == []
    assert_nothing_stored(store, redis_server_client, settings)  # the audit trail too


BAD_INPUTS = {
    "key-without-colon": (["--halaxy-key=nocolonhere"], "CLIENT_ID:CLIENT_SECRET"),
    "key-without-secret": (["--halaxy-key=client-id:"], "CLIENT_ID:CLIENT_SECRET"),
    "region-and-base-url": (
        ["--region", "eu", "--halaxy-base-url", "https://eu-api.halaxy.com/main"],
        "not both",
    ),
    "http-halaxy-url": (["--halaxy-base-url", "http://halaxy.example.test/main"], "https"),
    "http-platform-url": (["--platform-base-url", "http://platform.example.test/api"], "https"),
    "external-author": (["--author", "EP-123"], "PR-"),
    "practitioner-without-equals": (["--practitioner", "tok-PR-1001"], "TOKEN=PR-"),
    "practitioner-external-role": (["--practitioner", "tok=EP-1001"], "PR-"),
    "pdf-host-garbage": (["--pdf-hosts", "files.example.test,bad host!"], "host:port"),
    "pdf-host-port-range": (["--pdf-hosts", "files.example.test:70000"], "host:port"),
    "pdf-hosts-empty": (["--pdf-hosts", " , "], "at least one host"),
    "pms-name-without-key": (["--platform-pms-name", "halaxy_bridge"], "PMS name and the PMS key"),
    "pms-key-without-name": (["--platform-pms-key", "pms-key-1"], "PMS name and the PMS key"),
    "pms-name-not-physitracks-form": (
        ["--platform-pms-name", "Halaxy Bridge", "--platform-pms-key", "pms-key-1"],
        "lowercase letters, digits and underscores",
    ),
    "pms-key-blank": (
        ["--platform-pms-name", "halaxy_bridge", "--platform-pms-key", "   "],
        "platform_pms_key",
    ),
    "pms-key-weak": (
        ["--platform-pms-name", "halaxy_bridge", "--platform-pms-key", "pms-key-" + "7" * 30],
        "mixing upper case, lower case and digits",
    ),
    "pms-for-another-platform": (
        ["--platform", "rest", "--platform-pms-name", "x", "--platform-pms-key", "pms-key-1"],
        "Physitrack only",
    ),
    "blank-name": (["--name", "   "], "name"),
}


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_add_refuses_bad_input_with_a_clear_message(
    invoke: Invoke,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
    fake_halaxy: FakeHalaxy,
    extra: list[str],
    message: str,
) -> None:
    # --no-verify: a bad input must be refused by validation alone, before any network.
    result = invoke(*add_args(fake_halaxy.add_key(), *extra, "--no-verify"))

    assert_clean_failure(result, exit_code=2)
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert_nothing_stored(store, redis_server_client, settings)


def test_add_bad_input_with_json_is_a_json_error_on_stderr(
    invoke: Invoke, store: ConnectionStore, fake_halaxy: FakeHalaxy
) -> None:
    result = invoke(*add_args(fake_halaxy.add_key(), "--author", "EP-123", "--no-verify", "--json"))

    assert_clean_failure(result, exit_code=2)
    error = orjson.loads(result.stderr)
    assert error["error"] == "invalid"
    assert "PR-" in error["detail"]
    assert store.list() == []


SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=SUPPRESS)
@given(key=st.text(alphabet=st.characters(blacklist_characters=":"), max_size=40))
def test_add_refuses_any_halaxy_key_without_a_colon(
    invoke: Invoke, store: ConnectionStore, key: str
) -> None:
    result = invoke(*add_args(key, "--no-verify"))

    assert_clean_failure(result, exit_code=2)
    assert "CLIENT_ID:CLIENT_SECRET" in result.stderr
    assert store.list() == []


HOST_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", max_size=12)
NOT_IN_A_HOST = st.sampled_from(list("!@#$%^&*()+=/\\?<>[]{}|~'\";`"))


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=SUPPRESS)
@given(
    good=st.lists(st.sampled_from(["files.example.test", "cdn.example.test:8443"]), max_size=2),
    garbage=st.tuples(HOST_TEXT, NOT_IN_A_HOST, HOST_TEXT).map("".join),
)
def test_add_refuses_pdf_hosts_garbage(
    invoke: Invoke, store: ConnectionStore, good: list[str], garbage: str
) -> None:
    hosts = ",".join([*good, garbage])

    result = invoke(*add_args("cid:secret", f"--pdf-hosts={hosts}", "--no-verify"))

    assert_clean_failure(result, exit_code=2)
    assert "must look like host or host:port" in result.stderr
    assert store.list() == []


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize(
    "url",
    ["https://halaxy.example.test:abc/main", "https://halaxy..example.test/main"],
    ids=["port-not-a-number", "empty-label"],
)
def test_add_refuses_a_halaxy_base_url_httpx_cannot_use(
    invoke: Invoke, store: ConnectionStore, url: str, verify: bool
) -> None:
    # Both fail inside httpx before any DNS lookup or connection.
    result = invoke(
        *add_args("cid:secret", f"--halaxy-base-url={url}", *([] if verify else ["--no-verify"]))
    )

    assert_clean_failure(result, exit_code=2)
    assert store.list() == []


def test_add_refuses_a_blank_platform_api_key(invoke: Invoke, store: ConnectionStore) -> None:
    result = invoke(*add_args("cid:secret", "--no-verify", platform_api_key="   "))

    assert_clean_failure(result, exit_code=2)
    assert store.list() == []


# --- list and show --------------------------------------------------------------------------


@pytest.fixture
def added(invoke: Invoke, fake_halaxy: FakeHalaxy, halaxy_base: str) -> dict[str, Any]:
    """A connection added through the CLI (signing on), with every secret it holds."""
    key = fake_halaxy.add_key()
    platform_key = "pt-key-" + secrets.token_hex(12)
    practitioner_token = "pt-tok-" + secrets.token_hex(8)
    result = invoke(
        *add_args(
            key,
            "--halaxy-base-url",
            halaxy_base,
            "--signing",
            "--practitioner",
            f"{practitioner_token}=PR-2002",
            "--json",
            platform_api_key=platform_key,
        )
    )
    # The person typed it; the setup values need not show it again.
    assert practitioner_token not in result.output
    details = ok_json(result)
    details["secrets"] = {
        "practitioner token": practitioner_token,
        "webhook secret": auth_secret(details),
        "program api key": details["program_api_key"],
        "signing secret": details["signing_secret"],
        "halaxy client secret": key.partition(":")[2],
        "platform api key": platform_key,
    }
    return details


def assert_no_secret(text: str, details: dict[str, Any]) -> None:
    for what, secret in details["secrets"].items():
        assert secret not in text, f"the {what} is in the output"


def test_list_and_show_print_no_secret(invoke: Invoke, added: dict[str, Any]) -> None:
    listed = invoke("list", "--json")
    shown = invoke("show", added["id"], "--json")
    listed_text = invoke("list")
    shown_text = invoke("show", added["id"])

    assert [row["id"] for row in ok_json(listed)["connections"]] == [added["id"]]
    summary = ok_json(shown)
    assert summary["id"] == added["id"]
    assert summary["name"] == "Clinic One"
    assert summary["signing"] is True
    token = added["secrets"]["practitioner token"]
    assert summary["practitioners"] == [{"token_ends_with": token[-4:], "role": "PR-2002"}]
    assert not set(summary) & {"halaxy_auth_header", "program_api_key", "signing_secret"}
    for result in (listed, shown, listed_text, shown_text):
        assert result.exit_code == 0, result.output
        assert_no_secret(result.output, added)
    assert added["id"] in listed_text.stdout
    assert added["id"] in shown_text.stdout


def test_show_reveal_prints_the_setup_secrets_again(invoke: Invoke, added: dict[str, Any]) -> None:
    revealed = ok_json(invoke("show", added["id"], "--reveal", "--json"))
    revealed_text = invoke("show", added["id"], "--reveal")

    for key in ("halaxy_auth_header", "program_api_key", "signing_secret", "webhook_urls"):
        assert revealed[key] == added[key]
    assert revealed_text.exit_code == 0
    for value in (added["halaxy_auth_header"], added["program_api_key"], added["signing_secret"]):
        assert value in revealed_text.stdout


def test_list_is_empty_at_first(invoke: Invoke) -> None:
    assert ok_json(invoke("list", "--json")) == {"connections": []}
    assert invoke("list").stdout.strip() == "(none)"


@pytest.mark.parametrize(
    "args",
    [["show"], ["show", "--reveal"], ["disable", "--yes"], ["rotate", "--webhook-secret"]],
    ids=["show", "show-reveal", "disable", "rotate"],
)
def test_unknown_connection_exits_4(invoke: Invoke, args: list[str]) -> None:
    result = invoke(args[0], "cn_doesnotexist", *args[1:])
    as_json = invoke(args[0], "cn_doesnotexist", *args[1:], "--json")

    assert_clean_failure(result, exit_code=4)
    assert "no connection cn_doesnotexist" in result.stderr
    assert_clean_failure(as_json, exit_code=4)
    assert orjson.loads(as_json.stderr)["error"] == "unknown_connection"


# --- disable --------------------------------------------------------------------------------


def test_disable_makes_webhooks_404_like_an_unknown_connection(
    invoke: Invoke, added: dict[str, Any], client: TestClient
) -> None:
    header = added["halaxy_auth_header"]
    assert post_webhook(client, added, header).status_code == 202

    disabled = ok_json(invoke("disable", added["id"], "--yes", "--json"))

    assert disabled["id"] == added["id"]
    assert disabled["enabled"] is False
    assert_no_secret(orjson.dumps(disabled).decode(), added)
    gone = post_webhook(client, added, header)
    unknown = post_webhook(client, added, header, connection_id="cn_doesnotexist")
    assert gone.status_code == 404
    assert unknown.status_code == 404
    assert gone.json() == unknown.json()
    assert gone.json()["error"] == "unknown_connection"
    [row] = ok_json(invoke("list", "--json"))["connections"]
    assert row["enabled"] is False
    text = invoke("disable", added["id"], "--yes")
    assert text.exit_code == 0
    assert "disabled" in text.stdout


# --- rotate ---------------------------------------------------------------------------------


def test_rotate_webhook_secret_keeps_the_old_one_for_the_grace_period(
    invoke: Invoke, added: dict[str, Any], client: TestClient, store: ConnectionStore
) -> None:
    old = added["halaxy_auth_header"]

    rotated = ok_json(invoke("rotate", added["id"], "--webhook-secret", "--json"))

    new = rotated["halaxy_auth_header"]
    assert new != old
    assert new.startswith("Bearer ")
    assert rotated["program_api_key"] == added["program_api_key"]
    assert rotated["signing_secret"] == added["signing_secret"]
    assert post_webhook(client, added, new).status_code == 202
    assert post_webhook(client, added, old).status_code == 202
    stored = store.get(added["id"])
    assert stored is not None
    assert stored.retired_webhook_secret is not None


def test_rotate_webhook_secret_without_grace_refuses_the_old_one(
    invoke: Invoke, added: dict[str, Any], client: TestClient
) -> None:
    old = added["halaxy_auth_header"]

    rotated = ok_json(
        invoke("rotate", added["id"], "--webhook-secret", "--grace-hours", "0", "--json")
    )

    assert post_webhook(client, added, rotated["halaxy_auth_header"]).status_code == 202
    refused = post_webhook(client, added, old)
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"


def test_rotate_program_key_and_signing_secret(invoke: Invoke, added: dict[str, Any]) -> None:
    rotated = ok_json(invoke("rotate", added["id"], "--program-key", "--signing-secret", "--json"))

    assert rotated["program_api_key"] != added["program_api_key"]
    assert rotated["signing_secret"] != added["signing_secret"]
    assert rotated["signing_secret"].startswith("whsec_")
    assert rotated["halaxy_auth_header"] == added["halaxy_auth_header"]


def test_rotate_with_nothing_to_rotate_is_an_error(
    invoke: Invoke, added: dict[str, Any], store: ConnectionStore
) -> None:
    before = store.get(added["id"])

    result = invoke("rotate", added["id"])

    assert_clean_failure(result, exit_code=2)
    assert "say what to rotate" in result.stderr
    assert store.get(added["id"]) == before


def test_rotate_halaxy_key_refused_leaves_the_connection_unchanged(
    invoke: Invoke, added: dict[str, Any], store: ConnectionStore, fake_halaxy: FakeHalaxy
) -> None:
    before = store.get(added["id"])
    client_id = fake_halaxy.add_key().partition(":")[0]
    fake_halaxy.requests.clear()

    result = invoke("rotate", added["id"], f"--halaxy-key={client_id}:wrong", "--json")

    assert_clean_failure(result, exit_code=2)
    error = orjson.loads(result.stderr)
    assert error["error"] == "invalid"
    assert "new Halaxy key could not be verified" in error["detail"]
    assert len(fake_halaxy.requests) == 1
    assert store.get(added["id"]) == before


@pytest.mark.parametrize("withheld", WITHHELD.values(), ids=WITHHELD.keys())
def test_rotate_to_a_halaxy_key_lacking_permissions_leaves_the_connection_unchanged(
    invoke: Invoke,
    added: dict[str, Any],
    store: ConnectionStore,
    fake_halaxy: FakeHalaxy,
    withheld: frozenset[str],
) -> None:
    before = store.get(added["id"])
    audited = audit_of(store).entries()

    result = invoke(
        "rotate", added["id"], f"--halaxy-key={fake_halaxy.add_key(withheld=withheld)}", "--json"
    )

    assert_clean_failure(result, exit_code=2)
    assert_lacks(orjson.loads(result.stderr)["detail"], withheld)
    assert store.get(added["id"]) == before
    assert audit_of(store).entries() == audited
    assert fake_halaxy.notes == []


def test_rotate_halaxy_key_accepted_is_stored(
    invoke: Invoke, added: dict[str, Any], store: ConnectionStore, fake_halaxy: FakeHalaxy
) -> None:
    new_key = fake_halaxy.add_key()
    fake_halaxy.requests.clear()

    rotated = ok_json(invoke("rotate", added["id"], f"--halaxy-key={new_key}", "--json"))

    client_id, _, client_secret = new_key.partition(":")
    assert rotated["halaxy_client_id"] == client_id
    assert client_secret not in orjson.dumps(rotated).decode()
    stored = store.get(added["id"])
    assert stored is not None
    assert stored.halaxy_client_secret.get_secret_value() == client_secret
    assert_key_checked(fake_halaxy, USER_AGENT)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--platform-api-key=   ", "platform_api_key"),
        # This connection was added without a PMS name: it sends no PMS key.
        ("--platform-pms-key=pms-key-1", "without a PMS name"),
    ],
)
def test_rotate_refuses_a_platform_key_it_cannot_use(
    invoke: Invoke, added: dict[str, Any], store: ConnectionStore, option: str, message: str
) -> None:
    before = store.get(added["id"])

    result = invoke("rotate", added["id"], option)

    assert_clean_failure(result, exit_code=2)
    assert message in result.stderr
    assert store.get(added["id"]) == before


def strong_pms_key() -> str:
    """As Physitrack takes one: 30+ characters, upper and lower case and digits."""
    return "Pms" + secrets.token_hex(16) + "X9"


def test_a_practitioner_without_pt_direct_gets_the_pms_headers_and_the_key_is_a_secret(
    invoke: Invoke,
    fake_halaxy: FakeHalaxy,
    store: ConnectionStore,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    pms_key = strong_pms_key()
    result = invoke(
        *add_args(
            fake_halaxy.add_key(),
            "--platform-pms-name",
            "halaxy_bridge",
            "--platform-pms-key",
            pms_key,
            "--no-verify",
            "--json",
        )
    )
    details = ok_json(result)
    assert details["platform_pms_name"] == "halaxy_bridge"
    assert pms_key not in result.output
    stored = store.get(details["id"])
    assert stored is not None
    assert stored.platform_pms_key is not None
    assert stored.platform_pms_key.get_secret_value() == pms_key
    assert pms_key.encode() not in b"\n".join(
        stored_values(redis_server_client, settings.redis_namespace)
    )
    new_key = strong_pms_key()
    rotated = invoke("rotate", details["id"], f"--platform-pms-key={new_key}", "--json")
    assert new_key not in rotated.output
    assert ok_json(rotated)["platform_pms_name"] == "halaxy_bridge"
    stored = store.get(details["id"])
    assert stored is not None
    assert stored.platform_pms_key is not None
    assert stored.platform_pms_key.get_secret_value() == new_key


# --- secrets at rest ------------------------------------------------------------------------


def test_no_secret_is_stored_in_clear(
    invoke: Invoke,
    added: dict[str, Any],
    client: TestClient,
    redis_server_client: redis.Redis,
    settings: Settings,
) -> None:
    # A rotation adds a retired secret, and a webhook adds queue and dedup keys: scan them all.
    rotated = ok_json(invoke("rotate", added["id"], "--webhook-secret", "--json"))
    assert post_webhook(client, added, rotated["halaxy_auth_header"]).status_code == 202
    all_secrets = {**added["secrets"], "rotated webhook secret": auth_secret(rotated)}

    values = stored_values(redis_server_client, settings.redis_namespace)

    dump = b"\n".join(values)
    assert added["id"].encode() in dump  # the scan did read the connection
    assert added["halaxy_client_id"].encode() in dump
    for what, secret in all_secrets.items():
        assert secret.encode() not in dump, f"the {what} is stored in clear"
        assert base64.b64encode(secret.encode()) not in dump, f"the {what} is only base64ed"


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_bad_secret_key_exits_2_naming_the_variable(invoke: Invoke, as_json: bool) -> None:
    result = invoke(
        "list", *(["--json"] if as_json else []), env={"BRIDGE_SECRET_KEY": "not-a-key"}
    )

    assert_clean_failure(result, exit_code=2)
    assert "BRIDGE_SECRET_KEY" in result.stderr
    assert "not-a-key" not in result.stderr
    if as_json:
        assert orjson.loads(result.stderr)["error"] == "config"


@pytest.mark.parametrize(
    "args",
    [["list"], ["show", "cn_whatever"], add_args("cid:secret", "--no-verify")],
    ids=["list", "show", "add"],
)
def test_redis_unreachable_exits_3(invoke: Invoke, args: list[str]) -> None:
    started = time.monotonic()

    result = invoke(*args, env={"REDIS_URL": "redis://127.0.0.1:1/0"})

    assert_clean_failure(result, exit_code=3)
    assert "Redis is unreachable" in result.stderr
    assert "REDIS_URL" in result.stderr
    assert time.monotonic() - started < 10

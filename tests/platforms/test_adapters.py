"""The platform adapters against the sandbox fakes, in-process, and the REST contract file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.sandbox.halaxy import patient_resource
from services.sandbox.physitrack import FakePhysitrack
from services.sandbox.rest_platform import FakeRestPlatform
from shared.connections.model import Connection
from shared.infra.clock import utcnow
from shared.infra.errors import Permanent, RateLimited, Transient
from shared.patients.mapping import map_patient
from shared.platforms import GenderRefused, PatientDetails, PlatformKind
from shared.platforms.physitrack import Physitrack
from shared.platforms.rest import RestPlatform

CONTRACT = Path(__file__).parent.parent.parent / "docs" / "rest-platform.yaml"


def details(**changes: Any) -> PatientDetails:
    return map_patient(patient_resource("1001", **changes), utcnow())


@pytest.fixture
def physitrack() -> FakePhysitrack:
    return FakePhysitrack()


@pytest.fixture
def physitrack_adapter(physitrack: FakePhysitrack, connection: Connection) -> Iterator[Physitrack]:
    conn = connection.model_copy(
        update={
            "platform_base_url": "https://au.physitrack.com/api/v2",
            "platform_api_key": SecretStr(physitrack.add_key()),
        }
    )
    with TestClient(physitrack.app()) as http:
        yield Physitrack(conn.platform_account, http, "ua (test@example.com)")


def test_physitrack_create_then_update_in_place(
    physitrack_adapter: Physitrack, physitrack: FakePhysitrack
) -> None:
    created = physitrack_adapter.upsert_patient(details(), None)
    assert created.created
    updated = physitrack_adapter.upsert_patient(details(family="Smith"), created.platform_id)
    assert (updated.platform_id, updated.created) == (created.platform_id, False)
    assert physitrack.clients[int(created.platform_id)]["last_name"] == "Smith"
    assert len(physitrack.clients) == 1


def test_physitrack_client_deleted_since_is_created_again(
    physitrack_adapter: Physitrack, physitrack: FakePhysitrack
) -> None:
    first = physitrack_adapter.upsert_patient(details(), None)
    physitrack.clients.clear()
    again = physitrack_adapter.upsert_patient(details(), first.platform_id)
    assert again.created
    assert again.platform_id != first.platform_id


def test_physitrack_find_by_external_id_pages_through_clients(
    physitrack_adapter: Physitrack, physitrack: FakePhysitrack
) -> None:
    [key] = physitrack.api_keys
    for number in range(450):
        physitrack.add_client(key, external_id=f"x{number}")
    made = physitrack_adapter.upsert_patient(details(), None)
    assert physitrack_adapter.find_patient("1001") == made.platform_id
    assert physitrack_adapter.find_patient("nobody") is None
    pages = [r for r in physitrack.requests if r["method"] == "GET"]
    assert len(pages) == 3 + 3  # 451 clients: pages of 200, 200 and 51, twice


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (503, Transient, "answered 503"),
        (429, RateLimited, "rate limit"),
        (422, Permanent, "refused the patient"),
        (501, Permanent, "not implemented"),
    ],
)
def test_physitrack_errors(
    physitrack_adapter: Physitrack,
    physitrack: FakePhysitrack,
    fault: int,
    error: type[Exception],
    text: str,
) -> None:
    physitrack.faults.script = [fault]
    with pytest.raises(error, match=text):
        physitrack_adapter.upsert_patient(details(), None)


def test_physitrack_validation_messages_and_bad_key(
    physitrack_adapter: Physitrack, physitrack: FakePhysitrack
) -> None:
    with pytest.raises(Permanent, match="gender is missing"):
        physitrack_adapter.upsert_patient(details(gender="other"), None)
    physitrack.api_keys.clear()
    with pytest.raises(Permanent, match="check the connection's API key"):
        physitrack_adapter.upsert_patient(details(), None)
    assert physitrack.clients == {}


@pytest.mark.parametrize(
    ("gender", "sent"), [("male", "m"), ("female", "f"), ("other", None), ("unknown", None)]
)
def test_physitrack_sends_only_the_sex_the_record_says(
    physitrack_adapter: Physitrack, gender: str, sent: str | None
) -> None:
    """therapy-platforms.md 1.4: `m` or `f` only (2018); nothing rather than a wrong one."""
    assert physitrack_adapter.payload(details(gender=gender)).get("gender") == sent


@pytest.mark.parametrize(
    ("errors", "refusal"),
    [
        (["gender is missing"], GenderRefused),
        (["Gender must be one of: m, f", "Email is invalid"], GenderRefused),
        (["Email is invalid"], Permanent),
    ],
)
def test_physitrack_refusing_the_gender_is_its_own_refusal(
    physitrack_adapter: Physitrack,
    physitrack: FakePhysitrack,
    errors: list[str],
    refusal: type[Exception],
) -> None:
    physitrack.reject_with = errors
    with pytest.raises(Permanent, match=errors[0]) as refused:
        physitrack_adapter.upsert_patient(details(), None)
    assert type(refused.value) is refusal


def test_physitrack_refuses_a_patient_without_gender_for_its_gender(
    physitrack_adapter: Physitrack,
) -> None:
    with pytest.raises(GenderRefused, match="gender is missing"):
        physitrack_adapter.upsert_patient(details(gender="other"), None)


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        (("halaxy_bridge", "pms-key-Case-Sensitive"), True),
        (("halaxy_bridge", "pms-key-case-sensitive"), False),
        (("cliniko", "pms-key-Case-Sensitive"), False),
        (None, False),
    ],
)
def test_physitrack_practitioner_without_pt_direct_needs_the_pms_headers(
    physitrack: FakePhysitrack,
    connection: Connection,
    sent: tuple[str, str] | None,
    accepted: bool,
) -> None:
    """therapy-platforms.md 1.3, mode 2: X-Api-Key, X-Api-PMS-Name and X-Api-PMS-Key."""
    key = physitrack.add_key(pms=("halaxy_bridge", "pms-key-Case-Sensitive"))
    conn = connection.model_copy(
        update={
            "platform_base_url": "https://au.physitrack.com/api/v2",
            "platform_api_key": SecretStr(key),
            "platform_pms_name": sent and sent[0],
            "platform_pms_key": sent and SecretStr(sent[1]),
        }
    )
    with TestClient(physitrack.app()) as http:
        adapter = Physitrack(conn.platform_account, http, "ua (test@example.com)")
        if accepted:
            assert adapter.upsert_patient(details(), None).created
        else:
            with pytest.raises(Permanent, match="check the connection's API key"):
                adapter.upsert_patient(details(), None)
    assert len(physitrack.clients) == (1 if accepted else 0)


def rest_connection(connection: Connection, key: str) -> Connection:
    return connection.model_copy(
        update={
            "platform": PlatformKind.REST,
            "platform_base_url": "https://platform.example.com",
            "platform_api_key": SecretStr(key),
        }
    )


def test_rest_adapter_payload_matches_the_published_contract(connection: Connection) -> None:
    contract = yaml.safe_load(CONTRACT.read_text())
    schema = {**contract["components"]["schemas"]["Patient"], "additionalProperties": False}
    with TestClient(FakeRestPlatform().app()) as http:
        adapter = RestPlatform(rest_connection(connection, "k").platform_account, http, "ua")
        for example in (details(), details(gender="Non-binary", email=None, mobile=None)):
            jsonschema.validate(adapter.payload(example), schema)
    assert set(contract["paths"]) == {"/patients/{external_id}"}
    assert set(contract["paths"]["/patients/{external_id}"]) == {"put"}


def test_rest_upsert_is_idempotent(connection: Connection) -> None:
    fake = FakeRestPlatform()
    with TestClient(fake.app()) as http:
        adapter = RestPlatform(
            rest_connection(connection, fake.add_key()).platform_account, http, "ua"
        )
        first = adapter.upsert_patient(details(), None)
        second = adapter.upsert_patient(details(), None)
        fake.api_keys.clear()
        with pytest.raises(Permanent, match="check the connection's API key"):
            adapter.upsert_patient(details(), None)
    assert first.created
    assert not second.created
    assert first.platform_id == second.platform_id
    assert list(fake.patients) == ["1001"]

"""What a worker process keeps per connection, and how a change to the connection applies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from services.workers.runtime import WorkerRuntime
from shared.config import Settings
from shared.connection_store import ConnectionStore
from shared.connections import Connection, utcnow
from shared.errors import ConnectionNotFound
from shared.onboarding import disable


@pytest.fixture
def runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    built = WorkerRuntime(settings, redis.Redis.from_url(settings.redis_url))
    yield built
    built.close()


def test_services_are_reused_until_the_stored_connection_changes(
    runtime: WorkerRuntime, store: ConnectionStore, connection: Connection
) -> None:
    first = runtime.services(connection.id)
    assert runtime.services(connection.id) is first
    rotated = connection.model_copy(
        update={"platform_api_key": SecretStr("pt-key-new"), "updated_at": utcnow()}
    )
    store.save(rotated)
    second = runtime.services(connection.id)  # the next job uses the new key at once
    assert second is not first
    assert second.connection.platform_api_key.get_secret_value() == "pt-key-new"
    assert runtime.services(connection.id) is second
    store.save(disable(rotated, utcnow()))
    with pytest.raises(ConnectionNotFound):
        runtime.services(connection.id)

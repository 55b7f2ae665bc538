"""The API fixtures of tests/fhir, shared here, and an API whose hub publishes to Redis."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.fhir.conftest import Api, api, app_client, token_for

__all__ = ["api", "app_client", "broker_api"]


@pytest.fixture
def broker_api(broker_hub: Hub) -> Iterator[Api]:
    """The app of ``broker_hub`` (PostgreSQL, jobs published to Redis for a real worker)."""
    with TestClient(create_app(broker_hub)) as client:
        yield Api(client, token_for(broker_hub))

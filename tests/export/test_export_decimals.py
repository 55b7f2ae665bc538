"""Bulk export NDJSON keeps each decimal's literal, on both databases: the stored text as it
is, and a type the hub filters on the way out (Subscription) read and written again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.conftest import make_settings
from tests.export.bulk_client import BulkClient
from tests.fhir.conftest import Api, token_for
from tests.fhir.test_exact_decimals import LITERALS, as_text, component_literals, observation_text
from tests.receiver import Receiver


@pytest.fixture
def export_hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    instance = Hub.from_settings(
        make_settings(tmp_path, database_url, export_poll_seconds=1), migrate=True
    )
    yield instance
    instance.close()


def test_export_lines_keep_the_literals(export_hub: Hub, receiver: Receiver) -> None:
    with TestClient(create_app(export_hub)) as client:
        api = Api(client, token_for(export_hub))
        sent = observation_text("Patient/p1")
        assert api.post("/Observation", raw=sent.encode()).status_code == 201
        subscription = (
            '{"resourceType":"Subscription","status":"requested","reason":"r",'
            '"criteria":"Task?owner=Organization/x",'
            '"extension":[{"url":"urn:x:weight","valueDecimal":0.50}],'
            f'"channel":{{"type":"rest-hook","endpoint":"{receiver.url()}"}}}}'
        )
        assert api.post("/Subscription", raw=subscription.encode()).status_code == 201
        operator = token_for(export_hub, "system/*.cruds", "export-operator", role="operator")
        bulk = BulkClient(client, operator)
        export = bulk.run("/fhir/$export", {"_type": "Observation,Subscription"})
        lines: dict[str, list[bytes]] = {}
        for item in export.manifest["output"]:
            response = client.get(item["url"], headers={"Authorization": f"Bearer {operator}"})
            assert response.status_code == 200, response.text
            lines[item["type"]] = [line for line in response.content.splitlines() if line]
    (observation,) = lines["Observation"]
    assert component_literals(as_text(observation)) == LITERALS
    assert as_text(observation)["valueQuantity"]["value"] == "1.50"
    (filtered,) = lines["Subscription"]
    assert as_text(filtered)["extension"][0]["valueDecimal"] == "0.50"

"""What reaches the logs when a request fails inside the hub: the access line (status 500, the
request id the caller got back) and the error's types and stack, never the values it carried
(a CCCD in a SQL statement's parameters, a name in an exception's message)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from emr_hub.hub import Hub
from emr_hub.logs import JsonFormatter
from emr_hub.main import create_app
from tests.fhir.conftest import token_for

CCCD = "027185000123"
NAME = "Nguyễn Thị Lan"


@pytest.fixture
def failing_client(hub: Hub) -> Iterator[TestClient]:
    """The hub's app with one more route, first in line, that fails in the database with a
    CCCD among the statement's values, then again with a name in the message."""
    app = create_app(hub)

    def fail() -> None:
        try:
            with hub.db.snapshot() as session:
                session.execute(text("SELECT * FROM no_such_table WHERE x = :cccd"), {"cccd": CCCD})
        except Exception as error:
            raise RuntimeError(f"could not find {NAME}") from error

    app.add_api_route("/fhir/Patient/$fail-for-test", fail, methods=["GET"])
    app.router.routes.insert(0, app.router.routes.pop())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_failure_logs_its_request_id_and_stack_but_no_personal_data(
    hub: Hub, failing_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = token_for(hub)
    with caplog.at_level(logging.INFO):
        response = failing_client.get(
            "/fhir/Patient/$fail-for-test", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    lines = [orjson.loads(JsonFormatter().format(record)) for record in caplog.records]
    text_of_logs = "\n".join(orjson.dumps(line).decode() for line in lines)
    assert CCCD not in text_of_logs and NAME not in text_of_logs
    (access,) = [line for line in lines if line["logger"] == "emr_hub.access"]
    assert (access["status"], access["request_id"]) == (500, request_id)
    (error,) = [line for line in lines if line["message"] == "unhandled error"]
    assert error["request_id"] == request_id
    assert "RuntimeError (message not logged)" in error["error"]
    assert "ProgrammingError" in error["error"] or "OperationalError" in error["error"]
    assert "def fail" not in error["error"] and "in fail" in error["error"]  # the stack is there

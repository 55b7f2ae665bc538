"""``GET [type]/[id]`` on the event loop (PostgreSQL) answers exactly what the framework's
route answers, and takes only the paths that route would have taken."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from emr_hub.fhir.direct_reads import DirectRead
from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.conftest import make_settings
from tests.fhir.conftest import Api, token_for

KEPT_HEADERS = ("content-type", "etag", "last-modified", "location", "www-authenticate")


def answer(client: TestClient, path: str, token: str | None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = client.get(f"/fhir{path}", headers=headers)
    kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return response.status_code, response.content, kept


def test_the_same_answers_as_the_framework_route(hub: Hub, app_client: TestClient) -> None:
    mine = token_for(hub)
    other = token_for(hub, client_id="other-hospital")
    narrow = token_for(hub, "system/Observation.rs")
    api = Api(app_client, mine)
    created = api.post(
        "/Patient", {"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-02"}
    )
    assert created.status_code == 201, created.text
    patient = created.json()["id"]
    assert (
        api.put(
            f"/Patient/{patient}",
            {
                "resourceType": "Patient",
                "id": patient,
                "gender": "female",
                "birthDate": "1990-01-03",
            },
        ).status_code
        == 200
    )
    gone = api.post("/Patient", {"resourceType": "Patient", "gender": "male"}).json()["id"]
    assert api.delete(f"/Patient/{gone}").status_code == 204
    cases = [
        (f"/Patient/{patient}", mine),
        (f"/Patient/{patient}?_summary=true", mine),
        (f"/Patient/{patient}?_elements=gender", mine),
        (f"/Patient/{patient}?_pretty=true", mine),
        (f"/Patient/{patient}", other),  # another hospital's patient: the policy hides it
        (f"/Patient/{patient}", narrow),  # no scope to read Patients
        (f"/Patient/{patient}", None),
        (f"/Patient/{patient}", "not-a-token"),
        (f"/Patient/{gone}", mine),
        ("/Patient/never-stored", mine),
        ("/Patient/a.b-c", mine),
        ("/Observation/never-stored", narrow),
        (f"/Patient/{patient}/_history/1", mine),
        (f"/Patient/{patient}/_history/2?_elements=birthDate", mine),
        (f"/Patient/{patient}/_history/3", mine),
        (f"/Patient/{patient}/_history/x", mine),
        (f"/Patient/{patient}/_history/1", other),
        (f"/Patient/{patient}/_history/1", narrow),
        (f"/Patient/{gone}/_history/2", mine),  # the deletion
        (f"/Patient/{gone}/_history/1", mine),
    ]
    direct = [answer(app_client, path, token) for path, token in cases]
    state = app_client.app.state  # type: ignore[attr-defined]
    held, state.async_db = (
        state.async_db,
        None,
    )  # no event-loop connections: the framework route serves
    try:
        framework = [answer(app_client, path, token) for path, token in cases]
    finally:
        state.async_db = held
    for (path, _), mine_answer, theirs in zip(cases, direct, framework, strict=True):
        assert mine_answer == theirs, path
    statuses = [status for status, _, _ in direct]
    assert statuses[:12] == [200, 200, 200, 200, 404, 403, 401, 401, 410, 404, 404, 404]
    assert statuses[12:] == [200, 200, 404, 404, 404, 403, 410, 200]


def test_reads_on_postgres_take_no_connection_from_the_pool(
    tmp_path: Path, postgres_url: str
) -> None:
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    checkouts: list[str] = []

    def thread() -> str:
        return threading.current_thread().name

    try:
        with TestClient(create_app(hub)) as client:
            api = Api(client, token_for(hub))
            patient = api.post("/Patient", {"resourceType": "Patient"}).json()["id"]
            assert api.get(f"/Patient/{patient}").status_code == 200  # the token is kept now
            event.listen(hub.db.engine, "checkout", lambda *args: checkouts.append(thread()))
            for _ in range(5):
                assert api.get(f"/Patient/{patient}").status_code == 200
                assert api.get(f"/Patient/{patient}/_history/1").status_code == 200
    finally:
        hub.close()
    # Neither the read nor its audit record (the event loop's group writer) took one. (A
    # refused read would: its audit record looks up the patients of what it aimed at.)
    assert checkouts == []


@pytest.mark.parametrize(
    ("path", "taken"),
    [
        ("/fhir/Patient/abc", True),
        ("/fhir/Observation/a.b-1", True),
        ("/fhir/AuditEvent/abc", False),  # the audit's own router serves it
        ("/fhir/Patient/$export", False),  # not an id: an operation
        ("/fhir/Patient/_history", False),
        ("/fhir/Patient/abc/_history", False),  # the instance history: the framework's
        ("/fhir/Patient/abc/_history/3", True),
        ("/fhir/Patient/abc/_history/", False),
        ("/fhir/Patient/abc/_history/3/x", False),
        ("/fhir/Patient/abc/$everything", False),
        ("/fhir/NotAType/abc", False),
        ("/fhir/Patient/" + "x" * 65, False),
        ("/fhir/Patient/", False),
        ("/fhir/.well-known/smart-configuration", False),
    ],
)
def test_only_the_reads_paths_are_taken(tmp_path: Path, path: str, taken: bool) -> None:
    app = create_app(settings=make_settings(tmp_path))
    app.state.async_db = object()  # as after startup on PostgreSQL
    route = app.router.routes[0]
    assert isinstance(route, DirectRead)
    scope = {"type": "http", "method": "GET", "path": path, "app": app}
    assert (route.matches(scope)[0].name == "FULL") is taken
    assert route.matches({**scope, "method": "POST"})[0].name == "NONE"


def test_urls_are_still_built_for_the_routes_behind_it(tmp_path: Path) -> None:
    app = create_app(settings=make_settings(tmp_path))
    assert isinstance(app.router.routes[0], DirectRead)
    assert app.url_path_for("healthz") == "/healthz"

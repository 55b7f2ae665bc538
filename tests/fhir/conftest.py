"""API fixtures: the real app over HTTP semantics (httpx through ASGI), on both databases."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.audit.log import EVENT
from emr_hub.security.audit.middleware import audited
from emr_hub.security.clients import ensure_client, get_client
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token
from storage.tables import ApiClient

FHIR_JSON = "application/fhir+json"


def token_for(
    hub: Hub,
    scopes: str = "system/*.cruds",
    client_id: str = "test-hospital",
    *,
    role: str = "hospital",
    break_glass: bool = False,
) -> str:
    """A real access token for a client of ``Organization/<client_id>`` with ``scopes``: a
    hospital's client (the access policy applies), or with ``role="operator"`` the operator's."""
    with hub.db.transaction() as session:
        ensure_client(
            session, client_id, f"Organization/{client_id}", ScopeSet.parse("system/*.cruds")
        )
        registered = session.get(ApiClient, client_id)
        assert registered is not None
        registered.role, registered.break_glass = role, break_glass
    with hub.db.transaction() as session:
        client = get_client(session, client_id)
    assert client is not None
    token, _ = issue_access_token(hub, client, ScopeSet.parse(scopes))
    return token


class Api:
    """A FHIR client for tests: JSON bodies in, the real app's responses out."""

    def __init__(self, client: TestClient, token: str | None) -> None:
        self.client = client
        self.token = token

    def headers(
        self, extra: dict[str, str] | None = None, token: str | None = None
    ) -> dict[str, str]:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        use = token if token is not None else self.token
        if use:
            headers["Authorization"] = f"Bearer {use}"
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        content = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        return self.client.request(
            method,
            "/fhir" + path,
            content=content,
            headers=self.headers(headers, token),
            params=params,
        )

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, operations: Any, **kw: Any) -> Any:
        headers = {"Content-Type": "application/json-patch+json", **kw.pop("headers", {})}
        return self.request("PATCH", path, operations, headers=headers, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


class AuditedRequests:
    """Remembers the request id the hub echoed on every answer it must have audited, so a
    test's end can check that each left exactly one audit record (the interaction's; a
    break-the-glass opening adds its alert). A 503 is the answer withheld for want of one."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        if audited(response.request.url.path) and response.status_code != 503:
            self.request_ids.append(response.headers["x-request-id"])

    def check(self, hub: Hub) -> None:
        if not hub.settings.audit_enabled:
            return
        with hub.db.snapshot() as session:
            rows = session.execute(
                select(EVENT.c.request_id, EVENT.c.subtype).where(EVENT.c.subtype != "110127")
            ).all()
        counted = Counter(request_id for request_id, _ in rows)
        missing = [r for r in self.request_ids if counted[r] == 0]
        twice = [r for r in self.request_ids if counted[r] > 1]
        assert not missing, f"{len(missing)} audited requests left no audit record"
        assert not twice, f"{len(twice)} requests left more than one audit record"


@pytest.fixture
def app_client(hub: Hub, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """The app over HTTP semantics; every request it sends must leave one audit record
    (unless the test marks itself ``audit_tampered``: it removes records on purpose)."""
    audited_requests = AuditedRequests()
    with TestClient(create_app(hub)) as client:
        client.event_hooks = {"request": [], "response": [audited_requests]}
        yield client
    if request.node.get_closest_marker("audit_tampered") is None:
        audited_requests.check(hub)


@pytest.fixture
def api(hub: Hub, app_client: TestClient) -> Api:
    """An authorised client with system/*.cruds, on SQLite and PostgreSQL."""
    return Api(app_client, token_for(hub))


def outcome_issue(response: Any) -> dict[str, Any]:
    """The first issue of an OperationOutcome response (asserting it is one)."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["content-type"].startswith(FHIR_JSON)
    return body["issue"][0]

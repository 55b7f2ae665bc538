"""Security test support: stored Organizations and Patients, clients' key pairs and the
assertions they sign, a real HTTP server publishing a JWK Set, the real app."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.assertions import ASSERTION_TYPE
from emr_hub.security.clients import ensure_client
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token
from storage.tables import ApiClient
from tests.conftest import free_port

ORGANIZATION_ID = "bv-bach-mai"
ORGANIZATION = f"Organization/{ORGANIZATION_ID}"
CCCD_SYSTEM = "http://fhir.hl7.org.vn/core/sid/cccd"
OPERATOR_CLIENT = "test-operator"


def store_organization(hub: Hub, organization_id: str = ORGANIZATION_ID) -> str:
    body = {"resourceType": "Organization", "id": organization_id, "name": "Bệnh viện thử"}
    operator_write(hub, "PUT", f"/Organization/{organization_id}", body)
    return f"Organization/{organization_id}"


def store_patient(hub: Hub, patient_id: str, cccd: str, birth_date: str) -> None:
    body = {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": CCCD_SYSTEM, "value": cccd}],
        "birthDate": birth_date,
    }
    operator_write(hub, "PUT", f"/Patient/{patient_id}", body)


def delete_resource(hub: Hub, resource_type: str, resource_id: str) -> None:
    operator_write(hub, "DELETE", f"/{resource_type}/{resource_id}")


def operator_write(hub: Hub, method: str, path: str, body: Any = None) -> None:
    """Write through the real API as an operator's client (which sees and changes everything)."""
    with hub.db.transaction() as session:
        ensure_client(
            session, OPERATOR_CLIENT, "Organization/test-operator", ScopeSet.parse("system/*.cruds")
        )
        client = session.get(ApiClient, OPERATOR_CLIENT)
        assert client is not None
        client.role = "operator"
    with hub.db.transaction() as session:
        client = session.get(ApiClient, OPERATOR_CLIENT)
    assert client is not None
    token, _ = issue_access_token(hub, client, ScopeSet.parse("system/*.cruds"))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    content = json.dumps(body).encode() if body is not None else None
    with TestClient(create_app(hub)) as app:
        response = app.request(method, f"/fhir{path}", content=content, headers=headers)
    assert response.status_code in (200, 201, 204), response.text


def with_settings(hub: Hub, **changes: Any) -> Hub:
    """Another process of the same hub (same database), with some settings changed."""
    return Hub(settings=hub.settings.model_copy(update=changes), db=hub.db)


@pytest.fixture
def organization(hub: Hub) -> str:
    return store_organization(hub)


@pytest.fixture
def app(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub)) as client:
        yield client


# --- clients' keys and assertions ---------------------------------------------------------


@dataclass
class ClientKey:
    """A client's key pair and the algorithm it signs assertions with."""

    algorithm: str
    kid: str = field(default_factory=lambda: f"key-{uuid.uuid4().hex[:8]}")
    private: ECKey | RSAKey = field(init=False)

    def __post_init__(self) -> None:
        if self.algorithm == "RS384":
            self.private = RSAKey.generate_key(2048)
        else:
            self.private = ECKey.generate_key("P-384" if self.algorithm == "ES384" else "P-256")

    def public_jwk(self) -> dict[str, Any]:
        return {**self.private.as_dict(private=False), "kid": self.kid}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        full = {"alg": self.algorithm, "typ": "JWT", "kid": self.kid, **header}
        full = {name: value for name, value in full.items() if value is not None}
        return jwt.encode(full, claims, self.private, algorithms=[self.algorithm])


def jwks_of(*keys: ClientKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


def assertion_claims(hub: Hub, client_id: str, **changes: Any) -> dict[str, Any]:
    """Valid claims of an assertion by ``client_id`` for ``hub``; a change of None drops
    the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": hub.settings.base_url.rstrip("/") + "/auth/token",
        "exp": now + 240,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def assertion_form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


def assert_oauth_error(response: Any, status: int, error: str, says: str = "") -> str:
    """The error description, after checking the OAuth error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert response.headers["cache-control"] == "no-store"
    description = str(body.get("error_description", ""))
    assert says in description, description
    return description


# --- a client's JWKS URL ------------------------------------------------------------------


class JwksServer:
    """A real HTTP server publishing a JWK Set (what :attr:`body` holds) at ``/jwks.json``;
    it counts the requests it answered."""

    def __init__(self) -> None:
        self.body: bytes = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def publish(self, jwks: dict[str, Any]) -> None:
        self.body = json.dumps(jwks).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                found = self.path == "/jwks.json"
                status = server.status if found else 404
                body = server.body if found else b"not here"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()

"""The token endpoint, discovery documents and a protected route, over HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet

from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.security import PrincipalDep, ScopeSet
from emr_hub.security.clients import (
    Registration,
    get_client,
    register_client,
    set_client_active,
)
from emr_hub.security.tokens import issue_access_token
from storage.db import Database
from tests.security.conftest import store_organization

CLIENT_ID = "his-bach-mai"
ORGANIZATION = "Organization/bv-bach-mai"
REGISTERED = "system/Observation.cruds system/Patient.rs"


def build_app(hub: Hub) -> FastAPI:
    from emr_hub.security.routes import router

    app = FastAPI()
    app.state.hub = hub
    app.include_router(router)

    @app.exception_handler(FhirError)
    async def fhir_error(_request: Request, err: FhirError) -> JSONResponse:
        return JSONResponse(err.outcome(), status_code=err.status, headers=err.headers)

    @app.get("/fhir/Patient/probe")
    def probe(principal: PrincipalDep) -> dict[str, Any]:
        principal.require("Patient", "r")
        return {"client": principal.client_id, "organization": principal.organization}

    return app


@pytest.fixture
def api(hub: Hub) -> Iterator[TestClient]:
    with TestClient(build_app(hub)) as client:
        yield client


def add_secret_client(hub: Hub, client_id: str = CLIENT_ID) -> str:
    with hub.db.transaction() as session:
        registration = Registration(ORGANIZATION, ScopeSet.parse(REGISTERED))
        secret = register_client(session, client_id, registration)
    assert secret is not None
    return secret


@pytest.fixture
def secret(hub: Hub) -> str:
    store_organization(hub, ORGANIZATION.partition("/")[2])
    return add_secret_client(hub)


def request_token(api: TestClient, secret: str, **form: str) -> Any:
    data = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    data.update(form)
    return api.post("/auth/token", data={k: v for k, v in data.items() if v != "-"})


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert response.headers["cache-control"] == "no-store"
    return body  # type: ignore[no-any-return]


def assert_outcome(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    return body["issue"][0]["diagnostics"]  # type: ignore[no-any-return]


# --- token endpoint --------------------------------------------------------------------------


def test_token_with_client_secret_post(api: TestClient, secret: str, hub: Hub) -> None:
    response = request_token(api, secret)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == hub.settings.token_ttl_seconds
    assert body["scope"] == REGISTERED

    probe = api.get("/fhir/Patient/probe", headers=bearer(body["access_token"]))
    assert probe.status_code == 200
    assert probe.json() == {"client": CLIENT_ID, "organization": ORGANIZATION}


def test_token_with_client_secret_basic(api: TestClient, secret: str) -> None:
    response = api.post(
        "/auth/token", data={"grant_type": "client_credentials"}, headers=basic(CLIENT_ID, secret)
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert api.get("/fhir/Patient/probe", headers=bearer(token)).status_code == 200


def test_basic_credentials_are_form_urldecoded(api: TestClient, hub: Hub, secret: str) -> None:
    secret = add_secret_client(hub, "a.b_c-d")
    headers = basic("a.b_c-d", secret.replace("-", "%2D"))
    response = api.post("/auth/token", data={"grant_type": "client_credentials"}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("wrong", ["wrong-secret", ""])
def test_wrong_secret_is_invalid_client(api: TestClient, secret: str, wrong: str) -> None:
    response = request_token(api, wrong or "-")
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"] == 'Basic realm="emr_hub"'
    response = api.post(
        "/auth/token", data={"grant_type": "client_credentials"}, headers=basic(CLIENT_ID, wrong)
    )
    assert_oauth_error(response, 401, "invalid_client")


def test_unknown_client_is_invalid_client(api: TestClient, secret: str) -> None:
    response = request_token(api, secret, client_id="someone-else")
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"] == 'Basic realm="emr_hub"'


def test_disabled_client_gets_no_token(api: TestClient, secret: str, hub: Hub) -> None:
    with hub.db.transaction() as session:
        set_client_active(session, CLIENT_ID, False)
    assert_oauth_error(request_token(api, secret), 401, "invalid_client")


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "CLIENT_CREDENTIALS"])
def test_wrong_grant_type(api: TestClient, secret: str, grant_type: str) -> None:
    response = request_token(api, secret, grant_type=grant_type)
    assert_oauth_error(response, 400, "unsupported_grant_type")


def test_missing_grant_type(api: TestClient, secret: str) -> None:
    assert_oauth_error(request_token(api, secret, grant_type="-"), 400, "invalid_request")


def test_scope_narrowing(api: TestClient, secret: str) -> None:
    response = request_token(api, secret, scope="system/Patient.s system/Patient.r")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.rs"
    probe = api.get("/fhir/Patient/probe", headers=bearer(response.json()["access_token"]))
    assert probe.status_code == 200

    response = request_token(api, secret, scope="system/Observation.c")
    token = response.json()["access_token"]
    diagnostics = assert_outcome(
        api.get("/fhir/Patient/probe", headers=bearer(token)), 403, "forbidden"
    )
    assert diagnostics == "Scope system/Patient.r (or a wider one) is needed to read Patient"


@pytest.mark.parametrize(
    "scope", ["system/Patient.cruds", "system/*.rs", "system/Encounter.r", "user/*.read"]
)
def test_scope_widening_is_refused(api: TestClient, secret: str, scope: str) -> None:
    body = assert_oauth_error(request_token(api, secret, scope=scope), 400, "invalid_scope")
    assert "registered" in body["error_description"]


@pytest.mark.parametrize("scope", ["openid", "system/Patient.sr", "patient/*.rs", "system/X.r"])
def test_malformed_scope_is_invalid_scope(api: TestClient, secret: str, scope: str) -> None:
    body = assert_oauth_error(request_token(api, secret, scope=scope), 400, "invalid_scope")
    assert body["error_description"]


def test_blank_scope_means_all_registered_scopes(api: TestClient, secret: str) -> None:
    response = request_token(api, secret, scope="  ")
    assert response.status_code == 200
    assert response.json()["scope"] == REGISTERED


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"grant_type": "client_credentials"}', "application/json"),
        (b"grant_type=client_credentials", "text/plain"),
        (b"\xff\xfe=\x00", "application/x-www-form-urlencoded"),
        (b"grant_type=client_credentials&grant_type=client_credentials", None),
        (b"a=1&" * 40, None),
        (b"x=" + b"y" * 20000, None),
        (b"", None),
    ],
)
def test_malformed_requests_are_invalid_request(
    api: TestClient, content: bytes, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type or "application/x-www-form-urlencoded"}
    response = api.post("/auth/token", content=content, headers=headers)
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()])
def test_malformed_basic_header_is_invalid_client(api: TestClient, header: str) -> None:
    response = api.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": header},
    )
    assert_oauth_error(response, 401, "invalid_client")


def test_two_authentication_methods_are_refused(api: TestClient, secret: str) -> None:
    response = api.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_secret": secret},
        headers=basic(CLIENT_ID, secret),
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_missing_client_credentials(api: TestClient) -> None:
    response = api.post("/auth/token", data={"grant_type": "client_credentials"})
    assert_oauth_error(response, 401, "invalid_client")


# --- protected route -------------------------------------------------------------------------


def test_missing_authorization_is_401_with_outcome(api: TestClient) -> None:
    response = api.get("/fhir/Patient/probe")
    assert_outcome(response, 401, "login")
    assert response.headers["www-authenticate"] == 'Bearer realm="emr_hub"'


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer ", "Basic abc", "Token abc", "Bearer a b", "bearer not-a-jwt"]
)
def test_malformed_authorization_is_401(api: TestClient, header: str) -> None:
    response = api.get("/fhir/Patient/probe", headers={"Authorization": header})
    assert_outcome(response, 401, "login")
    assert response.headers["www-authenticate"].startswith('Bearer realm="emr_hub"')


def test_expired_token_is_401(api: TestClient, secret: str, hub: Hub) -> None:
    with hub.db.transaction() as session:
        client = get_client(session, CLIENT_ID)
    assert client is not None
    past = int(time.time()) - hub.settings.token_ttl_seconds - 300
    token, _ = issue_access_token(hub, client, ScopeSet.parse(REGISTERED), now=past)
    response = api.get("/fhir/Patient/probe", headers=bearer(token))
    assert "expired" in assert_outcome(response, 401, "login")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_tampered_signature_is_401(api: TestClient, secret: str) -> None:
    token = request_token(api, secret).json()["access_token"]
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-6]}AAAAAA"
    if tampered == token:
        tampered = f"{header}.{payload}.{signature[:-6]}BBBBBB"
    response = api.get("/fhir/Patient/probe", headers=bearer(tampered))
    assert_outcome(response, 401, "login")


def test_token_of_disabled_or_deleted_client_is_401(api: TestClient, secret: str, hub: Hub) -> None:
    token = request_token(api, secret).json()["access_token"]
    assert api.get("/fhir/Patient/probe", headers=bearer(token)).status_code == 200
    with hub.db.transaction() as session:
        set_client_active(session, CLIENT_ID, False)
    assert_outcome(api.get("/fhir/Patient/probe", headers=bearer(token)), 401, "login")
    with hub.db.transaction() as session:
        client = get_client(session, CLIENT_ID)
        session.delete(client)
    assert_outcome(api.get("/fhir/Patient/probe", headers=bearer(token)), 401, "login")


# --- discovery -------------------------------------------------------------------------------


def test_jwks_is_public_and_verifies_tokens(api: TestClient, secret: str) -> None:
    token = request_token(api, secret).json()["access_token"]
    response = api.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks = response.json()
    assert jwks["keys"]
    for jwk in jwks["keys"]:
        assert "d" not in jwk
        assert jwk["use"] == "sig" and jwk["alg"] == "ES256"
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.claims["sub"] == CLIENT_ID


def test_smart_configuration(api: TestClient, hub: Hub) -> None:
    response = api.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.json()
    base = hub.settings.base_url.rstrip("/")
    assert config["token_endpoint"] == base + "/auth/token"
    assert config["jwks_uri"] == base + "/.well-known/jwks.json"
    assert config["grant_types_supported"] == ["client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == [
        "ES384",
        "RS384",
        "ES256",
    ]
    assert "system/*.cruds" in config["scopes_supported"]
    assert config["capabilities"] == [
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "permission-v2",
        "health-cards",
    ]


def test_token_from_one_hub_works_on_another(hub: Hub, secret: str) -> None:
    """Two stateless API processes on one database: issue on one, use on the other."""
    other = Hub(settings=hub.settings, db=Database(hub.settings.effective_database_url))
    try:
        with TestClient(build_app(hub)) as first, TestClient(build_app(other)) as second:
            token = request_token(second, secret).json()["access_token"]
            assert first.get("/fhir/Patient/probe", headers=bearer(token)).status_code == 200
            assert (
                first.get("/.well-known/jwks.json").json()
                == second.get("/.well-known/jwks.json").json()
            )
    finally:
        other.close()

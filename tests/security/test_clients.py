"""Registering clients (secret or public keys), their Organization, roles, re-registration
and disabling, and what that does to tokens already issued."""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest
from fastapi.testclient import TestClient

from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.security.client_keys import parse_jwks
from emr_hub.security.clients import (
    ClientExists,
    Registration,
    ensure_client,
    get_client,
    register_client,
    set_client_active,
)
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token, verify_access_token
from storage.tables import ApiClient
from tests.security.conftest import (
    ORGANIZATION,
    ClientKey,
    assertion_claims,
    assertion_form,
    delete_resource,
    jwks_of,
    store_organization,
    with_settings,
)

SCOPES = ScopeSet.parse("system/Patient.rs")


def register(hub: Hub, client_id: str = "his", replace: bool = False, **fields: Any) -> str | None:
    registration = Registration(fields.pop("organization", ORGANIZATION), SCOPES, **fields)
    with hub.db.transaction() as session:
        return register_client(session, client_id, registration, replace=replace)


def load(hub: Hub, client_id: str = "his") -> ApiClient:
    with hub.db.transaction() as session:
        client = get_client(session, client_id)
    assert client is not None
    return client


def refused(hub: Hub, token: str) -> str:
    with pytest.raises(FhirError) as caught:
        verify_access_token(hub, token)
    assert caught.value.status == 401
    return str(caught.value)


# --- the Organization ------------------------------------------------------------------------


def test_organization_must_be_stored_and_live(hub: Hub) -> None:
    with pytest.raises(ValueError, match="is not stored in the hub"):
        register(hub)
    store_organization(hub)
    delete_resource(hub, "Organization", ORGANIZATION.partition("/")[2])
    with pytest.raises(ValueError, match="is deleted"):
        register(hub)
    with hub.db.snapshot() as session:
        assert get_client(session, "his") is None
    store_organization(hub)
    assert register(hub)


def test_ensure_client_needs_no_stored_organization(hub: Hub) -> None:
    """The demo (and tests) make secret clients for Organizations written alongside."""
    with hub.db.transaction() as session:
        secret = ensure_client(session, "demo", "Organization/not-yet", SCOPES)
    assert secret
    client = load(hub, "demo")
    assert client.secret_hash and client.jwks is None and client.generation == 1


@pytest.mark.parametrize("reserved", ["citizen", "operator", "emr-hub-cli"])
def test_reserved_client_ids(hub: Hub, organization: str, reserved: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        register(hub, reserved)


# --- public keys -----------------------------------------------------------------------------


def test_client_with_keys_has_no_secret(hub: Hub, organization: str) -> None:
    key = ClientKey("ES384")
    assert register(hub, jwks=parse_jwks(jwks_of(key))) is None
    client = load(hub)
    assert client.secret_hash is None
    assert client.jwks == {"keys": [key.public_jwk()]}


def test_client_with_keys_cannot_use_a_secret(hub: Hub, organization: str) -> None:
    register(hub, jwks=parse_jwks(jwks_of(ClientKey("ES256"))))
    with TestClient(_app(hub)) as app:
        for secret in ("", "anything"):
            form = {"grant_type": "client_credentials", "client_id": "his", "client_secret": secret}
            assert app.post("/auth/token", data=form).status_code == 401


def _app(hub: Hub) -> Any:
    from emr_hub.main import create_app

    return create_app(hub)


def rsa_public(bits: int) -> dict[str, Any]:
    from joserfc.jwk import RSAKey

    with warnings.catch_warnings():  # joserfc warns about the small key this test wants
        warnings.simplefilter("ignore")
        key = RSAKey.generate_key(bits)
    return {**key.as_dict(private=False), "kid": f"rsa-{bits}"}


@pytest.mark.parametrize(
    ("jwks", "says"),
    [
        ([], 'JSON object with a "keys" array'),
        ({"keys": []}, "no keys"),
        ({"keys": [{**ClientKey("ES384").public_jwk(), "kid": None}]}, "needs a kid"),
        (
            {"keys": [{**ClientKey("ES384").private.as_dict(private=True), "kid": "k"}]},
            "private key material (d)",
        ),
        ({"keys": [{**rsa_public(2048), "d": "AAAA"}]}, "private key material"),
        ({"keys": [rsa_public(1024)]}, "1024-bit RSA key; at least 2048"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "private key material"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "e"}]}, "kty 'OKP'"),
        (
            {"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p"}]},
            "curve 'P-521'",
        ),
        (
            {"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "p"}]},
            "not a valid P-256 public key",
        ),
        ({"keys": [{**ClientKey("ES256").public_jwk(), "use": "enc"}]}, "use 'enc'"),
        ({"keys": [{**ClientKey("ES256").public_jwk(), "alg": "RS384"}]}, "alg 'RS384'"),
        ({"keys": [{**ClientKey("ES256").public_jwk(), "kid": "same"}] * 2}, "Two keys"),
    ],
)
def test_jwks_is_checked(hub: Hub, organization: str, jwks: Any, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_jwks(jwks)
    assert says in str(caught.value)
    with pytest.raises(ValueError):
        register(hub, jwks=jwks)
    with hub.db.snapshot() as session:
        assert get_client(session, "his") is None


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://h/jwks", "https://", "javascript:alert(1)", "https://u:p@h/j"],
)
def test_jwks_url_must_be_http(hub: Hub, organization: str, url: str) -> None:
    with pytest.raises(ValueError, match="JWKS URL"):
        register(hub, jwks_url=url)


def test_jwks_and_url_are_exclusive(hub: Hub, organization: str) -> None:
    with pytest.raises(ValueError, match="not both"):
        register(hub, jwks=jwks_of(ClientKey("ES256")), jwks_url="https://h.example/jwks")


# --- roles ---------------------------------------------------------------------------------


def test_operator_and_break_glass_reach_the_principal(hub: Hub, organization: str) -> None:
    register(hub, "ops", role="operator", break_glass=True)
    register(hub, "plain")
    ops = verify_access_token(hub, issue_access_token(hub, load(hub, "ops"), SCOPES)[0])
    plain = verify_access_token(hub, issue_access_token(hub, load(hub, "plain"), SCOPES)[0])
    assert (ops.kind, ops.break_glass_allowed) == ("operator", True)
    assert (plain.kind, plain.break_glass_allowed) == ("hospital", False)


def test_role_must_be_known(hub: Hub, organization: str) -> None:
    with pytest.raises(ValueError, match="role"):
        register(hub, role="citizen")


# --- re-registration and disabling ---------------------------------------------------------


def test_register_twice_needs_replace(hub: Hub, organization: str) -> None:
    register(hub)
    with pytest.raises(ClientExists):
        register(hub)


def test_replace_cuts_off_earlier_tokens(hub: Hub, organization: str) -> None:
    first_secret = register(hub)
    token = issue_access_token(hub, load(hub), SCOPES)[0]
    assert verify_access_token(hub, token).client_id == "his"

    key = ClientKey("ES384")
    assert register(hub, replace=True, jwks=parse_jwks(jwks_of(key))) is None
    client = load(hub)
    assert client.generation == 2 and client.secret_hash is None
    assert "re-registered or disabled" in refused(hub, token)

    # The new registration works (keys), the old secret does not.
    with TestClient(_app(hub)) as app:
        form = {"grant_type": "client_credentials", "client_id": "his"}
        old = app.post("/auth/token", data={**form, "client_secret": first_secret})
        assert old.status_code == 401
        new = app.post("/auth/token", data=assertion_form(key.sign(assertion_claims(hub, "his"))))
        assert new.status_code == 200, new.text
        assert verify_access_token(hub, new.json()["access_token"]).client_id == "his"


def test_replace_keeps_the_active_flag(hub: Hub, organization: str) -> None:
    register(hub)
    with hub.db.transaction() as session:
        set_client_active(session, "his", False)
    register(hub, replace=True)
    assert not load(hub).active


def test_disable_then_enable_does_not_revive_tokens(hub: Hub, organization: str) -> None:
    register(hub)
    token = issue_access_token(hub, load(hub), SCOPES)[0]
    with hub.db.transaction() as session:
        assert set_client_active(session, "his", False)
    assert "unknown or disabled" in refused(hub, token)
    with hub.db.transaction() as session:
        assert set_client_active(session, "his", True)
    assert "re-registered or disabled" in refused(hub, token)
    fresh = issue_access_token(hub, load(hub), SCOPES)[0]
    assert verify_access_token(hub, fresh).client_id == "his"


def test_token_without_generation_is_refused(hub: Hub, organization: str) -> None:
    """Tokens of the hub before generations existed carry none: they must be renewed."""
    from joserfc import jwt

    from emr_hub.security.keys import signing_key

    register(hub)
    now = int(time.time())
    claims = {
        "iss": hub.settings.base_url,
        "aud": hub.settings.fhir_base_url,
        "sub": "his",
        "iat": now,
        "exp": now + 600,
        "jti": "j",
        "scope": str(SCOPES),
        "organization": ORGANIZATION,
    }
    key = signing_key(hub)
    token = jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key)
    assert "invalid" in refused(hub, token)


def test_secrets_turned_off(hub: Hub, organization: str) -> None:
    secret = register(hub)
    assert secret is not None
    strict = with_settings(hub, client_secret_auth=False)
    with TestClient(_app(strict)) as app:
        form = {"grant_type": "client_credentials", "client_id": "his", "client_secret": secret}
        response = app.post("/auth/token", data=form)
        assert response.status_code == 401
        body = response.json()
        assert body["error"] == "invalid_client"
        assert "EMR_HUB_CLIENT_SECRET_AUTH=false" in body["error_description"]
        assert "turned off" in body["error_description"]
        config = app.get("/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["capabilities"] == [
        "client-confidential-asymmetric",
        "permission-v2",
        "health-cards",
    ]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["ES384", "RS384", "ES256"]

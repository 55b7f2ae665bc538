"""SMART Backend Services: a client registered with its public keys gets a token with a
signed JWT assertion (RFC 7523), over HTTP on the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey

from emr_hub.hub import Hub
from emr_hub.security.clients import Registration, register_client
from emr_hub.security.scopes import ScopeSet
from tests.security.conftest import (
    ORGANIZATION,
    ClientKey,
    JwksServer,
    assert_oauth_error,
    assertion_claims,
    assertion_form,
    jwks_of,
)

CLIENT_ID = "his-bach-mai"
SCOPES = "system/Organization.rs system/Patient.rs"


def register(hub: Hub, client_id: str = CLIENT_ID, **registration: Any) -> None:
    with hub.db.transaction() as session:
        secret = register_client(
            session, client_id, Registration(ORGANIZATION, ScopeSet.parse(SCOPES), **registration)
        )
    assert secret is None  # a client with keys has no secret


@pytest.fixture
def key(hub: Hub, organization: str) -> ClientKey:
    """An ES384 key registered for CLIENT_ID (as a JWK Set, beside an RS384 and an ES256 key)."""
    keys = [ClientKey("ES384"), ClientKey("RS384"), ClientKey("ES256")]
    register(hub, jwks=jwks_of(*keys))
    return keys[0]


def post_assertion(app: TestClient, assertion: str, **extra: str) -> Any:
    return app.post("/auth/token", data=assertion_form(assertion, **extra))


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def read_own_organization(app: TestClient, token: str) -> int:
    response = app.get(f"/fhir/{ORGANIZATION}", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


@pytest.mark.parametrize("algorithm", ["ES384", "RS384", "ES256"])
def test_valid_assertion_gets_a_token(
    hub: Hub, organization: str, app: TestClient, algorithm: str
) -> None:
    keys = [ClientKey(name) for name in ("ES384", "RS384", "ES256")]
    register(hub, jwks=jwks_of(*keys))
    signer = next(k for k in keys if k.algorithm == algorithm)
    response = post_assertion(app, signer.sign(assertion_claims(hub, CLIENT_ID)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["scope"] == SCOPES
    assert body["expires_in"] == hub.settings.token_ttl_seconds
    assert read_own_organization(app, body["access_token"]) == 200


def test_scope_is_narrowed_and_never_widened(hub: Hub, key: ClientKey, app: TestClient) -> None:
    narrowed = post_assertion(
        app, key.sign(assertion_claims(hub, CLIENT_ID)), scope="system/Patient.r"
    )
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "system/Patient.r"
    widened = post_assertion(
        app, key.sign(assertion_claims(hub, CLIENT_ID)), scope="system/*.cruds"
    )
    assert_oauth_error(widened, 400, "invalid_scope", "registered")


def test_client_id_in_the_form_must_be_the_issuer(
    hub: Hub, key: ClientKey, app: TestClient
) -> None:
    same = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)), client_id=CLIENT_ID)
    assert same.status_code == 200
    other = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)), client_id="x")
    assert_oauth_error(other, 401, "invalid_client", "iss")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"aud": "http://elsewhere.example/auth/token"}, "aud must be this hub's token URL"),
        ({"aud": None}, "aud must be this hub's token URL"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"exp": None}, "needs exp"),
        ({"exp": "soon"}, "needs exp"),
        ({"exp": int(time.time()) + 3600}, "more than 5 minutes ahead"),
        ({"jti": None}, "needs a jti"),
        ({"jti": "x" * 300}, "needs a jti"),
        ({"jti": "a\x00b"}, "needs a jti"),
        ({"iss": "someone-else"}, "iss and sub must both be the client id"),
        ({"sub": "someone-else"}, "iss and sub must both be the client id"),
        ({"nbf": int(time.time()) + 600}, "nbf is in the future"),
        ({"iat": int(time.time()) + 600}, "iat is in the future"),
    ],
)
def test_invalid_claims_are_refused(
    hub: Hub, key: ClientKey, app: TestClient, changes: dict[str, Any], says: str
) -> None:
    assertion = key.sign(assertion_claims(hub, CLIENT_ID, **changes))
    description = assert_oauth_error(post_assertion(app, assertion), 401, "invalid_client", says)
    assert assertion not in description


def test_an_assertion_is_accepted_once(hub: Hub, key: ClientKey, app: TestClient) -> None:
    assertion = key.sign(assertion_claims(hub, CLIENT_ID))
    assert post_assertion(app, assertion).status_code == 200
    replayed = post_assertion(app, assertion)
    assert_oauth_error(replayed, 401, "invalid_client", "used before")
    # The same jti signed again is still the same assertion id.
    again = key.sign(
        assertion_claims(
            hub,
            CLIENT_ID,
            jti=json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))["jti"],
        )
    )
    assert_oauth_error(post_assertion(app, again), 401, "invalid_client", "used before")


def test_replay_store_is_shared_by_processes(hub: Hub, key: ClientKey) -> None:
    """Two API processes on one database: an assertion spent on one is refused by the other."""
    from emr_hub.main import create_app
    from storage.db import Database

    other = Hub(settings=hub.settings, db=Database(hub.settings.effective_database_url))
    try:
        with TestClient(create_app(hub)) as first, TestClient(create_app(other)) as second:
            assertion = key.sign(assertion_claims(hub, CLIENT_ID))
            assert post_assertion(first, assertion).status_code == 200
            assert_oauth_error(post_assertion(second, assertion), 401, "invalid_client", "used")
    finally:
        other.close()


def test_unknown_kid_and_wrong_key_are_refused(hub: Hub, key: ClientKey, app: TestClient) -> None:
    claims = assertion_claims(hub, CLIENT_ID)
    stranger = ClientKey("ES384")
    assert_oauth_error(
        post_assertion(app, stranger.sign(claims)), 401, "invalid_client", "No key with"
    )
    impostor = ClientKey("ES384", kid=key.kid)  # the registered kid, another private key
    description = assert_oauth_error(
        post_assertion(app, impostor.sign(assertion_claims(hub, CLIENT_ID))),
        401,
        "invalid_client",
        "signature does not verify",
    )
    assert key.kid not in description


def test_key_must_fit_the_algorithm(hub: Hub, organization: str, app: TestClient) -> None:
    p256 = ClientKey("ES256")
    register(hub, jwks=jwks_of(p256))
    # An ES384 header over a P-256 key: refused before any signature is checked.
    forged = jwt.encode(
        {"alg": "ES256", "typ": "JWT", "kid": p256.kid},
        assertion_claims(hub, CLIENT_ID),
        p256.private,
    )
    _, payload, signature = forged.split(".")
    relabelled = f"{b64({'alg': 'ES384', 'typ': 'JWT', 'kid': p256.kid})}.{payload}.{signature}"
    assert_oauth_error(post_assertion(app, relabelled), 401, "invalid_client", "not ES384")


def test_alg_none_is_refused(hub: Hub, key: ClientKey, app: TestClient) -> None:
    unsigned = (
        f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}."
        f"{b64(assertion_claims(hub, CLIENT_ID))}.AAAA"
    )
    assert_oauth_error(post_assertion(app, unsigned), 401, "invalid_client", "alg must be one of")
    empty_signature = unsigned.rsplit(".", 1)[0] + "."
    assert_oauth_error(post_assertion(app, empty_signature), 401, "invalid_client")


def test_hmac_keyed_with_the_public_key_is_refused(
    hub: Hub, key: ClientKey, app: TestClient
) -> None:
    """The classic confusion: HS256 with the registered public key's bytes as the secret."""
    public_bytes = json.dumps(key.public_jwk(), sort_keys=True).encode()
    hmac_key = OctKey.import_key(public_bytes)
    forged = jwt.encode(
        {"alg": "HS256", "typ": "JWT", "kid": key.kid},
        assertion_claims(hub, CLIENT_ID),
        hmac_key,
        algorithms=["HS256"],
    )
    assert_oauth_error(post_assertion(app, forged), 401, "invalid_client", "alg must be one of")


@pytest.mark.parametrize("typ", [None, "at+jwt", "JOSE"])
def test_typ_must_be_jwt(hub: Hub, key: ClientKey, app: TestClient, typ: str | None) -> None:
    header = {"alg": key.algorithm, "kid": key.kid, **({"typ": typ} if typ else {})}
    assertion = jwt.encode(
        header,
        assertion_claims(hub, CLIENT_ID),
        key.private,
        algorithms=[key.algorithm],
        default_type=None,
    )
    assert_oauth_error(post_assertion(app, assertion), 401, "invalid_client", '"typ": "JWT"')


def test_missing_kid_is_refused(hub: Hub, key: ClientKey, app: TestClient) -> None:
    assertion = key.sign(assertion_claims(hub, CLIENT_ID), kid=None)
    assert_oauth_error(post_assertion(app, assertion), 401, "invalid_client", "needs the kid")


def test_a_foreign_jku_is_refused(hub: Hub, key: ClientKey, app: TestClient) -> None:
    assertion = key.sign(assertion_claims(hub, CLIENT_ID), jku="https://evil.example/jwks")
    assert_oauth_error(post_assertion(app, assertion), 401, "invalid_client", "jku")


@pytest.mark.parametrize(
    "assertion",
    ["", "abc", "a.b", "a.b.c", "e30.e30.", "x" * 9000, "W10.W10.AAAA", "%%%.%%%.%%%"],
)
def test_malformed_assertions_are_refused(
    hub: Hub, key: ClientKey, app: TestClient, assertion: str
) -> None:
    response = post_assertion(app, assertion)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_request", "invalid_client")


def test_wrong_assertion_type_is_invalid_request(hub: Hub, key: ClientKey, app: TestClient) -> None:
    form = assertion_form(key.sign(assertion_claims(hub, CLIENT_ID)))
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    assert_oauth_error(app.post("/auth/token", data=form), 400, "invalid_request", "jwt-bearer")
    del form["client_assertion"]
    form["client_assertion_type"] = assertion_form("")["client_assertion_type"]
    assert_oauth_error(app.post("/auth/token", data=form), 400, "invalid_request", "missing")


def test_assertion_and_secret_together_are_refused(
    hub: Hub, key: ClientKey, app: TestClient
) -> None:
    form = assertion_form(key.sign(assertion_claims(hub, CLIENT_ID)), client_secret="s")
    assert_oauth_error(app.post("/auth/token", data=form), 400, "invalid_request", "one client")


def test_secret_client_cannot_use_an_assertion(
    hub: Hub, organization: str, app: TestClient
) -> None:
    with hub.db.transaction() as session:
        register_client(session, "secret-only", Registration(ORGANIZATION, ScopeSet.parse(SCOPES)))
    stranger = ClientKey("ES384")
    response = post_assertion(app, stranger.sign(assertion_claims(hub, "secret-only")))
    assert_oauth_error(response, 401, "invalid_client", "registered with public keys")


def test_disabled_client_gets_no_token(hub: Hub, key: ClientKey, app: TestClient) -> None:
    from emr_hub.security.clients import set_client_active

    with hub.db.transaction() as session:
        set_client_active(session, CLIENT_ID, False)
    response = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)))
    assert_oauth_error(response, 401, "invalid_client", "not an active client")


# --- keys published at a JWKS URL -----------------------------------------------------------


def test_keys_from_the_jwks_url(
    hub: Hub, organization: str, app: TestClient, jwks_server: JwksServer
) -> None:
    first = ClientKey("ES384")
    jwks_server.publish(jwks_of(first))
    register(hub, jwks_url=jwks_server.url)

    assert post_assertion(app, first.sign(assertion_claims(hub, CLIENT_ID))).status_code == 200
    assert post_assertion(app, first.sign(assertion_claims(hub, CLIENT_ID))).status_code == 200
    assert jwks_server.requests == 1  # kept in memory

    # The client rotates: a kid the copy in memory lacks fetches the set again, once.
    second = ClientKey("RS384")
    jwks_server.publish(jwks_of(first, second))
    assert post_assertion(app, second.sign(assertion_claims(hub, CLIENT_ID))).status_code == 200
    assert jwks_server.requests == 2

    unknown = ClientKey("ES384")
    response = post_assertion(app, unknown.sign(assertion_claims(hub, CLIENT_ID)))
    assert_oauth_error(response, 401, "invalid_client", "No key with")
    assert jwks_server.requests == 3

    # jku naming the registered URL is fine.
    with_jku = first.sign(assertion_claims(hub, CLIENT_ID), jku=jwks_server.url)
    assert post_assertion(app, with_jku).status_code == 200


@pytest.mark.parametrize(
    ("published", "status", "says"),
    [
        (b"<html>", 200, "did not answer with JSON"),
        (b'{"keys": "no"}', 200, "usable JWK Set"),
        (b'{"keys": []}', 404, "HTTP 404"),
        (b"[" * 10 + b'"x"' * 30000, 200, "more than 64 KiB"),
    ],
)
def test_unusable_jwks_url_is_a_clear_error(
    hub: Hub,
    organization: str,
    app: TestClient,
    jwks_server: JwksServer,
    published: bytes,
    status: int,
    says: str,
) -> None:
    jwks_server.body, jwks_server.status = published, status
    register(hub, jwks_url=jwks_server.url)
    key = ClientKey("ES384")
    response = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)))
    assert_oauth_error(response, 401, "invalid_client", says)


def test_private_keys_at_the_jwks_url_are_refused(
    hub: Hub, organization: str, app: TestClient, jwks_server: JwksServer
) -> None:
    key = ClientKey("ES384")
    jwks_server.publish({"keys": [{**key.private.as_dict(private=True), "kid": key.kid}]})
    register(hub, jwks_url=jwks_server.url)
    response = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)))
    assert_oauth_error(response, 401, "invalid_client", "private key material")


def test_unreachable_jwks_url(hub: Hub, organization: str, app: TestClient) -> None:
    from tests.conftest import free_port

    register(hub, jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    key = ClientKey("ES384")
    response = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID)))
    assert_oauth_error(response, 401, "invalid_client", "could not be reached")


def test_assertion_never_echoed(hub: Hub, key: ClientKey, app: TestClient) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    for changes in ({"aud": marker}, {"jti": marker * 20}, {"iss": marker}):
        response = post_assertion(app, key.sign(assertion_claims(hub, CLIENT_ID, **changes)))
        assert response.status_code == 401
        assert marker not in response.text

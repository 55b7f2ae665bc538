"""Secrets, clients, the shared signing key, and access token issue/verification."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.security import Principal, ScopeSet
from emr_hub.security.clients import (
    ClientExists,
    Registration,
    authenticate_client,
    ensure_client,
    get_client,
    register_client,
    set_client_active,
)
from emr_hub.security.keys import public_jwks, signing_key, verification_key
from emr_hub.security.secrets import hash_secret, verify_secret
from emr_hub.security.tokens import issue_access_token, verify_access_token
from storage.db import Database
from storage.tables import ApiClient, ResourceRow, SigningKey
from tests.security.conftest import store_organization

CLIENT_ID = "his.bach-mai_01"
ORGANIZATION_ID = "bv-bach-mai"
ORGANIZATION = f"Organization/{ORGANIZATION_ID}"
SCOPES = ScopeSet.parse("system/Patient.rs system/Observation.cruds")


def add_client(hub: Hub, client_id: str = CLIENT_ID, scopes: ScopeSet = SCOPES) -> str:
    with hub.db.snapshot() as session:
        stored = session.get(ResourceRow, ("Organization", ORGANIZATION_ID)) is not None
    if not stored:
        store_organization(hub, ORGANIZATION_ID)
    with hub.db.transaction() as session:
        secret = register_client(session, client_id, Registration(ORGANIZATION, scopes))
    assert secret is not None
    return secret


def load_client(hub: Hub, client_id: str = CLIENT_ID) -> ApiClient:
    with hub.db.transaction() as session:
        client = get_client(session, client_id)
    assert client is not None
    return client


def token_for(hub: Hub, scopes: ScopeSet = SCOPES, **kwargs: Any) -> str:
    return issue_access_token(hub, load_client(hub), scopes, **kwargs)[0]


def assert_unauthorized(hub: Hub, token: str, message: str = "") -> FhirError:
    with pytest.raises(FhirError) as caught:
        verify_access_token(hub, token)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="emr_hub"')
    assert message in str(caught.value)
    return caught.value


# --- secrets ---------------------------------------------------------------------------------


def test_secret_hash_round_trip() -> None:
    encoded = hash_secret("s3cret")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert salt and digest and "s3cret" not in encoded
    assert verify_secret("s3cret", encoded)
    assert not verify_secret("s3cret ", encoded)
    assert not verify_secret("", encoded)
    assert hash_secret("s3cret") != encoded  # fresh salt every time


@pytest.mark.parametrize(
    "encoded",
    ["", "plain", "scrypt$16384$8$1$c2FsdA$", "bcrypt$16384$8$1$c2FsdA$AAAA", "scrypt$3$8$1$a$b"],
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_secret("anything", encoded)


# --- clients ---------------------------------------------------------------------------------


def test_register_and_authenticate_client(hub: Hub) -> None:
    secret = add_client(hub)
    assert len(secret) >= 40
    with hub.db.transaction() as session:
        client = authenticate_client(session, CLIENT_ID, secret)
        assert client is not None
        assert client.organization == ORGANIZATION
        assert client.scopes == str(SCOPES)
        assert secret not in client.secret_hash
        assert authenticate_client(session, CLIENT_ID, secret + "x") is None
        assert authenticate_client(session, "nobody", secret) is None
        assert authenticate_client(session, "not a valid id!", secret) is None


def test_register_twice_raises_client_exists(hub: Hub) -> None:
    add_client(hub)
    with pytest.raises(ClientExists):
        add_client(hub)


@pytest.mark.parametrize(
    ("client_id", "organization", "scopes", "message"),
    [
        ("", ORGANIZATION, SCOPES, "client id"),
        ("a b", ORGANIZATION, SCOPES, "client id"),
        ("x" * 129, ORGANIZATION, SCOPES, "client id"),
        ("his/1", ORGANIZATION, SCOPES, "client id"),
        ("his", "bv-bach-mai", SCOPES, "organization"),
        ("his", "Patient/p1", SCOPES, "organization"),
        ("his", "Organization/", SCOPES, "organization"),
        ("his", ORGANIZATION, ScopeSet(), "scope"),
    ],
)
def test_register_validates_input(
    hub: Hub, client_id: str, organization: str, scopes: ScopeSet, message: str
) -> None:
    with pytest.raises(ValueError, match=message), hub.db.transaction() as session:
        register_client(session, client_id, Registration(organization, scopes))


def test_ensure_client_is_idempotent(hub: Hub) -> None:
    with hub.db.transaction() as session:
        secret = ensure_client(session, "demo", ORGANIZATION, SCOPES)
    assert secret
    with hub.db.transaction() as session:
        assert ensure_client(session, "demo", "Organization/other", SCOPES) is None
        client = authenticate_client(session, "demo", secret)
    assert client is not None
    assert client.organization == ORGANIZATION


def test_inactive_client_cannot_authenticate(hub: Hub) -> None:
    secret = add_client(hub)
    with hub.db.transaction() as session:
        assert set_client_active(session, CLIENT_ID, False)
        assert not set_client_active(session, "nobody", False)
    with hub.db.transaction() as session:
        assert authenticate_client(session, CLIENT_ID, secret) is None


# --- signing keys ----------------------------------------------------------------------------


def count_keys(db: Database) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(SigningKey)) or 0)


def test_signing_key_is_made_once_and_cached(hub: Hub) -> None:
    assert count_keys(hub.db) == 0
    key = signing_key(hub)
    assert signing_key(hub) is key
    assert key.is_private
    assert key.curve_name == "P-256"
    assert key.kid == key.thumbprint()
    assert count_keys(hub.db) == 1
    assert verification_key(hub, key.kid) is not None
    assert verification_key(hub, "unknown-kid") is None


def test_public_jwks_has_no_private_members(hub: Hub) -> None:
    jwks = public_jwks(hub)
    [jwk] = jwks["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert "d" not in jwk
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert jwk["kid"] == signing_key(hub).kid


def test_two_hubs_on_one_database_share_the_signing_key(hub: Hub) -> None:
    other = Hub(settings=hub.settings, db=Database(hub.settings.effective_database_url))
    try:
        add_client(hub)
        # The second hub makes the key; the first must pick it up rather than make its own.
        token = token_for(other)
        assert signing_key(hub).kid == signing_key(other).kid
        assert count_keys(hub.db) == 1
        assert verify_access_token(hub, token).client_id == CLIENT_ID
        assert verify_access_token(other, token_for(hub)).client_id == CLIENT_ID
    finally:
        other.close()


def test_concurrent_first_use_agrees_on_one_key(hub: Hub) -> None:
    hubs = [
        Hub(settings=hub.settings, db=Database(hub.settings.effective_database_url))
        for _ in range(4)
    ]
    kids: list[str | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(hubs))

    def first_use(instance: Hub) -> None:
        try:
            barrier.wait()
            kids.append(signing_key(instance).kid)
        except BaseException as exc:  # noqa: BLE001 - reported by the asserts below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(h,)) for h in hubs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for instance in hubs:
            instance.close()
    assert not errors
    assert len(kids) == len(hubs)
    assert len(set(kids)) == 1
    assert count_keys(hub.db) == 1
    assert signing_key(hub).kid == kids[0]


# --- access tokens ---------------------------------------------------------------------------


def test_issued_token_claims(hub: Hub) -> None:
    add_client(hub)
    before = int(time.time())
    token, expires_in = issue_access_token(hub, load_client(hub), SCOPES)
    assert expires_in == hub.settings.token_ttl_seconds
    decoded = jwt.decode(token, ECKey.import_key(public_jwks(hub)["keys"][0]), ["ES256"])
    assert decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] == signing_key(hub).kid
    claims = decoded.claims
    assert claims["iss"] == hub.settings.base_url
    assert claims["aud"] == hub.settings.fhir_base_url
    assert claims["sub"] == CLIENT_ID
    assert claims["organization"] == ORGANIZATION
    assert claims["scope"] == str(SCOPES)
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == hub.settings.token_ttl_seconds
    assert len(claims["jti"]) == 36


def test_verify_returns_the_principal(hub: Hub) -> None:
    add_client(hub)
    narrowed = ScopeSet.parse("system/Patient.r")
    principal = verify_access_token(hub, token_for(hub, narrowed))
    assert isinstance(principal, Principal)
    assert principal.client_id == CLIENT_ID
    assert principal.organization == ORGANIZATION
    assert principal.scopes == narrowed
    assert principal.token_id
    principal.require("Patient", "r")
    with pytest.raises(FhirError) as caught:
        principal.require("Observation", "c")
    assert caught.value.status == 403
    assert str(caught.value) == (
        "Scope system/Observation.c (or a wider one) is needed to create Observation"
    )


def test_expired_token_is_refused(hub: Hub) -> None:
    add_client(hub)
    ttl = hub.settings.token_ttl_seconds
    expired = token_for(hub, now=int(time.time()) - ttl - 120)
    error = assert_unauthorized(hub, expired, "expired")
    assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]


def test_clock_skew_within_leeway_is_accepted(hub: Hub) -> None:
    add_client(hub)
    ttl = hub.settings.token_ttl_seconds
    just_expired = token_for(hub, now=int(time.time()) - ttl - 5)
    assert verify_access_token(hub, just_expired).client_id == CLIENT_ID


def test_token_from_the_future_is_refused(hub: Hub) -> None:
    add_client(hub)
    assert_unauthorized(hub, token_for(hub, now=int(time.time()) + 3600), "invalid")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_tampered_tokens_are_refused(hub: Hub) -> None:
    add_client(hub)
    token = token_for(hub)
    header, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert_unauthorized(hub, f"{header}.{payload}.{flipped}", "invalid")
    # A widened scope in the payload breaks the signature.
    claims = jwt.decode(token, signing_key(hub), ["ES256"]).claims
    widened = b64(json.dumps({**claims, "scope": "system/*.cruds"}).encode())
    assert_unauthorized(hub, f"{header}.{widened}.{signature}", "invalid")


def test_tokens_not_signed_by_the_hub_are_refused(hub: Hub) -> None:
    add_client(hub)
    claims = jwt.decode(token_for(hub), signing_key(hub), ["ES256"]).claims
    kid = signing_key(hub).kid
    stranger = ECKey.generate_key("P-256")
    forged = jwt.encode({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims, stranger)
    assert_unauthorized(hub, forged, "invalid")
    unknown_kid = jwt.encode({"alg": "ES256", "kid": "other", "typ": "at+jwt"}, claims, stranger)
    assert_unauthorized(hub, unknown_kid, "invalid")
    unsigned = b64(b'{"alg":"none","typ":"at+jwt"}') + "." + b64(json.dumps(claims).encode()) + "."
    assert_unauthorized(hub, unsigned, "invalid")
    # Right key, but not an access token.
    plain_jwt = jwt.encode({"alg": "ES256", "kid": kid}, claims, signing_key(hub))
    assert_unauthorized(hub, plain_jwt, "invalid")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b.c.d.e", "x" * 10000])
def test_garbage_tokens_are_refused(hub: Hub, token: str) -> None:
    assert_unauthorized(hub, token, "invalid")


def test_token_for_another_hub_is_refused(hub: Hub) -> None:
    add_client(hub)
    elsewhere = Hub(
        settings=hub.settings.model_copy(update={"base_url": "https://hub.example.vn"}),
        db=hub.db,
    )
    assert_unauthorized(
        hub,
        token_for(elsewhere),
        "This token was issued for https://hub.example.vn/fhir; this hub is "
        f"{hub.settings.fhir_base_url}: get a token from this hub's "
        f"{hub.settings.base_url}/auth/token",
    )


def test_token_of_a_deleted_or_disabled_client_is_refused(hub: Hub) -> None:
    add_client(hub)
    add_client(hub, "second")
    first, second = token_for(hub), issue_access_token(hub, load_client(hub, "second"), SCOPES)[0]
    with hub.db.transaction() as session:
        set_client_active(session, CLIENT_ID, False)
        session.delete(session.get(ApiClient, "second"))
    assert_unauthorized(hub, first, "disabled")
    assert_unauthorized(hub, second, "disabled")


def test_token_wider_than_the_current_registration_is_refused(hub: Hub) -> None:
    add_client(hub)
    token = token_for(hub)
    with hub.db.transaction() as session:
        client = session.get(ApiClient, CLIENT_ID)
        assert client is not None
        client.scopes = "system/Patient.r"
    assert_unauthorized(hub, token, "request a new one")


def test_token_living_longer_than_the_ttl_is_refused(hub: Hub) -> None:
    """Whatever a token says, the hub's lifetime bounds it: e.g. after the TTL was lowered."""
    add_client(hub)
    generous = Hub(settings=hub.settings.model_copy(update={"token_ttl_seconds": 7200}), db=hub.db)
    long_lived = issue_access_token(generous, load_client(hub), SCOPES)[0]
    assert_unauthorized(hub, long_lived, "lives longer than this hub allows (3600 s)")
    assert verify_access_token(generous, long_lived).client_id == CLIENT_ID


def test_token_issued_in_the_future_is_refused(hub: Hub) -> None:
    add_client(hub)
    soon = token_for(hub, now=int(time.time()) + 120)
    assert_unauthorized(hub, soon, "invalid")
    within_leeway = token_for(hub, now=int(time.time()) + 10)
    assert verify_access_token(hub, within_leeway).client_id == CLIENT_ID


def test_token_for_another_issuer_names_it(hub: Hub) -> None:
    add_client(hub)
    client = load_client(hub)
    now = int(time.time())
    claims = {
        "iss": "http://127.0.0.1:8010",
        "aud": hub.settings.fhir_base_url,
        "sub": CLIENT_ID,
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "scope": str(SCOPES),
        "organization": ORGANIZATION,
        "gen": client.generation,
    }
    key = signing_key(hub)
    token = jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key)
    assert_unauthorized(hub, token, "This token was issued by http://127.0.0.1:8010; this hub is")
    # A foreign audience that is not printable text is not repeated.
    odd = jwt.encode(
        {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, {**claims, "aud": "a\nb"}, key
    )
    error = assert_unauthorized(hub, odd, "The access token is invalid")
    assert "a\nb" not in str(error)


@pytest.mark.parametrize("kid", ["a\x00b", "x" * 65, "ünïcode", ""])
def test_odd_kids_are_refused_without_a_lookup_error(hub: Hub, kid: str) -> None:
    add_client(hub)
    claims = jwt.decode(token_for(hub), signing_key(hub), ["ES256"]).claims
    odd = jwt.encode({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims, signing_key(hub))
    assert_unauthorized(hub, odd, "invalid")

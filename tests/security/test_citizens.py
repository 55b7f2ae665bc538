"""Citizens' tokens: for a person the hub holds records of, named by her person key only."""

from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt

from emr_hub.errors import FhirError
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.hub import Hub
from emr_hub.security.citizens import UnknownCitizen, citizen_person
from emr_hub.security.keys import signing_key
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import CITIZEN_SCOPE, issue_citizen_token, verify_access_token
from storage.tables import ApiClient
from tests.security.conftest import delete_resource, store_patient

CCCD = "001090012345"  # Hà Nội, born 1990
BIRTH_DATE = "1990-03-15"


def person_for(hub: Hub, cccd: str) -> str:
    with hub.db.snapshot() as session:
        return citizen_person(session, cccd)


def payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_citizen_token_names_the_person_not_the_cccd(hub: Hub) -> None:
    store_patient(hub, "lan", CCCD, BIRTH_DATE)
    person = person_for(hub, CCCD)
    assert person == person_of_cccd(CCCD)
    token, lifetime = issue_citizen_token(hub, person, ScopeSet.parse(CITIZEN_SCOPE))
    assert lifetime == hub.settings.token_ttl_seconds
    claims = payload(token)
    assert CCCD not in token and CCCD not in json.dumps(claims)
    assert claims["sub"] == f"citizen/{person}"
    assert (claims["kind"], claims["person"]) == ("citizen", person)
    assert claims["scope"] == "patient/*.rs patient/Consent.cu"

    principal = verify_access_token(hub, token)
    assert principal.client_id == "citizen"
    assert principal.organization is None
    assert principal.kind == "citizen" and principal.is_citizen
    assert principal.person == person
    assert principal.token_id == claims["jti"]
    assert principal.scopes == ScopeSet.parse(CITIZEN_SCOPE)
    with hub.db.snapshot() as session:  # no client is needed or made
        assert session.get(ApiClient, "citizen") is None


@pytest.mark.parametrize(
    ("cccd", "says"),
    [
        ("12345", "exactly 12 digits"),
        ("001090012345x", "exactly 12 digits"),
        ("999090012345", "province code"),
        ("001090099999", "No live Patient"),
    ],
)
def test_unknown_or_malformed_cccd_is_refused(hub: Hub, cccd: str, says: str) -> None:
    store_patient(hub, "lan", CCCD, BIRTH_DATE)
    with pytest.raises(UnknownCitizen, match=says) as caught:
        person_for(hub, cccd)
    assert cccd not in str(caught.value)


def test_deleted_patient_gets_no_citizen_token(hub: Hub) -> None:
    store_patient(hub, "lan", CCCD, BIRTH_DATE)
    delete_resource(hub, "Patient", "lan")
    with pytest.raises(UnknownCitizen, match="No live Patient"):
        person_for(hub, CCCD)


def test_citizen_tokens_take_patient_scopes_only(hub: Hub) -> None:
    person = person_of_cccd(CCCD)
    with pytest.raises(ValueError, match="patient/ scopes only"):
        issue_citizen_token(hub, person, ScopeSet.parse("system/*.rs"))
    with pytest.raises(ValueError, match="person key"):
        issue_citizen_token(hub, CCCD, ScopeSet.parse("patient/*.rs"))


def forged(hub: Hub, **claims: object) -> str:
    now = int(time.time())
    base = {
        "iss": hub.settings.base_url,
        "aud": hub.settings.fhir_base_url,
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "client_id": "citizen",
    }
    key = signing_key(hub)
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, {**base, **claims}, key)


def test_citizen_token_checks(hub: Hub) -> None:
    """Even signed by the hub, a citizen token must be coherent to be accepted."""
    person = person_of_cccd(CCCD)
    good = {
        "sub": f"citizen/{person}",
        "kind": "citizen",
        "person": person,
        "scope": "patient/*.rs",
    }
    assert verify_access_token(hub, forged(hub, **good)).person == person
    for wrong in (
        {"scope": "system/*.cruds"},
        {"person": CCCD},
        {"sub": "citizen/someone-else"},
        {"person": None},
    ):
        with pytest.raises(FhirError) as caught:
            verify_access_token(hub, forged(hub, **{**good, **wrong}))
        assert caught.value.status == 401
    # Citizens' tokens have the same lifetime bound as every token.
    too_long = forged(hub, **good, exp=int(time.time()) + hub.settings.token_ttl_seconds + 60)
    with pytest.raises(FhirError, match="lives longer"):
        verify_access_token(hub, too_long)
    # A hospital token may not carry patient/ scopes.
    with pytest.raises(FhirError):
        verify_access_token(
            hub, forged(hub, sub="his", scope="patient/*.rs", organization="Organization/x", gen=1)
        )

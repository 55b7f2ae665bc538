"""JWT access tokens (RFC 9068 profile): issued by the token endpoint and the command line,
checked on every request.

Tokens are signed ES256 with the hub's key (:mod:`emr_hub.security.keys`). A client's token
carries the client, its organization, the granted scopes and the client's registration
generation; verification is local (signature and claims) plus one primary-key lookup of the
client, so disabling or re-registering a client cuts off its tokens at once. A citizen's
token carries her person key (never her CCCD) and ``patient/`` scopes, and needs no lookup.

Whatever a token says, the hub refuses one that lives longer than
``EMR_HUB_TOKEN_TTL_SECONDS`` (``exp - iat``) or was issued in the future, so a lowered
lifetime applies to tokens already out too.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol

from emr_hub.errors import FhirError
from emr_hub.security.clients import client_scopes, get_client
from emr_hub.security.keys import ALGORITHM, CLOCK_LEEWAY_SECONDS, signing_key, verification_key
from emr_hub.security.principal import CITIZEN, Principal, invalid_token
from emr_hub.security.scopes import ScopeSet
from storage.tables import ApiClient

if TYPE_CHECKING:
    from joserfc.jwk import ECKey

    from emr_hub.hub import Hub

TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 "typ" header, not a secret
LEEWAY_SECONDS = CLOCK_LEEWAY_SECONDS
# Far above any token this hub issues; refuses junk before any parsing or crypto.
MAX_TOKEN_LENGTH = 8192
CITIZEN_CLIENT_ID = "citizen"
CITIZEN_SCOPE = "patient/*.rs patient/Consent.cu"
"""What a citizen's token grants by default: read and search her record, write her Consents."""
_PERSON_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What of a foreign token's issuer or audience an error message may repeat.
_PRINTABLE_URL = re.compile(r"[!-~]{1,200}")


class _UnknownKey(JoseError):
    error = "unknown_key"


def issue_access_token(
    hub: Hub, client: ApiClient, scopes: ScopeSet, *, now: int | None = None
) -> tuple[str, int]:
    """Sign an access token for ``client`` with ``scopes``; returns (token, lifetime seconds).

    The caller has already checked that ``scopes`` lie within the client's registration.
    ``now`` (Unix seconds) is for tests.
    """
    return _sign(
        hub,
        {
            "sub": client.client_id,
            "client_id": client.client_id,
            "scope": str(scopes),
            "organization": client.organization,
            "gen": client.generation,
        },
        now,
    )


def issue_citizen_token(hub: Hub, person: str, scopes: ScopeSet) -> tuple[str, int]:
    """Sign an access token for the citizen of person key ``person`` (``patient/`` scopes).

    The token names the person by her key only: a CCCD never goes into a token.
    """
    if not _PERSON_KEY.fullmatch(person):
        raise ValueError("a citizen's token names her person key (a UUID)")
    if not scopes or scopes.contexts != {"patient"}:
        raise ValueError("a citizen's token carries patient/ scopes only, e.g. patient/*.rs")
    return _sign(
        hub,
        {
            "sub": f"{CITIZEN}/{person}",
            "client_id": CITIZEN_CLIENT_ID,
            "kind": CITIZEN,
            "person": person,
            "scope": str(scopes),
        },
        None,
    )


def verify_access_token(hub: Hub, token: str) -> Principal:
    """The principal of a valid token, else a 401 that says what to do, not what broke."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise _invalid()

    def key_for(signature: GuestProtocol) -> ECKey:
        kid = signature.headers().get("kid")
        key = verification_key(hub, kid) if isinstance(kid, str) else None
        if key is None:
            raise _UnknownKey()
        return key

    try:
        decoded = jwt.decode(token, key_for, algorithms=[ALGORITHM])
    except (JoseError, ValueError, TypeError, KeyError):
        raise _invalid() from None
    if decoded.header.get("typ") != TOKEN_TYPE:
        raise _invalid()
    claims = decoded.claims
    _check_issuer_and_audience(hub, claims)
    _check_times(hub, claims)
    token_id, subject, scope_text = claims.get("jti"), claims.get("sub"), claims.get("scope")
    if not all(isinstance(value, str) and value for value in (token_id, subject, scope_text)):
        raise _invalid()
    try:
        scopes = ScopeSet.parse(str(scope_text))
    except ValueError:
        raise _invalid() from None
    if claims.get("kind") == CITIZEN:
        return _citizen(claims, scopes, str(token_id))
    return _client_principal(hub, claims, scopes, str(subject), str(token_id))


def _sign(hub: Hub, claims: dict[str, Any], now: int | None) -> tuple[str, int]:
    key = signing_key(hub)
    issued_at = int(time.time()) if now is None else now
    lifetime = hub.settings.token_ttl_seconds
    claims = {
        "iss": hub.settings.base_url,
        "aud": hub.settings.fhir_base_url,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": TOKEN_TYPE}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM]), lifetime


def _check_issuer_and_audience(hub: Hub, claims: dict[str, Any]) -> None:
    """A token signed by this hub's keys but for another base URL (a hub sharing the
    database, or the base URL changed since): say so, and what the token was for."""
    ours, our_issuer = hub.settings.fhir_base_url, hub.settings.base_url
    endpoint = f"{our_issuer.rstrip('/')}/auth/token"
    for claim, expected, issued in (("aud", ours, "for"), ("iss", our_issuer, "by")):
        value = claims.get(claim)
        if value == expected:
            continue
        if isinstance(value, str) and _PRINTABLE_URL.fullmatch(value):
            raise invalid_token(
                f"This token was issued {issued} {value}; this hub is {expected}: get a token "
                f"from this hub's {endpoint}"
            )
        raise _invalid()


def _check_times(hub: Hub, claims: dict[str, Any]) -> None:
    now = time.time()
    issued_at, expires = claims.get("iat"), claims.get("exp")
    if not _is_time(issued_at) or not _is_time(expires):
        raise _invalid()
    if expires <= now - LEEWAY_SECONDS:
        raise invalid_token("The access token has expired; request a new one")
    if issued_at > now + LEEWAY_SECONDS:
        raise _invalid()
    if expires - issued_at > hub.settings.token_ttl_seconds:
        raise invalid_token(
            "The access token lives longer than this hub allows "
            f"({hub.settings.token_ttl_seconds} s); request a new one"
        )
    not_before = claims.get("nbf")
    if not_before is not None and (not _is_time(not_before) or not_before > now + LEEWAY_SECONDS):
        raise _invalid()


def _citizen(claims: dict[str, Any], scopes: ScopeSet, token_id: str) -> Principal:
    person = claims.get("person")
    if (
        not isinstance(person, str)
        or not _PERSON_KEY.fullmatch(person)
        or claims.get("sub") != f"{CITIZEN}/{person}"
        or scopes.contexts != {"patient"}
    ):
        raise _invalid()
    return Principal.citizen(person, CITIZEN_CLIENT_ID, scopes, token_id)


def _client_principal(
    hub: Hub, claims: dict[str, Any], scopes: ScopeSet, client_id: str, token_id: str
) -> Principal:
    organization, generation = claims.get("organization"), claims.get("gen")
    if (
        not isinstance(organization, str)
        or not _is_whole(generation)
        or "patient" in scopes.contexts
    ):
        raise _invalid()
    with hub.db.snapshot() as session:
        client = get_client(session, client_id)
        if client is None or not client.active:
            raise invalid_token("The client of this access token is unknown or disabled")
        registered = client_scopes(client)
        current = (client.organization, client.generation, client.role, client.break_glass)
    current_organization, current_generation, role, break_glass = current
    if generation != current_generation:
        raise invalid_token(
            "The client of this access token has been re-registered or disabled since it was "
            "issued; request a new one"
        )
    # The client's registration may have changed since the token was issued.
    if current_organization != organization or not scopes.issubset(registered):
        raise invalid_token("The access token no longer matches its client; request a new one")
    return Principal(
        client_id=client_id,
        organization=organization,
        scopes=scopes,
        token_id=token_id,
        kind=role,
        break_glass_allowed=break_glass,
    )


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid() -> FhirError:
    return invalid_token("The access token is invalid; request a new one")

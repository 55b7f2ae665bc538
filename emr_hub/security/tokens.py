"""JWT access tokens (RFC 9068 profile): issued by the token endpoint, checked on every request.

Tokens are signed ES256 with the hub's key (:mod:`emr_hub.security.keys`) and carry the
client, its organization and the granted scopes. Verification is local (signature and claims)
plus one primary-key lookup of the client, so disabling a client cuts off its tokens at once.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import GuestProtocol

from emr_hub.errors import FhirError
from emr_hub.security.clients import check_client_secret, client_scopes, get_client
from emr_hub.security.keys import ALGORITHM, CLOCK_LEEWAY_SECONDS, signing_key, verification_key
from emr_hub.security.principal import Principal, invalid_token
from emr_hub.security.scopes import ScopeSet
from storage.tables import ApiClient

if TYPE_CHECKING:
    from joserfc.jwk import ECKey

    from emr_hub.hub import Hub

TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 "typ" header, not a secret
LEEWAY_SECONDS = CLOCK_LEEWAY_SECONDS
# Far above any token this hub issues; refuses junk before any parsing or crypto.
MAX_TOKEN_LENGTH = 8192


class _UnknownKey(JoseError):
    error = "unknown_key"


class OAuthError(Exception):
    """An RFC 6749 §5.2 error of the token endpoint: ``{"error", "error_description"}``."""

    def __init__(self, error: str, description: str | None = None, status: int = 400) -> None:
        super().__init__(description or error)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


def client_credentials_grant(
    hub: Hub, client_id: str, client_secret: str, scope: str | None
) -> dict[str, Any]:
    """The client credentials grant (RFC 6749 §4.4) after the HTTP request has been parsed.

    Returns the token response body; raises :class:`OAuthError` (``invalid_client``,
    ``invalid_scope``). Blocking (database, scrypt): call it from a worker thread.
    """
    with hub.db.transaction() as session:
        client = get_client(session, client_id)
    # scrypt outside the transaction: on SQLite that transaction holds the write lock.
    client = check_client_secret(client, client_secret)
    if client is None:
        raise OAuthError("invalid_client", "Client authentication failed", status=401)
    registered = client_scopes(client)
    granted = registered
    if scope is not None and scope.strip():
        try:
            granted = ScopeSet.parse(scope)
        except ValueError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if not granted.issubset(registered):
            raise OAuthError(
                "invalid_scope",
                f"The requested scope exceeds what this client is registered for: {registered}",
            )
    token, lifetime = issue_access_token(hub, client, granted)
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": str(granted),
    }


def issue_access_token(
    hub: Hub, client: ApiClient, scopes: ScopeSet, *, now: int | None = None
) -> tuple[str, int]:
    """Sign an access token for ``client`` with ``scopes``; returns (token, lifetime seconds).

    The caller has already checked that ``scopes`` lie within the client's registration.
    ``now`` (Unix seconds) is for tests.
    """
    key = signing_key(hub)
    issued_at = int(time.time()) if now is None else now
    lifetime = hub.settings.token_ttl_seconds
    claims: dict[str, Any] = {
        "iss": hub.settings.base_url,
        "sub": client.client_id,
        "aud": hub.settings.fhir_base_url,
        "client_id": client.client_id,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": str(uuid.uuid4()),
        "scope": str(scopes),
        "organization": client.organization,
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": TOKEN_TYPE}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM]), lifetime


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
        if decoded.header.get("typ") != TOKEN_TYPE:
            raise _invalid()
        claims = decoded.claims
        _claims_registry(hub).validate(claims)
    except ExpiredTokenError:
        raise invalid_token("The access token has expired; request a new one") from None
    except FhirError:
        raise
    except (JoseError, ValueError, TypeError, KeyError):
        raise _invalid() from None

    client_id, token_id, organization = claims["sub"], claims["jti"], claims.get("organization")
    scope_text = claims.get("scope")
    if not isinstance(organization, str) or not isinstance(scope_text, str):
        raise _invalid()
    try:
        scopes = ScopeSet.parse(scope_text)
    except ValueError:
        raise _invalid() from None

    with hub.db.snapshot() as session:
        client = get_client(session, client_id)
        if client is None or not client.active:
            raise invalid_token("The client of this access token is unknown or disabled")
        registered = client_scopes(client)
        current_organization = client.organization
        role, break_glass = client.role, client.break_glass
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


def _claims_registry(hub: Hub) -> jwt.JWTClaimsRegistry:
    return jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": hub.settings.base_url},
        aud={"essential": True, "value": hub.settings.fhir_base_url},
        exp={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
    )


def _invalid() -> FhirError:
    return invalid_token("The access token is invalid; request a new one")

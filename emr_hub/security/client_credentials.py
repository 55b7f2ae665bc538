"""The client credentials grant (RFC 6749 §4.4) once the HTTP request has been read: throttle,
authenticate the client (signed assertion, or secret while secrets are enabled), narrow the
scopes, issue the token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emr_hub.security import assertions, throttle
from emr_hub.security.clients import check_client_secret, client_scopes, load_client
from emr_hub.security.oauth import INVALID_SCOPE, THROTTLED, OAuthError, invalid_client
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token

if TYPE_CHECKING:
    from emr_hub.hub import Hub
    from storage.tables import ApiClient


@dataclass(frozen=True)
class TokenRequest:
    """A well-formed token request: exactly one of ``secret`` and ``assertion`` is set."""

    client_id: str
    """The client id the request claims (Basic, form ``client_id`` or the assertion's
    ``iss``); not authenticated yet."""
    scope: str | None = None
    secret: str | None = field(default=None, repr=False)
    assertion: str | None = field(default=None, repr=False)


def grant_token(hub: Hub, request: TokenRequest, address: str | None) -> dict[str, Any]:
    """The token response body, or :class:`OAuthError`. Blocking (database, scrypt, perhaps
    a fetch of the client's keys): call it from a worker thread."""
    wait = throttle.retry_after(hub, request.client_id, address)
    if wait is not None:
        raise OAuthError(
            THROTTLED,
            f"Too many failed token requests from this client or address; retry in {wait} s",
            status=429,
            retry_after=wait,
        )
    if request.assertion is not None:
        client = assertions.authenticate(hub, request.assertion)
    else:
        client = _authenticate_with_secret(hub, request.client_id, request.secret or "")
    granted = _granted_scopes(client, request.scope)
    token, lifetime = issue_access_token(hub, client, granted)
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": str(granted),
    }


def _authenticate_with_secret(hub: Hub, client_id: str, secret: str) -> ApiClient:
    if not hub.settings.client_secret_auth:
        raise invalid_client(
            "Client secrets are turned off on this hub (EMR_HUB_CLIENT_SECRET_AUTH=false): "
            "authenticate with a JWT assertion signed by the client's registered key "
            "(client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer)"
        )
    client = load_client(hub.db, client_id)
    # scrypt outside the transaction; it runs for unknown clients too (timing).
    authenticated = check_client_secret(client, secret)
    if authenticated is None:
        raise invalid_client("Client authentication failed")
    return authenticated


def _granted_scopes(client: ApiClient, scope: str | None) -> ScopeSet:
    registered = client_scopes(client)
    if scope is None or not scope.strip():
        return registered
    try:
        granted = ScopeSet.parse(scope)
    except ValueError as exc:
        raise OAuthError(INVALID_SCOPE, str(exc)) from None
    if "patient" in granted.contexts:
        raise OAuthError(
            INVALID_SCOPE, "patient/ scopes are for citizens' tokens; ask for system/ scopes"
        )
    if not granted.issubset(registered):
        raise OAuthError(
            INVALID_SCOPE,
            f"The requested scope exceeds what this client is registered for: {registered}",
        )
    return granted

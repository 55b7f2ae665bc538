"""Who is calling: the client behind a verified access token, and the check of its scopes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, forbidden, unauthorized
from emr_hub.security.scopes import ScopeSet

INTERACTION_WORDS = {
    "c": "create",
    "r": "read",
    "u": "update",
    "d": "delete",
    "s": "search",
}


@dataclass(frozen=True)
class Principal:
    """The authenticated API client a request acts for."""

    client_id: str
    organization: str
    scopes: ScopeSet
    token_id: str

    def allows(self, resource_type: str, interaction: str) -> bool:
        return self.scopes.allows(resource_type, interaction)

    def require(self, resource_type: str, interaction: str) -> None:
        """Raise 403 unless the token grants ``interaction`` (c r u d s) on ``resource_type``."""
        if self.scopes.allows(resource_type, interaction):
            return
        needed = f"system/{resource_type}.{interaction}"
        error = forbidden(
            f"Scope {needed} (or a wider one) is needed to "
            f"{INTERACTION_WORDS[interaction]} {resource_type}"
        )
        # RFC 6750 §3.1: tell the client which scope would have been enough.
        error.headers["WWW-Authenticate"] = (
            f'Bearer realm="emr_hub", error="insufficient_scope", scope="{needed}"'
        )
        raise error


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or 401."""
    if not authorization:
        raise unauthorized(
            "An access token is needed: send 'Authorization: Bearer <token>' "
            "(tokens come from the /auth/token endpoint)"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise invalid_token("The Authorization header must be 'Bearer <token>'")
    return token


def invalid_token(message: str) -> FhirError:
    """A 401 whose WWW-Authenticate carries ``error="invalid_token"`` (RFC 6750 §3.1)."""
    error = unauthorized(message)
    error.headers["WWW-Authenticate"] = 'Bearer realm="emr_hub", error="invalid_token"'
    return error


def current_principal(request: Request, hub: HubDep) -> Principal:
    """FastAPI dependency: the principal of the request's bearer token, or 401.

    A plain ``def`` so FastAPI runs it in the thread pool: verification reads the database.
    """
    from emr_hub.security.tokens import verify_access_token

    token = bearer_token(request.headers.get("authorization"))
    return verify_access_token(hub, token)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


# The operator at the command line (``emr-hub import``, ``emr-hub demo``): local access to the
# database already implies every permission, so the CLI acts with all of them.
OPERATOR = Principal(
    "emr-hub-cli", "Organization/operator", ScopeSet.parse("system/*.cruds"), "cli"
)

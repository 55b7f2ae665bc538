"""Who is calling: the principal behind a verified access token, and the check of its scopes.

Three kinds of principal:

* ``hospital``: an API client of a hospital's information system, tied to its Organization.
  What it may see and change is decided by the access policy (:mod:`emr_hub.security.policy`).
  A request may name the practitioner the system acts for (``X-Acting-Practitioner``): it is
  recorded in the audit trail and never widens access.
* ``operator``: a client registered with the operator role (or the command line, which has
  local access to the database anyway): sees and changes everything, audited like any other.
* ``citizen``: a person reading her own record, identified by the person key of her national
  ID (:func:`emr_hub.fhir.persons.person_of`); she sees every resource about her, whichever
  hospital posted it, and writes only her own Consents.

The per-request facts (acting practitioner, purpose of use, the break-the-glass reason, the
request's audit trail) ride on the principal too, so every layer that checks scopes also has
what the audit and the policy need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, forbidden, unauthorized
from emr_hub.security.scopes import ScopeSet

if TYPE_CHECKING:
    from emr_hub.security.audit.trail import AuditTrail

HOSPITAL = "hospital"
OPERATOR_ROLE = "operator"
CITIZEN = "citizen"
KINDS = (HOSPITAL, OPERATOR_ROLE, CITIZEN)

TREATMENT = "TREAT"
EMERGENCY_TREATMENT = "ETREAT"
"""Purposes of use (HL7 v3 ActReason): ordinary treatment, and emergency treatment, the purpose a
break-the-glass request states."""

INTERACTION_WORDS = {
    "c": "create",
    "r": "read",
    "u": "update",
    "d": "delete",
    "s": "search",
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller a request acts for."""

    client_id: str
    organization: str | None
    """``Organization/<id>`` of a hospital or operator client; None for a citizen and for the
    command-line operator."""
    scopes: ScopeSet
    token_id: str
    kind: str = HOSPITAL
    person: str | None = None
    """A citizen's person key."""
    break_glass_allowed: bool = False
    """The client is registered as allowed to break the glass."""
    practitioner: str | None = None
    """``system|value`` of the practitioner the hospital acts for (``X-Acting-Practitioner``)."""
    purpose: str = TREATMENT
    break_glass_reason: str | None = None
    """The stated reason of a break-the-glass request (with purpose ``ETREAT``)."""
    trail: AuditTrail | None = field(default=None, compare=False, repr=False)
    """What the request touched, for its audit record (None outside an HTTP request)."""

    @classmethod
    def citizen(
        cls,
        person: str,
        client_id: str,
        scopes: ScopeSet,
        token_id: str,
        *,
        trail: AuditTrail | None = None,
    ) -> Principal:
        """A citizen reading her own record as ``client_id`` (her token, her health book's
        session, a health link, the wallet push): no hospital, her person key."""
        return cls(client_id, None, scopes, token_id, kind=CITIZEN, person=person, trail=trail)

    @property
    def is_operator(self) -> bool:
        return self.kind == OPERATOR_ROLE

    @property
    def is_citizen(self) -> bool:
        return self.kind == CITIZEN

    @property
    def breaking_glass(self) -> bool:
        return self.purpose == EMERGENCY_TREATMENT and self.break_glass_reason is not None

    def allows(self, resource_type: str, interaction: str) -> bool:
        return self.scopes.allows(resource_type, interaction)

    def require(self, resource_type: str, interaction: str) -> None:
        """Raise 403 unless the token grants ``interaction`` (c r u d s) on ``resource_type``."""
        if self.scopes.allows(resource_type, interaction):
            return
        context = "patient" if self.is_citizen else "system"
        needed = f"{context}/{resource_type}.{interaction}"
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


async def current_principal(request: Request, hub: HubDep) -> Principal:
    """FastAPI dependency: the principal of the request's bearer token, or 401; with the
    request's own facts (acting practitioner, purpose of use, audit trail) attached."""
    from emr_hub.security.request import principal_for_request

    return await principal_for_request(request, hub)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


# The operator at the command line (``emr-hub import``, ``emr-hub demo``): local access to the
# database already implies every permission, so the CLI acts with all of them.
OPERATOR = Principal(
    "emr-hub-cli", None, ScopeSet.parse("system/*.cruds"), "cli", kind=OPERATOR_ROLE
)

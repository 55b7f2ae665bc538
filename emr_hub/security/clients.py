"""API clients (hospital systems) that may ask the token endpoint for access tokens.

Each client belongs to one ``Organization`` and is registered with the widest scopes it may
ever get; a token request can narrow them but never widen them. A client authenticates
either with a secret (only a scrypt hash is stored; the secret is shown once, when it is
made) or, as SMART Backend Services want, with a JWT signed by one of its keys: the public
JWK Set is registered with the client, or the URL where the client publishes it.

Every client has a registration ``generation``, carried in its access tokens. Re-registering
or disabling the client raises it, so tokens issued before stop working at once.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emr_hub.security.client_keys import check_jwks_url, parse_jwks
from emr_hub.security.principal import HOSPITAL, OPERATOR_ROLE
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.secrets import dummy_hash, hash_secret, verify_secret
from storage.db import Database
from storage.tables import ApiClient, ResourceRow

CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ORGANIZATION = re.compile(r"Organization/[A-Za-z0-9\-.]{1,64}")
RESERVED_CLIENT_IDS = frozenset({"citizen", "operator", "emr-hub-cli"})
"""Names the hub uses for principals that are not clients (citizens' tokens, the operator of
the command line, provenance of versions the operator wrote)."""


class ClientExists(Exception):
    """A client with this id is already registered."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"API client {client_id!r} already exists")
        self.client_id = client_id


@dataclass(frozen=True)
class Registration:
    """What a client is registered with: everything ``emr-hub client add`` sets."""

    organization: str
    scopes: ScopeSet
    jwks: dict[str, Any] | None = None
    """A public JWK Set, already checked by :func:`~emr_hub.security.client_keys.parse_jwks`."""
    jwks_url: str | None = None
    role: str = HOSPITAL
    break_glass: bool = False


def check_client_id(client_id: str) -> None:
    if not CLIENT_ID.fullmatch(client_id):
        raise ValueError(
            f"Invalid client id {client_id!r}: 1 to 128 letters, digits, '-', '_' or '.'"
        )
    if client_id in RESERVED_CLIENT_IDS:
        raise ValueError(f"Client id {client_id!r} is reserved by the hub; choose another")


def check_organization(organization: str) -> None:
    if not ORGANIZATION.fullmatch(organization):
        raise ValueError(
            f"Invalid organization {organization!r}: expected Organization/<id>, "
            "e.g. Organization/bv-bach-mai"
        )


def check_organization_stored(session: Session, organization: str) -> None:
    """Refuse an Organization the hub does not hold (or holds deleted)."""
    check_organization(organization)
    organization_id = organization.partition("/")[2]
    row = session.get(ResourceRow, ("Organization", organization_id))
    if row is None or row.deleted:
        state = "is deleted" if row is not None else "is not stored in the hub"
        raise ValueError(
            f"{organization} {state}: post the hospital's Organization resource first "
            "(PUT /fhir/Organization/<id>, or emr-hub import)"
        )


def get_client(session: Session, client_id: str) -> ApiClient | None:
    if not CLIENT_ID.fullmatch(client_id):
        return None
    return session.get(ApiClient, client_id)


def load_client(db: Database, client_id: str) -> ApiClient | None:
    """The client, read on a snapshot (no write lock) and detached, for use after it."""
    with db.snapshot() as session:
        client = get_client(session, client_id)
        if client is not None:
            session.expunge(client)  # the snapshot's rollback would expire it otherwise
        return client


def register_client(
    session: Session, client_id: str, registration: Registration, *, replace: bool = False
) -> str | None:
    """Register a client; returns its new secret (shown once, never stored in clear), or
    None for a client registered with public keys, which has no secret.

    With ``replace``, an existing client is re-registered instead: organization, scopes,
    keys or secret, role and break-the-glass flag are all replaced, its generation is raised
    (its tokens stop working) and its active flag is kept.

    Raises :class:`ValueError` for malformed input or an Organization the hub does not
    hold, and :class:`ClientExists` when the id is taken (without ``replace``).
    """
    _check_registration(client_id, registration)
    check_organization_stored(session, registration.organization)
    existing = session.get(ApiClient, client_id)
    if existing is not None and not replace:
        raise ClientExists(client_id)
    secret = None if _has_keys(registration) else secrets.token_urlsafe(32)
    secret_hash = hash_secret(secret) if secret is not None else None
    if existing is None:
        session.add(_new_client(client_id, registration, secret_hash))
    else:
        existing.organization = registration.organization
        existing.scopes = str(registration.scopes)
        existing.secret_hash = secret_hash
        existing.jwks = registration.jwks
        existing.jwks_url = registration.jwks_url
        existing.role = registration.role
        existing.break_glass = registration.break_glass
        existing.generation += 1
        session.add(existing)
    try:
        session.flush()
    except IntegrityError as exc:  # registered concurrently since the check above
        raise ClientExists(client_id) from exc
    return secret


def ensure_client(
    session: Session, client_id: str, organization: str, scopes: ScopeSet
) -> str | None:
    """Create a secret client unless it exists; the new secret, or None when nothing was
    created. For the demo network and tests: the Organization is not looked up (the demo
    writes it in the same transaction).

    An existing client is left as it is (organization, scopes, secret and active flag).
    """
    registration = Registration(organization, scopes)
    _check_registration(client_id, registration)
    if session.get(ApiClient, client_id) is not None:
        return None
    secret = secrets.token_urlsafe(32)
    client = _new_client(client_id, registration, hash_secret(secret))
    try:
        # A savepoint, so losing a race with another process keeps the outer transaction usable.
        with session.begin_nested():
            session.add(client)
    except IntegrityError:
        return None
    return secret


def authenticate_client(session: Session, client_id: str, secret: str) -> ApiClient | None:
    """The active client whose secret this is, or None."""
    return check_client_secret(get_client(session, client_id), secret)


def check_client_secret(client: ApiClient | None, secret: str) -> ApiClient | None:
    """``client`` if it is active and ``secret`` is its secret, else None.

    Pure CPU work, so callers on SQLite can run it after their (write-locking) transaction.
    The scrypt check runs even when there is no client or the client has no secret (against
    a dummy hash), so the response time does not reveal which client ids exist.
    """
    if client is None or client.secret_hash is None:
        verify_secret(secret, dummy_hash())
        return None
    if not verify_secret(secret, client.secret_hash) or not client.active:
        return None
    return client


def set_client_active(session: Session, client_id: str, active: bool) -> bool:
    """Enable or disable a client; False when there is no such client.

    A disabled client gets no new tokens, and its outstanding tokens stop working at once.
    Disabling also raises the generation, so enabling the client again does not bring its
    old tokens back.
    """
    client = get_client(session, client_id)
    if client is None:
        return False
    if client.active and not active:
        client.generation += 1
    client.active = active
    session.add(client)
    session.flush()
    return True


def client_scopes(client: ApiClient) -> ScopeSet:
    """The scopes the client was registered with."""
    return ScopeSet.parse(client.scopes)


def has_public_keys(client: ApiClient) -> bool:
    """The client authenticates with signed assertions (a registered JWK Set or URL)."""
    return client.jwks is not None or client.jwks_url is not None


def _has_keys(registration: Registration) -> bool:
    return registration.jwks is not None or registration.jwks_url is not None


def _check_registration(client_id: str, registration: Registration) -> None:
    check_client_id(client_id)
    check_organization(registration.organization)
    scopes = registration.scopes
    if not scopes:
        raise ValueError("A client needs at least one scope, e.g. system/Patient.rs")
    if "patient" in scopes.contexts:
        raise ValueError(
            "patient/ scopes are for citizens' tokens; register a client with system/ scopes"
        )
    if registration.role not in (HOSPITAL, OPERATOR_ROLE):
        raise ValueError(f"A client's role is {HOSPITAL} or {OPERATOR_ROLE}")
    if registration.jwks is not None and registration.jwks_url is not None:
        raise ValueError("Register a JWK Set or a JWKS URL, not both")
    if registration.jwks is not None:
        parse_jwks(registration.jwks)
    if registration.jwks_url is not None:
        check_jwks_url(registration.jwks_url)


def _new_client(client_id: str, registration: Registration, secret_hash: str | None) -> ApiClient:
    return ApiClient(
        client_id=client_id,
        secret_hash=secret_hash,
        organization=registration.organization,
        scopes=str(registration.scopes),
        created_at=datetime.now(UTC),
        active=True,
        role=registration.role,
        break_glass=registration.break_glass,
        jwks=registration.jwks,
        jwks_url=registration.jwks_url,
        generation=1,
    )

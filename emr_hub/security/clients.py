"""API clients (hospital systems) that may ask the token endpoint for access tokens.

Each client belongs to one ``Organization`` and is registered with the widest scopes it may
ever get; a token request can narrow them but never widen them. Only a scrypt hash of the
secret is stored: the secret itself is shown once, when the client is created.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emr_hub.security.scopes import ScopeSet
from emr_hub.security.secrets import dummy_hash, hash_secret, verify_secret
from storage.tables import ApiClient

CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ORGANIZATION = re.compile(r"Organization/[A-Za-z0-9\-.]{1,64}")


class ClientExists(Exception):
    """A client with this id is already registered."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"API client {client_id!r} already exists")
        self.client_id = client_id


def check_client_id(client_id: str) -> None:
    if not CLIENT_ID.fullmatch(client_id):
        raise ValueError(
            f"Invalid client id {client_id!r}: 1 to 128 letters, digits, '-', '_' or '.'"
        )


def check_organization(organization: str) -> None:
    if not ORGANIZATION.fullmatch(organization):
        raise ValueError(
            f"Invalid organization {organization!r}: expected Organization/<id>, "
            "e.g. Organization/bv-bach-mai"
        )


def get_client(session: Session, client_id: str) -> ApiClient | None:
    if not CLIENT_ID.fullmatch(client_id):
        return None
    return session.get(ApiClient, client_id)


def register_client(session: Session, client_id: str, organization: str, scopes: ScopeSet) -> str:
    """Create a client and return its new secret (shown once, never stored in clear).

    Raises :class:`ValueError` for a malformed id, organization or empty scopes, and
    :class:`ClientExists` when the id is taken.
    """
    _check_new_client(client_id, organization, scopes)
    if session.get(ApiClient, client_id) is not None:
        raise ClientExists(client_id)
    client, secret = _new_client(client_id, organization, scopes)
    session.add(client)
    try:
        session.flush()
    except IntegrityError as exc:  # registered concurrently since the check above
        raise ClientExists(client_id) from exc
    return secret


def ensure_client(
    session: Session, client_id: str, organization: str, scopes: ScopeSet
) -> str | None:
    """Create the client unless it exists; the new secret, or None when nothing was created.

    An existing client is left as it is (organization, scopes, secret and active flag).
    """
    _check_new_client(client_id, organization, scopes)
    if session.get(ApiClient, client_id) is not None:
        return None
    client, secret = _new_client(client_id, organization, scopes)
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
    The scrypt check runs even when there is no client (against a dummy hash), so the
    response time does not reveal which client ids exist.
    """
    if client is None:
        verify_secret(secret, dummy_hash())
        return None
    if not verify_secret(secret, client.secret_hash) or not client.active:
        return None
    return client


def set_client_active(session: Session, client_id: str, active: bool) -> bool:
    """Enable or disable a client; False when there is no such client.

    A disabled client gets no new tokens, and its outstanding tokens stop working at once
    (token verification looks the client up).
    """
    client = get_client(session, client_id)
    if client is None:
        return False
    client.active = active
    session.add(client)
    session.flush()
    return True


def client_scopes(client: ApiClient) -> ScopeSet:
    """The scopes the client was registered with."""
    return ScopeSet.parse(client.scopes)


def _check_new_client(client_id: str, organization: str, scopes: ScopeSet) -> None:
    check_client_id(client_id)
    check_organization(organization)
    if not scopes:
        raise ValueError("A client needs at least one scope, e.g. system/Patient.rs")
    if "patient" in scopes.contexts:
        raise ValueError(
            "patient/ scopes are for citizens' tokens; register a client with system/ scopes"
        )


def _new_client(client_id: str, organization: str, scopes: ScopeSet) -> tuple[ApiClient, str]:
    secret = secrets.token_urlsafe(32)
    client = ApiClient(
        client_id=client_id,
        secret_hash=hash_secret(secret),
        organization=organization,
        scopes=str(scopes),
        created_at=datetime.now(UTC),
        active=True,
    )
    return client, secret

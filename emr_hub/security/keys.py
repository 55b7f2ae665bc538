"""The hub's token signing key (ES256 on P-256), kept in the ``signing_key`` table.

API processes are stateless, so the key lives in the database and every process signs with
the same one: the oldest active row. The first process to need a key when there is none
makes it; creation is serialised (PostgreSQL advisory lock, SQLite's ``BEGIN IMMEDIATE``)
and the oldest active row is read back afterwards, so racing processes still agree.

Keys are cached per :class:`~storage.db.Database`, i.e. per Hub. The ``kid`` is the RFC 7638
thumbprint of the public key. Verification accepts any active key by ``kid``, which leaves
room for rotation: add a new row, and once old tokens have expired, deactivate the old one
(processes that cached it keep it until restart).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from joserfc.jwk import ECKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from storage.db import Database
from storage.tables import SigningKey

if TYPE_CHECKING:
    from emr_hub.hub import Hub

ALGORITHM = "ES256"
CURVE = "P-256"
PUBLIC_MEMBERS = ("kty", "crv", "x", "y")
# Arbitrary constant naming the "create the signing key" advisory lock ("emrkey" in ASCII).
_ADVISORY_LOCK_ID = 0x656D726B6579


@dataclass
class _KeyRing:
    lock: threading.Lock = field(default_factory=threading.Lock)
    signing: ECKey | None = None
    public: dict[str, ECKey] = field(default_factory=dict)


_rings: WeakKeyDictionary[Database, _KeyRing] = WeakKeyDictionary()
_rings_lock = threading.Lock()


def signing_key(hub: Hub) -> ECKey:
    """The private key this hub signs tokens with (``kid`` set), made on first use."""
    ring = _ring(hub.db)
    key = ring.signing
    if key is not None:
        return key
    with ring.lock:
        if ring.signing is None:
            key = _load_or_create(hub.db)
            ring.public[_kid(key)] = _public(key)
            ring.signing = key
        return ring.signing


def verification_key(hub: Hub, kid: str) -> ECKey | None:
    """The public key with this ``kid`` if it is an active ES256 key, else None."""
    ring = _ring(hub.db)
    key = ring.public.get(kid)
    if key is not None:
        return key
    if not kid or len(kid) > 64:
        return None
    with hub.db.transaction() as session:
        row = session.get(SigningKey, kid)
        if row is None or not row.active or row.algorithm != ALGORITHM:
            return None
        private_jwk = dict(row.private_jwk)
    key = _public(_import(private_jwk, kid))
    with ring.lock:
        ring.public[kid] = key
    return key


def public_jwks(hub: Hub) -> dict[str, Any]:
    """The JWK Set of every active signing key, public members only."""
    signing_key(hub)
    with hub.db.transaction() as session:
        rows = _active_rows(session)
        stored = [(row.kid, dict(row.private_jwk)) for row in rows]
    return {"keys": [public_jwk(_import(jwk, kid)) for kid, jwk in stored]}


def public_jwk(key: ECKey) -> dict[str, Any]:
    """The public JWK of ``key``, built from an allow-list so no private member slips in."""
    members = key.as_dict(private=False)
    jwk: dict[str, Any] = {name: members[name] for name in PUBLIC_MEMBERS}
    jwk.update(kid=_kid(key), use="sig", alg=ALGORITHM)
    return jwk


def _ring(db: Database) -> _KeyRing:
    with _rings_lock:
        ring = _rings.get(db)
        if ring is None:
            ring = _rings[db] = _KeyRing()
        return ring


def _load_or_create(db: Database) -> ECKey:
    with db.transaction() as session:
        row = _oldest_active(session)
        if row is not None:
            return _import(dict(row.private_jwk), row.kid)
        if db.dialect == "postgresql":
            # Held until commit; whoever waits here then sees the key the holder inserted.
            session.execute(
                text("SELECT pg_advisory_xact_lock(CAST(:lock_id AS bigint))"),
                {"lock_id": _ADVISORY_LOCK_ID},
            )
            row = _oldest_active(session)
        if row is None:
            session.add(_new_key_row())
    # Read back rather than trust our own insert: if another process won a race (or an
    # older key exists), everybody converges on the same, oldest, active key.
    with db.transaction() as session:
        row = _oldest_active(session)
        if row is None:  # pragma: no cover - only if the key was deactivated meanwhile
            raise RuntimeError("no active signing key after creating one")
        return _import(dict(row.private_jwk), row.kid)


def _new_key_row() -> SigningKey:
    key = ECKey.generate_key(CURVE, parameters={"use": "sig", "alg": ALGORITHM})
    kid = key.thumbprint()
    return SigningKey(
        kid=kid,
        algorithm=ALGORITHM,
        private_jwk=dict(key.as_dict(private=True, kid=kid)),
        created_at=datetime.now(UTC),
        active=True,
    )


def _active_rows(session: Session) -> list[SigningKey]:
    statement = (
        select(SigningKey)
        .where(col(SigningKey.active).is_(True), col(SigningKey.algorithm) == ALGORITHM)
        .order_by(col(SigningKey.created_at), col(SigningKey.kid))
    )
    return list(session.scalars(statement))


def _oldest_active(session: Session) -> SigningKey | None:
    statement = (
        select(SigningKey)
        .where(col(SigningKey.active).is_(True), col(SigningKey.algorithm) == ALGORITHM)
        .order_by(col(SigningKey.created_at), col(SigningKey.kid))
        .limit(1)
    )
    return session.scalars(statement).first()


def _import(jwk: dict[str, Any], kid: str) -> ECKey:
    key = ECKey.import_key({**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})
    if key.curve_name != CURVE or key.thumbprint() != kid:
        raise ValueError(f"signing_key row {kid!r} does not hold the P-256 key its kid names")
    return key


def _public(key: ECKey) -> ECKey:
    return ECKey.import_key(public_jwk(key))


def _kid(key: ECKey) -> str:
    kid = key.kid
    if not kid:  # pragma: no cover - every key here is imported with its kid
        raise ValueError("signing key without kid")
    return kid

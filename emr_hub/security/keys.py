"""The hub's token signing keys (ES256 on P-256), kept in the ``signing_key`` table.

API processes are stateless, so the keys live in the database and every process signs with
the same one: the oldest active key that is not retiring. The first process to need a key
when there is none makes it. Creation, rotation and sealing are serialised (PostgreSQL
advisory lock, SQLite's ``BEGIN IMMEDIATE``) and processes read the rows back afterwards, so
racing processes still agree.

Private keys are sealed with the key-encryption key (:mod:`emr_hub.security.sealing`); rows
from before sealing existed are sealed the first time a process signs. Verification needs
the public keys only, so it never needs the key-encryption key.

Rotation (:func:`rotate_signing_key`) makes a new signer and gives every older key a
``retires_at``: the moment the last token it can have signed has expired (token lifetime,
clock leeway, and the refresh interval during which other processes may still sign with it).
Until then it is served in the JWKS and accepted; after, it is neither, and the next
process to look retires it for good (inactive, private key deleted).

Each process keeps the keys in memory and re-reads them every
``EMR_HUB_SIGNING_KEY_REFRESH_SECONDS``, so a rotation reaches every process within that time.
A token whose ``kid`` is not in memory is looked up in the database at once, so tokens signed
by a key newer than this process's copy verify immediately.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from joserfc.jwk import ECKey
from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.security.refreshed import PerDatabase, Refreshed
from emr_hub.security.sealing import KeyEncryptionKey, key_encryption_key, seal, unseal
from storage.db import Database, as_utc
from storage.tables import SigningKey

if TYPE_CHECKING:
    from emr_hub.hub import Hub

ALGORITHM = "ES256"
CURVE = "P-256"
PUBLIC_MEMBERS = ("kty", "crv", "x", "y")
CLOCK_LEEWAY_SECONDS = 30
"""The clock skew token verification allows on ``exp`` and ``iat``."""
MAX_KID_LENGTH = 64
_KID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_KID_LENGTH}}}")
"""A kid is an RFC 7638 thumbprint (base64url); anything else is no key of ours."""
# Arbitrary constant naming the "change the signing keys" advisory lock ("emrkey" in ASCII).
_ADVISORY_LOCK_ID = 0x656D726B6579

SIGNING = "signing"
VERIFYING = "verifying"
RETIRED = "retired"


@dataclass(frozen=True)
class _Verifier:
    key: ECKey
    retires_at: datetime | None

    def valid_at(self, moment: datetime) -> bool:
        return self.retires_at is None or moment < self.retires_at


@dataclass
class _KeyRing:
    signing: Refreshed[ECKey] = field(default_factory=Refreshed)
    public: Refreshed[dict[str, _Verifier]] = field(default_factory=Refreshed)

    def forget(self) -> None:
        self.signing.forget()
        self.public.forget()


@dataclass(frozen=True)
class KeyInfo:
    """What ``emr-hub keys list`` shows of a key (no key material)."""

    kid: str
    created_at: datetime
    state: str
    retires_at: datetime | None


_rings = PerDatabase(_KeyRing)


def signing_key(hub: Hub) -> ECKey:
    """The private key this hub signs tokens with now (``kid`` set); made on first use.

    Raises :class:`~emr_hub.security.sealing.SealingError` when the key-encryption key is
    missing or wrong.
    """
    refresh = hub.settings.signing_key_refresh_seconds
    return _rings.of(hub.db).signing.get(refresh, lambda: _load_signer(hub))


def verification_key(hub: Hub, kid: str) -> ECKey | None:
    """The public key with this ``kid`` if it may verify tokens now, else None."""
    if not _KID.fullmatch(kid):
        return None
    moment = datetime.now(UTC)
    public = _fresh_public(hub)
    verifier = public.get(kid)
    if verifier is None:
        # Perhaps a key made since this process last read them (a rotation elsewhere).
        with hub.db.snapshot() as session:
            row = session.get(SigningKey, kid)
            verifier = _verifier(row, moment) if row is not None else None
        if verifier is None:
            return None
        public[kid] = verifier  # one item: the readers see it whole, or not yet
    return verifier.key if verifier.valid_at(moment) else None


def public_jwks(hub: Hub) -> dict[str, Any]:
    """The JWK Set of every key that verifies tokens now, public members only (the first
    key is made if there is none yet)."""
    moment = datetime.now(UTC)
    # sorted() copies the cached dict in one step: a kid verification_key adds meanwhile
    # cannot change it under the loop below
    verifiers = sorted(_fresh_public(hub).items())
    if not any(verifier.valid_at(moment) for _, verifier in verifiers):
        signing_key(hub)
        _rings.of(hub.db).forget()
        verifiers = sorted(_fresh_public(hub).items())
    return {
        "keys": [public_jwk(verifier.key) for _, verifier in verifiers if verifier.valid_at(moment)]
    }


PublishedKeys = Callable[["Hub"], list[dict[str, Any]]]
_also_published: dict[str, PublishedKeys] = {}


def publish_in_jwks(name: str, keys: PublishedKeys) -> None:
    """Have ``/.well-known/jwks.json`` also serve the public JWKs ``keys(hub)`` returns: the
    keys of a feature that signs something other than access tokens (the health cards).
    Those keys never verify a token: :func:`verification_key` reads ``signing_key`` only."""
    _also_published[name] = keys


def served_jwks(hub: Hub) -> dict[str, Any]:
    """The JWK Set the hub publishes: the token keys (:func:`public_jwks`), then the keys
    features publish (:func:`publish_in_jwks`)."""
    keys = list(public_jwks(hub)["keys"])
    for published in _also_published.values():
        keys.extend(published(hub))
    return {"keys": keys}


def public_jwk(key: ECKey) -> dict[str, Any]:
    """The public JWK of ``key``, built from an allow-list so no private member slips in."""
    members = key.as_dict(private=False)
    jwk: dict[str, Any] = {name: members[name] for name in PUBLIC_MEMBERS}
    jwk.update(kid=_kid(key), use="sig", alg=ALGORITHM)
    return jwk


def rotate_signing_key(hub: Hub, *, now: datetime | None = None) -> tuple[str, datetime]:
    """Make a new signer; the keys signing until now keep verifying until the returned
    moment. Returns (the new kid, that moment). ``now`` is for tests."""
    moment = now or datetime.now(UTC)
    retires_at = moment + timedelta(seconds=retention_seconds(hub))
    kek = key_encryption_key(hub.settings)
    with hub.db.transaction() as session:
        lock_key_changes(hub.db, session)
        _seal_plain_rows(session, hub)
        for row in _active_rows(session):
            if row.sealed_private is not None:
                # A new key sealed with another KEK than the current ones would be one the
                # other processes cannot open: prove this KEK opens them first.
                unseal(kek, row.kid, row.sealed_private)
            if row.retires_at is None:
                row.retires_at = retires_at
        new = _new_key_row(kek, moment)
        session.add(new)
    _rings.of(hub.db).forget()
    return new.kid, retires_at


def retention_seconds(hub: Hub) -> int:
    """How long a rotated-out key keeps verifying: until every token it signed has expired."""
    settings = hub.settings
    return settings.token_ttl_seconds + CLOCK_LEEWAY_SECONDS + settings.signing_key_refresh_seconds


def list_keys(hub: Hub) -> list[KeyInfo]:
    """Every key row, oldest first, with its state now."""
    moment = datetime.now(UTC)
    with hub.db.snapshot() as session:
        rows = [
            (row.kid, row.active, as_utc(row.created_at), row.retires_at)
            for row in session.scalars(select(SigningKey).order_by(*_AGE_ORDER))
        ]
    signer = next((kid for kid, active, _, retires in rows if active and retires is None), None)
    infos = []
    for kid, active, created_at, retires in rows:
        retires_at = as_utc(retires) if retires is not None else None
        if not active or (retires_at is not None and retires_at <= moment):
            state = RETIRED
        elif kid == signer:
            state = SIGNING
        else:
            state = VERIFYING
        infos.append(KeyInfo(kid, created_at, state, retires_at))
    return infos


def _fresh_public(hub: Hub) -> dict[str, _Verifier]:
    """The keys that verify tokens, by kid, as this process last read them (in the interval)."""
    refresh = hub.settings.signing_key_refresh_seconds
    return _rings.of(hub.db).public.get(refresh, lambda: _read_verifiers(hub))


def _read_verifiers(hub: Hub) -> dict[str, _Verifier]:
    moment = datetime.now(UTC)
    with hub.db.snapshot() as session:
        verifiers = {row.kid: _verifier(row, moment) for row in _active_rows(session)}
    return {kid: v for kid, v in verifiers.items() if v is not None}


def _load_signer(hub: Hub) -> ECKey:
    """Read the signer, after sealing clear rows, retiring expired keys and making the first
    key, if any of that is due."""
    kek = key_encryption_key(hub.settings)
    moment = datetime.now(UTC)
    with hub.db.snapshot() as session:
        row = _signer_row(session)
        ready = (
            row is not None
            and row.sealed_private is not None
            and not _maintenance_due(session, moment)
        )
        sealed = (row.kid, row.sealed_private) if row is not None and ready else None
    if sealed is None:
        with hub.db.transaction() as session:
            lock_key_changes(hub.db, session)
            _seal_plain_rows(session, hub)
            _retire_expired(session, moment)
            row = _signer_row(session)
            if row is None:
                row = _new_key_row(kek, moment)
                session.add(row)
            sealed = (row.kid, row.sealed_private)
    kid, sealed_private = sealed
    if sealed_private is None:  # pragma: no cover - sealed above, in the same transaction
        raise RuntimeError(f"signing key {kid} is not sealed")
    return import_private(unseal(kek, kid, sealed_private), kid)


def _maintenance_due(session: Session, moment: datetime) -> bool:
    """Clear rows to seal, or retiring keys past their time still holding a private key."""
    statement = (
        select(SigningKey.kid)
        .where(
            or_(
                col(SigningKey.private_jwk).is_not(None),
                (col(SigningKey.retires_at) <= moment)
                & or_(
                    col(SigningKey.active).is_(True), col(SigningKey.sealed_private).is_not(None)
                ),
            )
        )
        .limit(1)
    )
    return session.scalars(statement).first() is not None


def lock_key_changes(db: Database, session: Session, lock_id: int = _ADVISORY_LOCK_ID) -> None:
    """Serialise the changes of one key table: on PostgreSQL the advisory lock ``lock_id``
    held until commit; on SQLite the transaction's ``BEGIN IMMEDIATE`` already holds the
    write lock."""
    if db.dialect == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:lock_id AS bigint))"), {"lock_id": lock_id}
        )


def _seal_plain_rows(session: Session, hub: Hub) -> None:
    """Seal the private keys stored in clear (rows from before sealing existed)."""
    rows = list(session.scalars(select(SigningKey).where(col(SigningKey.private_jwk).is_not(None))))
    if not rows:
        return
    kek = key_encryption_key(hub.settings)
    for row in rows:
        private_jwk = dict(row.private_jwk or {})
        key = import_private(private_jwk, row.kid)
        row.sealed_private = seal(kek, row.kid, private_members(key))
        row.public_jwk = public_jwk(key)
        row.private_jwk = None


def _retire_expired(session: Session, moment: datetime) -> None:
    statement = select(SigningKey).where(col(SigningKey.retires_at) <= moment)
    for row in session.scalars(statement):
        row.active = False
        row.sealed_private = None


@dataclass(frozen=True)
class SealedKey:
    """A new P-256 key as a key table stores it: its thumbprint, the private half sealed with
    the key-encryption key, the public half."""

    kid: str
    sealed_private: str
    public_jwk: dict[str, Any]


def new_sealed_key(kek: KeyEncryptionKey) -> SealedKey:
    """Make a key (the token keys' and the health-card keys' alike)."""
    key = ECKey.generate_key(CURVE, parameters={"use": "sig", "alg": ALGORITHM})
    kid = key.thumbprint()
    key = import_private(private_members(key), kid)
    return SealedKey(kid, seal(kek, kid, private_members(key)), public_jwk(key))


def _new_key_row(kek: KeyEncryptionKey, moment: datetime) -> SigningKey:
    made = new_sealed_key(kek)
    return SigningKey(
        kid=made.kid,
        algorithm=ALGORITHM,
        sealed_private=made.sealed_private,
        public_jwk=made.public_jwk,
        created_at=moment,
        active=True,
    )


_AGE_ORDER = (col(SigningKey.created_at), col(SigningKey.kid))


def _active_rows(session: Session) -> list[SigningKey]:
    statement = (
        select(SigningKey)
        .where(col(SigningKey.active).is_(True), col(SigningKey.algorithm) == ALGORITHM)
        .order_by(*_AGE_ORDER)
    )
    return list(session.scalars(statement))


def _signer_row(session: Session) -> SigningKey | None:
    statement = (
        select(SigningKey)
        .where(
            col(SigningKey.active).is_(True),
            col(SigningKey.algorithm) == ALGORITHM,
            col(SigningKey.retires_at).is_(None),
        )
        .order_by(*_AGE_ORDER)
        .limit(1)
    )
    return session.scalars(statement).first()


def _verifier(row: SigningKey, moment: datetime) -> _Verifier | None:
    """The public key of an active row that has not retired yet."""
    if not row.active or row.algorithm != ALGORITHM:
        return None
    retires_at = as_utc(row.retires_at) if row.retires_at else None
    if retires_at is not None and retires_at <= moment:
        return None
    if row.public_jwk is not None:
        key = _import_public(dict(row.public_jwk), row.kid)
    elif row.private_jwk is not None:  # a clear row not sealed yet
        key = _import_public(
            {name: row.private_jwk[name] for name in PUBLIC_MEMBERS if name in row.private_jwk},
            row.kid,
        )
    else:
        return None
    return _Verifier(key, retires_at)


def private_members(key: ECKey) -> dict[str, Any]:
    """The members of a private P-256 JWK that are sealed (the public ones and ``d``)."""
    members = key.as_dict(private=True)
    return {name: members[name] for name in (*PUBLIC_MEMBERS, "d")}


def import_private(jwk: dict[str, Any], kid: str, *, table: str = "signing_key") -> ECKey:
    """The private key of a ``table`` row, checked to be the P-256 key its ``kid`` names."""
    key = ECKey.import_key({**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})
    if key.curve_name != CURVE or key.thumbprint() != kid or not key.is_private:
        raise ValueError(f"{table} row {kid!r} does not hold the P-256 key its kid names")
    return key


def _import_public(jwk: dict[str, Any], kid: str) -> ECKey:
    members = {name: jwk[name] for name in PUBLIC_MEMBERS if name in jwk}
    key = ECKey.import_key({**members, "kid": kid, "use": "sig", "alg": ALGORITHM})
    if key.curve_name != CURVE or key.thumbprint() != kid:
        raise ValueError(f"signing_key row {kid!r} does not hold the P-256 key its kid names")
    return key


def _kid(key: ECKey) -> str:
    kid = key.kid
    if not kid:  # pragma: no cover - every key here is imported with its kid
        raise ValueError("signing key without kid")
    return kid

"""The key the hub signs SMART Health Cards with (ES256 on P-256), kept in ``health_card_key``.

It is a different key from the access-token keys (:mod:`emr_hub.security.keys`): the token
verifier looks only in ``signing_key``, so a health card can never pass for an access token,
and rotating one kind of key leaves the other alone.

Like the token keys, the private key is sealed with the key-encryption key
(:mod:`emr_hub.security.sealing`), every process signs with the same row (made by the first
process that needs one, under a lock so racing processes agree), and each process re-reads the
rows every ``EMR_HUB_SIGNING_KEY_REFRESH_SECONDS``.

Unlike them, a rotated health-card key never stops being published: a card lives in a wallet
for years and a verifier checks it against ``/.well-known/jwks.json`` whenever it is shown.
Rotation (:func:`rotate_card_key`) makes a new signer and deletes the older keys' sealed
private keys at once; their public keys stay in the JWKS. A process that has not re-read the
rows yet may sign a few more cards with the old key; those verify too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from joserfc.jwk import ECKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.security.keys import ALGORITHM, CURVE, PUBLIC_MEMBERS, public_jwk
from emr_hub.security.sealing import key_encryption_key, seal, unseal
from storage.db import Database, as_utc
from storage.tables import HealthCardKey

if TYPE_CHECKING:
    from emr_hub.hub import Hub

# Arbitrary constant naming the "change the health-card keys" advisory lock ("emrshc").
_ADVISORY_LOCK_ID = 0x656D72736863
_AGE_ORDER = (col(HealthCardKey.created_at), col(HealthCardKey.kid))


@dataclass(frozen=True)
class CardKeyInfo:
    """What ``emr-hub keys list-health-card`` shows of a key (no key material)."""

    kid: str
    created_at: datetime
    rotated_at: datetime | None


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    signer: ECKey | None = None
    published: list[dict[str, Any]] = field(default_factory=list)
    loaded: float = float("-inf")


_caches: WeakKeyDictionary[Database, _Cache] = WeakKeyDictionary()
_caches_lock = threading.Lock()


def card_signing_key(hub: Hub) -> ECKey:
    """The private key health cards are signed with now (``kid`` set); made on first use.

    Raises :class:`~emr_hub.security.sealing.SealingError` when the key-encryption key is
    missing or wrong."""
    cache = _fresh(hub)
    if cache.signer is None:  # pragma: no cover - _fresh always loads a signer
        raise RuntimeError("no health-card signing key")
    return cache.signer


def card_public_jwks(hub: Hub) -> list[dict[str, Any]]:
    """The public JWKs of every health-card key, rotated ones included, oldest first."""
    return list(_fresh(hub).published)


def rotate_card_key(hub: Hub, *, now: datetime | None = None) -> str:
    """Make a new health-card signer and return its kid; older keys stay published and
    lose their private key. ``now`` is for tests."""
    moment = now or datetime.now(UTC)
    kek = key_encryption_key(hub.settings)
    with hub.db.transaction() as session:
        _lock(hub.db, session)
        for row in _rows(session):
            if row.sealed_private is not None:
                # Prove this KEK opens the current key before sealing a new one with it: a
                # key the other processes cannot open would stop every card.
                unseal(kek, row.kid, row.sealed_private)
            if row.rotated_at is None:
                row.rotated_at = moment
            row.sealed_private = None
        new = _new_row(hub, moment)
        session.add(new)
    _cache(hub.db).loaded = float("-inf")
    return new.kid


def list_card_keys(hub: Hub) -> list[CardKeyInfo]:
    """Every health-card key, oldest first; the one without ``rotated_at`` signs."""
    with hub.db.snapshot() as session:
        return [
            CardKeyInfo(
                row.kid,
                as_utc(row.created_at),
                as_utc(row.rotated_at) if row.rotated_at else None,
            )
            for row in _rows(session)
        ]


def _cache(db: Database) -> _Cache:
    with _caches_lock:
        cache = _caches.get(db)
        if cache is None:
            cache = _caches[db] = _Cache()
        return cache


def _fresh(hub: Hub) -> _Cache:
    cache = _cache(hub.db)
    refresh = hub.settings.signing_key_refresh_seconds
    if cache.signer is not None and time.monotonic() - cache.loaded < refresh:
        return cache
    with cache.lock:
        if cache.signer is None or time.monotonic() - cache.loaded >= refresh:
            cache.signer, cache.published = _load(hub)
            cache.loaded = time.monotonic()
    return cache


def _load(hub: Hub) -> tuple[ECKey, list[dict[str, Any]]]:
    """The signer and the published keys, making the first key when there is none."""
    with hub.db.snapshot() as session:
        rows = _rows(session)
        signer = _signer(rows)
        loaded = (signer.kid, signer.sealed_private, _published(rows)) if signer else None
    if loaded is None:
        with hub.db.transaction() as session:
            _lock(hub.db, session)
            rows = _rows(session)
            signer = _signer(rows)
            if signer is None:
                signer = _new_row(hub, datetime.now(UTC))
                session.add(signer)
                rows.append(signer)
            loaded = (signer.kid, signer.sealed_private, _published(rows))
    kid, sealed_private, published = loaded
    if sealed_private is None:  # pragma: no cover - only rotated keys lose theirs
        raise RuntimeError(f"health-card key {kid} signs but has no private key")
    private = unseal(key_encryption_key(hub.settings), kid, sealed_private)
    return _import(private, kid), published


def _rows(session: Session) -> list[HealthCardKey]:
    statement = (
        select(HealthCardKey).where(col(HealthCardKey.algorithm) == ALGORITHM).order_by(*_AGE_ORDER)
    )
    return list(session.scalars(statement))


def _signer(rows: list[HealthCardKey]) -> HealthCardKey | None:
    return next((row for row in rows if row.rotated_at is None), None)


def _published(rows: list[HealthCardKey]) -> list[dict[str, Any]]:
    return [dict(row.public_jwk) for row in rows]


def _lock(db: Database, session: Session) -> None:
    """Serialise key changes: a PostgreSQL advisory lock held until commit; on SQLite the
    transaction's ``BEGIN IMMEDIATE`` already holds the write lock."""
    if db.dialect == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:lock_id AS bigint))"),
            {"lock_id": _ADVISORY_LOCK_ID},
        )


def _new_row(hub: Hub, moment: datetime) -> HealthCardKey:
    generated = ECKey.generate_key(CURVE, parameters={"use": "sig", "alg": ALGORITHM})
    kid = generated.thumbprint()
    private = _private_members(generated)
    return HealthCardKey(
        kid=kid,
        algorithm=ALGORITHM,
        sealed_private=seal(key_encryption_key(hub.settings), kid, private),
        public_jwk=public_jwk(_import(private, kid)),
        created_at=moment,
    )


def _private_members(key: ECKey) -> dict[str, Any]:
    members = key.as_dict(private=True)
    return {name: members[name] for name in (*PUBLIC_MEMBERS, "d")}


def _import(jwk: dict[str, Any], kid: str) -> ECKey:
    key = ECKey.import_key({**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})
    if key.curve_name != CURVE or key.thumbprint() != kid or not key.is_private:
        raise ValueError(f"health_card_key row {kid!r} does not hold the P-256 key its kid names")
    return key

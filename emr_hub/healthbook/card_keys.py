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

Rotation (:func:`rotate_card_key`) adds a key that is published at once but signs only
after :func:`publication_delay` (the refresh interval and a clock leeway): by then every
process has re-read the rows and serves it, so no verifier can be handed a card whose key the
process it asks does not publish yet. From that moment the new key signs; the older keys get
``rotated_at`` and lose their sealed private key (the first process to load the keys after it
does this), and stay in the JWKS. A process that has not re-read the rows yet may sign a few
more cards with the old key from memory; those verify too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.security.keys import (
    ALGORITHM,
    CLOCK_LEEWAY_SECONDS,
    import_private,
    lock_key_changes,
    new_sealed_key,
)
from emr_hub.security.refreshed import PerDatabase, Refreshed
from emr_hub.security.sealing import key_encryption_key, unseal
from storage.db import as_utc
from storage.tables import HealthCardKey

if TYPE_CHECKING:
    from emr_hub.hub import Hub

# Arbitrary constant naming the "change the health-card keys" advisory lock ("emrshc").
_ADVISORY_LOCK_ID = 0x656D72736863
_AGE_ORDER = (col(HealthCardKey.created_at), col(HealthCardKey.kid))


SIGNING = "signing"
NEXT = "next"
ROTATED = "rotated"


@dataclass(frozen=True)
class CardKeyInfo:
    """What ``emr-hub keys list-health-card`` shows of a key (no key material)."""

    kid: str
    created_at: datetime
    state: str
    """:data:`SIGNING`, :data:`NEXT` (published, signs from ``created_at`` and the
    publication delay) or :data:`ROTATED` (published, signs no more)."""


@dataclass
class _Cache:
    signer: Refreshed[ECKey] = field(default_factory=Refreshed)
    published: Refreshed[list[dict[str, Any]]] = field(default_factory=Refreshed)

    def forget(self) -> None:
        self.signer.forget()
        self.published.forget()


_caches = PerDatabase(_Cache)


def card_signing_key(hub: Hub) -> ECKey:
    """The private key health cards are signed with now (``kid`` set); made on first use.

    Raises :class:`~emr_hub.security.sealing.SealingError` when the key-encryption key is
    missing or wrong."""
    refresh = hub.settings.signing_key_refresh_seconds
    return _caches.of(hub.db).signer.get(refresh, lambda: _load_signer(hub))


def card_public_jwks(hub: Hub) -> list[dict[str, Any]]:
    """The public JWKs of every health-card key, rotated ones included, oldest first. Only
    public keys are read, so the key-encryption key is needed only to make the first key."""

    def load() -> list[dict[str, Any]]:
        published = _read_published(hub)
        if not published:
            card_signing_key(hub)
            published = _read_published(hub)
        return published

    refresh = hub.settings.signing_key_refresh_seconds
    return list(_caches.of(hub.db).published.get(refresh, load))


def rotate_card_key(hub: Hub) -> tuple[str, datetime]:
    """Add a health-card key; returns its kid and the moment it starts signing. Older keys
    stay published."""
    moment = datetime.now(UTC)
    kek = key_encryption_key(hub.settings)
    with hub.db.transaction() as session:
        lock_key_changes(hub.db, session, _ADVISORY_LOCK_ID)
        for row in _rows(session):
            if row.sealed_private is not None:
                # Prove this KEK opens the current keys before sealing a new one with it: a
                # key the other processes cannot open would stop every card.
                unseal(kek, row.kid, row.sealed_private)
        new = _new_row(hub, moment)
        session.add(new)
    _caches.of(hub.db).forget()
    return new.kid, moment + publication_delay(hub)


def publication_delay(hub: Hub) -> timedelta:
    """How long a new key is published before it signs: every process re-reads the keys
    within the refresh interval; the leeway covers clocks that differ between machines."""
    return timedelta(seconds=hub.settings.signing_key_refresh_seconds + CLOCK_LEEWAY_SECONDS)


def list_card_keys(hub: Hub) -> list[CardKeyInfo]:
    """Every health-card key, oldest first, with its state now."""
    moment = datetime.now(UTC)
    with hub.db.snapshot() as session:
        rows = _rows(session)
        signer = _signer(rows, moment, publication_delay(hub))
        at = rows.index(signer) if signer is not None else len(rows)
        return [
            CardKeyInfo(
                row.kid,
                as_utc(row.created_at),
                SIGNING if index == at else ROTATED if index < at else NEXT,
            )
            for index, row in enumerate(rows)
        ]


def _read_published(hub: Hub) -> list[dict[str, Any]]:
    with hub.db.snapshot() as session:
        return [dict(row.public_jwk) for row in _rows(session)]


def _load_signer(hub: Hub) -> ECKey:
    """The signer, after making the first key or retiring the keys a newer one took over
    from, if either is due."""
    moment = datetime.now(UTC)
    delay = publication_delay(hub)
    with hub.db.snapshot() as session:
        rows = _rows(session)
        signer = _signer(rows, moment, delay)
        due = signer is None or _superseded(rows, signer)
        loaded = (signer.kid, signer.sealed_private) if signer else None
    if due:
        with hub.db.transaction() as session:
            lock_key_changes(hub.db, session, _ADVISORY_LOCK_ID)
            rows = _rows(session)
            signer = _signer(rows, moment, delay)
            if signer is None:
                signer = _new_row(hub, moment)
                session.add(signer)
                rows.append(signer)
            for row in _superseded(rows, signer):
                row.rotated_at = moment
                row.sealed_private = None
            loaded = (signer.kid, signer.sealed_private)
    kid, sealed_private = loaded if loaded is not None else ("", None)
    if sealed_private is None:  # pragma: no cover - the signer always has its private key
        raise RuntimeError("the health-card signer has no private key")
    private = unseal(key_encryption_key(hub.settings), kid, sealed_private)
    return import_private(private, kid, table="health_card_key")


def _rows(session: Session) -> list[HealthCardKey]:
    statement = (
        select(HealthCardKey).where(col(HealthCardKey.algorithm) == ALGORITHM).order_by(*_AGE_ORDER)
    )
    return list(session.scalars(statement))


def _signer(rows: list[HealthCardKey], moment: datetime, delay: timedelta) -> HealthCardKey | None:
    """The newest key with its private key that has been published long enough; else the
    oldest with its private key (the first key signs at once: no card can predate it)."""
    usable = [row for row in rows if row.sealed_private is not None]
    ready = [row for row in usable if as_utc(row.created_at) + delay <= moment]
    if ready:
        return ready[-1]
    return usable[0] if usable else None


def _superseded(rows: list[HealthCardKey], signer: HealthCardKey) -> list[HealthCardKey]:
    """The keys older than the signer that still hold a private key."""
    older = rows[: rows.index(signer)]
    return [row for row in older if row.sealed_private is not None or row.rotated_at is None]


def _new_row(hub: Hub, moment: datetime) -> HealthCardKey:
    made = new_sealed_key(key_encryption_key(hub.settings))
    return HealthCardKey(
        kid=made.kid,
        algorithm=ALGORITHM,
        sealed_private=made.sealed_private,
        public_jwk=made.public_jwk,
        created_at=moment,
    )

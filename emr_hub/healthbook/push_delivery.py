"""Delivering a push: the outbox handler of topic ``wallet.push``.

At send time, inside the relay's transaction (:func:`emr_hub.outbox.delivery_session`):

1. The push row is locked (a change arriving now owes a push of its own instead of joining
   this one, :mod:`.push`), and on PostgreSQL the person too, so two workers never send one
   citizen's pushes at once (a later book can never be overtaken by an earlier one).
2. Her live Patients are those whose compartment row names her person key (one per hospital
   that posted her, all with her CCCD). The summary of each is built as she herself sees it: a
   citizen principal for her person key reads through the access policy
   (:func:`~emr_hub.healthbook.summary.patient_summary`), and what it read is audited.
3. Their digest (:func:`books_digest`) equal to the last delivered one: nothing is sent
   (outcome ``unchanged``).
4. Otherwise each is signed now (:func:`~emr_hub.healthbook.credentials.issue_health_card`),
   and the cards are POSTed together (:mod:`.wallet`) with an idempotency key derived from the
   person, the number of her pushes delivered before and the digest: every attempt of one push
   has the same key, so a push the wallet took just before the worker died is not taken twice.

Each attempt's times, answer, digest and key are recorded on the push row in the same
transaction as the outbox's own bookkeeping; an answered attempt also writes its AuditEvent
(her data left the hub). Retries: :data:`WALLET_RETRY`, backoff up to 15 minutes, for a week.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any
from weakref import WeakSet

import httpx
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.fhir import hooks
from emr_hub.fhir.persons import patient_cccd, person_of_cccd
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.store import FhirStore, format_instant
from emr_hub.healthbook.card_keys import card_signing_key
from emr_hub.healthbook.credentials import issue_health_card
from emr_hub.healthbook.push import TOPIC, owe_pushes
from emr_hub.healthbook.summary import content_digest, patient_summary
from emr_hub.healthbook.wallet import idempotency_key, post_push, push_body
from emr_hub.hub import Hub
from emr_hub.outbox import (
    DeliveryError,
    PermanentDeliveryError,
    RetryPolicy,
    delivery_session,
    handler,
    utcnow,
)
from emr_hub.security.access import store_for
from emr_hub.security.audit import log as audit_log
from emr_hub.security.audit.events import EventFacts, PatientEntity, outcome_of, rest_event
from emr_hub.security.audit.trail import AuditTrail
from emr_hub.security.keys import signing_key
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from storage.db import Database, after_commit
from storage.tables import WalletPush

WALLET_RETRY = RetryPolicy(backoff_cap=900.0, max_age=timedelta(days=7))
"""A wallet down for hours loses nothing: attempts every 15 minutes at most, for a week."""
PUSH_CLIENT = "emr-hub-wallet-push"
PUSH_SCOPES = ScopeSet.parse("patient/*.rs")
OPERATION = "wallet-push"

DELIVERED, UNCHANGED, SKIPPED, REFUSED = "delivered", "unchanged", "skipped", "refused"

_keys_loaded: WeakSet[Database] = WeakSet()


def push_principal(person: str, push_id: str) -> Principal:
    """The citizen as the push reads her record: her own view, named as the hub's push."""
    return Principal.citizen(person, PUSH_CLIENT, PUSH_SCOPES, f"wallet-push:{push_id}")


def install() -> None:
    """Owe pushes on every write (the change hook, after the access grants); importing this
    module has registered their delivery. Every process that writes or relays the outbox needs
    both (the API, the command line, the worker): a relay without the handler would fail the
    pushes as of an unknown topic."""
    hooks.on_changes(owe_pushes, stage=150)


@handler(TOPIC, retry=WALLET_RETRY)
def deliver_push(hub: Hub, message_id: str, payload: dict[str, Any]) -> None:
    session = delivery_session()
    push = _locked_push(session, message_id)
    person = str(payload["person"])
    wallet_url = hub.settings.wallet_url
    if not wallet_url:
        push.outcome = SKIPPED  # the wallet was switched off since the push was owed
        return
    _lock_person(session, person)
    patients = _patients_of(session, person)
    if not patients:
        push.outcome = SKIPPED  # deleted, or their CCCD changed, since the change
        return
    cccd = patients[0][1]
    principal = push_principal(person, push.id)
    store = store_for(session, hub.settings, principal)
    base = hub.settings.fhir_base_url
    bundles = [patient_summary(store, principal, patient_id, base) for patient_id, _ in patients]
    digest = books_digest(bundles)
    last = _last_delivered(session, person)
    if last is not None and last.digest == digest:
        push.outcome, push.digest = UNCHANGED, digest
        return
    _require_loaded_keys(hub, session)
    generation = (last.generation or 0) + 1 if last is not None else 1
    key = idempotency_key(person, generation, digest)
    issued = utcnow()
    cards = [issue_health_card(hub, bundle, now=issued) for bundle in bundles]
    body = push_body(cccd, format_instant(issued), cards)
    push.digest, push.idempotency_key, push.generation = digest, key, generation
    push.sent_at, push.answered_at, push.answer = issued, None, None
    try:
        answer = post_push(hub, wallet_url, key, body)
    except httpx.TransportError as exc:
        raise DeliveryError(f"the wallet could not be reached ({type(exc).__name__})") from None
    push.answered_at, push.answer = utcnow(), answer.status
    if hub.settings.audit_enabled:
        _audit(hub, session, store, principal, push, answer.status)
    if answer.accepted:
        push.outcome = DELIVERED
        return
    if answer.refused:
        push.outcome = REFUSED
        raise PermanentDeliveryError(f"the wallet refused the push: HTTP {answer.status}")
    raise DeliveryError(f"the wallet answered HTTP {answer.status}")


def _locked_push(session: Session, push_id: str) -> WalletPush:
    statement = select(WalletPush).where(col(WalletPush.id) == push_id)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update()
    push = session.scalars(statement).first()
    if push is None:
        raise PermanentDeliveryError("the push's row is missing")
    return push


def _lock_person(session: Session, person: str) -> None:
    """One delivery per citizen at a time (PostgreSQL; SQLite runs one relay at a time)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"wallet|{person}"}
        )


def _patients_of(session: Session, person: str) -> list[tuple[str, str]]:
    """(Patient id, CCCD) of the person's live Patients, by id: each Patient's own compartment
    row names its person, and the CCCD read back must be the person's."""
    ids = session.scalars(
        select(COMPARTMENT.c.resource_id)
        .where(COMPARTMENT.c.person == person, COMPARTMENT.c.resource_type == "Patient")
        .distinct()
    )
    found = []
    patients = [("Patient", patient_id) for patient_id in sorted(ids)]
    for stored in FhirStore(session).load_many(patients, checked=False, disclose=False):
        cccd = patient_cccd(stored.content or {})
        if cccd is not None and person_of_cccd(cccd) == person:
            found.append((stored.id, cccd))
    return found


def books_digest(bundles: list[dict[str, Any]]) -> str:
    """The digest of what one push carries: the summary's
    :func:`~emr_hub.healthbook.summary.content_digest` when she has one Patient (the digest her
    ``$summary`` has), else the SHA-256 of her Patients' digests in order."""
    digests = [content_digest(bundle) for bundle in bundles]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("|".join(digests).encode()).hexdigest()


def _last_delivered(session: Session, person: str) -> WalletPush | None:
    statement = (
        select(WalletPush)
        .where(col(WalletPush.person) == person, col(WalletPush.outcome) == DELIVERED)
        .order_by(col(WalletPush.generation).desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def _require_loaded_keys(hub: Hub, session: Session) -> None:
    """On SQLite the relay's transaction holds the write lock, and a signing key is made, or
    its rotation finished, in a transaction of its own: the first push of a process loads both
    keys after this attempt's commit and is sent at the next attempt (a few seconds later)."""
    if hub.db.dialect != "sqlite" or hub.db in _keys_loaded:
        return

    def load() -> None:
        signing_key(hub)
        card_signing_key(hub)
        _keys_loaded.add(hub.db)

    after_commit(session, load)
    raise DeliveryError("the signing keys are being loaded; the push goes at the next attempt")


def _audit(
    hub: Hub,
    session: Session,
    store: FhirStore,
    principal: Principal,
    push: WalletPush,
    status: int,
) -> None:
    """The AuditEvent of an answered attempt: her summary, read as her, went to the wallet."""
    moment = utcnow()
    trail = AuditTrail(push.id, None, "POST", OPERATION, moment, principal=principal)
    trail.absorb(store)
    facts = EventFacts(
        recorded=moment,
        interaction="operation",
        outcome=outcome_of(status),
        status=status,
        request_id=push.id,
        address=None,
        base_url=hub.settings.fhir_base_url,
        principal=principal,
        operation=OPERATION,
        patients=tuple(
            PatientEntity(patient_id, touched.person, tuple(sorted(touched.types)))
            for patient_id, touched in sorted(trail.patients.items())
        ),
    )
    audit_log.append(session, [rest_event(facts)])

"""Which changes owe a push of the health book to the identity wallet (a change hook).

Runs once per transaction that changed resources, before its commit (:mod:`emr_hub.fhir.hooks`):

1. The patients of the change, with their person keys, are read from the compartment rows of
   the resources written (and, for deletions, from what the store knew before removing them);
   only resources of the types the summary is built from count
   (:data:`~emr_hub.healthbook.sections.LOADED_TYPES`).
2. Only a citizen with a CCCD can be pushed: the wallet keys health books by the national ID.
   A Patient without one has the person key of its own id
   (:func:`~emr_hub.fhir.persons.person_of_patient_id`), which tells them apart without reading
   the Patient; such a patient owes nothing (once a CCCD is added, that update owes a push).
3. Pushes are per **person**, not per Patient resource: the hospitals that treated her each
   post a Patient of their own, all with her CCCD, and the wallet holds one health book per
   CCCD, so one push carries a card for each of her Patients (:mod:`.push_delivery`).
4. Per person, a push still waiting for its turn takes the change (``changes`` + 1): a visit
   Bundle of 70 entries, or ten writes within the debounce window, is one push. Otherwise a new
   ``wallet_push`` row and its outbox message (same id) are added in the write's transaction,
   held back ``EMR_HUB_WALLET_DEBOUNCE_SECONDS`` from this first change; the summaries are built
   and signed when the message is delivered, so they hold every change made until then.

A push that is being delivered right now (its row locked by the relay, on PostgreSQL) cannot
take the change any more: it may have read the record already. The change then owes a push of
its own; when both carry the same summary, the second sends nothing (the digest is unchanged).
The write never waits for a delivery (``SKIP LOCKED``). On SQLite, writers and the relay are
serialised by the database lock, so a push is never half read when a change joins it.

With no ``EMR_HUB_WALLET_URL`` nothing is owed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from emr_hub.fhir.persons import person_of_patient_id
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.healthbook.sections import LOADED_TYPES
from emr_hub.outbox import add_message, relay_outbox, utcnow
from emr_hub.tasks import in_process, process_settings
from storage.db import after_commit
from storage.tables import WalletPush

log = logging.getLogger(__name__)

TOPIC = "wallet.push"
PUSH = WalletPush.__table__
CHUNK = 500


def owe_pushes(store: FhirStore, changes: list[Stored]) -> None:
    """The change hook: owe (or join) one push per citizen with a CCCD the changes touch."""
    settings = process_settings()
    if not settings.wallet_url:
        return
    keys = list(
        dict.fromkeys((c.resource_type, c.id) for c in changes if c.resource_type in LOADED_TYPES)
    )
    if not keys:
        return
    store.flush()
    persons = sorted(_persons_of(store, keys))
    debounce = timedelta(seconds=settings.wallet_debounce_seconds)
    owed_any = False
    for person in persons:
        if not _join_waiting_push(store.session, person):
            owe_push(store.session, person, debounce)
            owed_any = True
    if owed_any and not in_process():
        _kick_relay_after(store.session, settings.wallet_debounce_seconds)


def owe_push(session: Session, person: str, debounce: timedelta) -> str:
    """Add a push of the health book of ``person`` (a person key), due ``debounce`` from now."""
    push_id = str(uuid.uuid4())
    session.add(WalletPush(id=push_id, person=person, changes=1))
    return add_message(
        session, TOPIC, {"person": person}, key=push_id, not_before=utcnow() + debounce
    )


def _persons_of(store: FhirStore, keys: list[tuple[str, str]]) -> set[str]:
    """The persons with a CCCD whose patients' compartments hold ``keys``."""
    pairs: set[tuple[str, str]] = set()
    for key in keys:
        pairs.update(store.members.get(key, ()))  # deletions: known before the rows went
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        rows = store.session.execute(
            select(COMPARTMENT.c.patient_id, COMPARTMENT.c.person).where(
                tuple_(COMPARTMENT.c.resource_type, COMPARTMENT.c.resource_id).in_(chunk)
            )
        )
        pairs.update((str(patient), str(person)) for patient, person in rows)
    return {person for patient, person in pairs if _has_cccd(patient, person)}


def _has_cccd(patient_id: str, person: str) -> bool:
    return person != person_of_patient_id(patient_id)


def _join_waiting_push(session: Session, person: str) -> bool:
    """Add the change to the person's push still waiting, if there is one not being sent."""
    statement = select(PUSH.c.id).where(PUSH.c.person == person, PUSH.c.outcome.is_(None)).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    waiting = session.scalar(statement)
    if waiting is None:
        return False
    session.execute(update(PUSH).where(PUSH.c.id == waiting).values(changes=PUSH.c.changes + 1))
    return True


def _kick_relay_after(session: Session, seconds: float) -> None:
    """With a broker, have a relay run when the debounce window ends (beat would find the push
    within its interval anyway; this saves that wait)."""

    def kick() -> None:
        try:
            relay_outbox.apply_async(countdown=seconds)
        except Exception:
            log.exception("could not schedule the wallet push relay; beat will run it")

    after_commit(session, kick)

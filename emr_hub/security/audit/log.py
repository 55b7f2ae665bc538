"""The audit log in the database: appended under one lock, hash-chained, verified.

Records are kept apart from clinical data (the ``audit_event`` tables, never the resource
store), appended only: the application never updates or deletes them, and database triggers
refuse to. Each record's ``hash`` is SHA-256 over its position, the previous record's hash and
the canonical JSON of its AuditEvent (sorted keys), so changing, removing, inserting or
reordering a record breaks the chain from there on. Appenders lock the chain's head row
(``audit_chain_head``) for the rest of their transaction, which numbers the records without
gaps and never forks the chain; the lock is taken last in a write's transaction, just before
its commit, so it is held for the commit alone.

Everything searchable about a record (its columns, its patient and resource rows) is derived
from the AuditEvent itself (:func:`columns_of`, :func:`patients_of`, :func:`entities_of`), so
:func:`verify` checks those too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from sqlalchemy import JSON, Text, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session

from emr_hub.fhir.unstorable import NUL_ESCAPE, without_nul
from emr_hub.security.audit.events import (
    CLIENT_SYSTEM,
    OBJECT_ROLE,
    PERSON_DETAIL,
    PERSON_SYSTEM,
    TYPES_DETAIL,
)
from storage.db import Database, as_utc
from storage.tables import AuditChainHead, AuditEntityRow, AuditEventRow, AuditPatientRow

EVENT = AuditEventRow.__table__
PATIENT = AuditPatientRow.__table__
ENTITY = AuditEntityRow.__table__
HEAD = AuditChainHead.__table__
GENESIS = "0" * 64
VERIFY_BATCH = 1000


def canonical(content: dict[str, Any]) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def link_hash(seq: int, prev_hash: str, content: dict[str, Any]) -> str:
    return _chain_hash(seq, prev_hash, canonical(content))


def _chain_hash(seq: int, prev_hash: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{seq}|{prev_hash}|".encode())
    digest.update(body)
    return digest.hexdigest()


@dataclass
class _Links:
    """The rows of a run of events appended after (``last_seq``, ``last_hash``)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    patients: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    last_seq: int = 0
    last_hash: str = GENESIS


def _storable(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The event as stored and the canonical JSON its hash covers."""
    body = canonical(event)
    if NUL_ESCAPE in body:  # a hostile URL's text, kept readable and storable
        event = without_nul(event)
        body = canonical(event)
    return event, body


def _link(events: list[dict[str, Any]], last_seq: int, last_hash: str) -> _Links:
    links = _Links()
    for given in events:
        event, body = _storable(given)
        last_seq += 1
        digest = _chain_hash(last_seq, last_hash, body)
        links.events.append(
            {"seq": last_seq, **columns_of(event), "content": event, "prev_hash": last_hash}
            | {"hash": digest}
        )
        links.patients += [
            {"audit_seq": last_seq, "patient_id": p, "person": person, "types": types}
            for p, person, types in patients_of(event)
        ]
        links.entities += [
            {"audit_seq": last_seq, "resource_type": t, "resource_id": i}
            for t, i in entities_of(event)
        ]
        links.positions.append(last_seq)
        last_hash = digest
    links.last_seq, links.last_hash = last_seq, last_hash
    return links


def append(session: Session, events: list[dict[str, Any]]) -> list[int]:
    """Append ``events`` (AuditEvent resources) to the chain in the session's transaction;
    returns their positions. Takes the chain's lock until the transaction ends: on PostgreSQL
    in the database's ``emr_hub_audit_append`` (:func:`_batch`), one round trip; on SQLite,
    whose write lock serialises appenders, here."""
    if not events:
        return []
    if session.get_bind().dialect.name == "postgresql":
        first = session.execute(_APPEND_IN_SESSION, {"batch": _batch(events)}).scalar_one()
        return list(range(first, first + len(events)))
    head = select(HEAD.c.last_seq, HEAD.c.last_hash).where(HEAD.c.id == 1)
    last_seq, last_hash = session.execute(head).one()
    links = _link(events, last_seq, last_hash)
    session.execute(insert(EVENT), links.events)
    if links.patients:
        session.execute(insert(PATIENT), links.patients)
    if links.entities:
        session.execute(insert(ENTITY), links.entities)
    session.execute(
        update(HEAD)
        .where(HEAD.c.id == 1)
        .values(last_seq=links.last_seq, last_hash=links.last_hash)
    )
    return links.positions


_APPEND = "SELECT emr_hub_audit_append(%s)"
_APPEND_IN_SESSION = select(func.emr_hub_audit_append(cast(bindparam("batch", type_=Text), JSON)))


def append_committed(db: Database, events: list[dict[str, Any]]) -> list[int]:
    """Append ``events`` in a transaction of their own and commit it (the group writer's
    path). On PostgreSQL it is one statement on the driver (:func:`_batch`), in autocommit."""
    if db.dialect != "postgresql":
        with db.transaction() as session:
            return append(session, events)
    if not events:
        return []
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.cursor() as cursor:
            cursor.execute(_APPEND, (_batch(events),))
            (first,) = cursor.fetchone()  # type: ignore[misc]
        conn.commit()
        return list(range(first, first + len(events)))
    except psycopg.Error as error:
        if db.engine.dialect.is_disconnect(error, raw.driver_connection, None):
            raw.invalidate(error)  # a lost connection never goes back to the pool
        raise
    finally:
        raw.close()  # back to the pool, which rolls back whatever a failure left open


async def append_on(
    connection: psycopg.AsyncConnection[Any], events: list[dict[str, Any]]
) -> list[int]:
    """Append ``events`` on ``connection``, an asyncio psycopg connection in autocommit (the
    event-loop group writer's path): one statement, committed when it returns."""
    if not events:
        return []
    cursor = await connection.execute(_APPEND, (_batch(events),))
    (first,) = await cursor.fetchone()  # type: ignore[misc]
    return list(range(first, first + len(events)))


def _batch(events: list[dict[str, Any]]) -> str:
    """The argument of the database's ``emr_hub_audit_append`` (migration 0017): each record's
    columns and canonical JSON text, which the function numbers and hashes after the chain's
    head as :func:`link_hash` does, and the patient and resource rows by their record's place
    (``at``) in the run."""
    records: list[dict[str, Any]] = []
    patients: list[dict[str, Any]] = []
    entities: list[dict[str, Any]] = []
    for at, given in enumerate(events):
        event, body = _storable(given)
        records.append(columns_of(event) | {"content": body.decode()})
        patients += [
            {"at": at, "patient_id": p, "person": person, "types": types}
            for p, person, types in patients_of(event)
        ]
        entities += [
            {"at": at, "resource_type": t, "resource_id": i} for t, i in entities_of(event)
        ]
    return orjson.dumps({"events": records, "patients": patients, "entities": entities}).decode()


# ------------------------------------------------------------- derived columns
def columns_of(event: dict[str, Any]) -> dict[str, Any]:
    """The searchable columns of an AuditEvent, read from it."""
    client = organization = person = request_id = None
    for agent in event.get("agent") or []:
        who = agent.get("who") or {}
        identifier = who.get("identifier") or {}
        if identifier.get("system") == CLIENT_SYSTEM:
            client = identifier.get("value")
        elif identifier.get("system") == PERSON_SYSTEM:
            person = identifier.get("value")
        reference = who.get("reference")
        if isinstance(reference, str) and reference.startswith("Organization/"):
            organization = reference
    for entity in event.get("entity") or []:
        if (entity.get("type") or {}).get("code") == "XrequestId":
            request_id = ((entity.get("what") or {}).get("identifier") or {}).get("value")
    purposes = [
        coding.get("code")
        for purpose in event.get("purposeOfEvent") or []
        for coding in purpose.get("coding") or []
    ]
    return {
        "event_id": event["id"],
        "recorded": datetime.fromisoformat(event["recorded"].replace("Z", "+00:00")),
        "request_id": request_id,
        "client_id": client,
        "organization": organization,
        "person": person,
        "action": event["action"],
        "subtype": (event.get("subtype") or [{}])[0].get("code", ""),
        "outcome": event["outcome"],
        "break_glass": "ETREAT" in purposes,
    }


def patients_of(event: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(patient id, person, types) of each patient entity."""
    for entity in _with_role(event, "1"):
        reference = (entity.get("what") or {}).get("reference", "")
        details = {d.get("type"): d.get("valueString") for d in entity.get("detail") or []}
        if reference.startswith("Patient/"):
            yield (
                reference.split("/")[1],
                str(details.get(PERSON_DETAIL)),
                str(details.get(TYPES_DETAIL) or ""),
            )


def entities_of(event: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(type, id) of each resource entity (read, written or aimed at)."""
    for entity in _with_role(event, "4"):
        parts = str((entity.get("what") or {}).get("reference", "")).split("/")
        if len(parts) >= 2:
            yield parts[0], parts[1]


def _with_role(event: dict[str, Any], code: str) -> Iterable[dict[str, Any]]:
    for entity in event.get("entity") or []:
        role = entity.get("role") or {}
        if role.get("system") == OBJECT_ROLE and role.get("code") == code:
            yield entity


# ----------------------------------------------------------------------- verify
@dataclass
class Verification:
    checked: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    broken_at: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify(db: Database, progress: Callable[[int], None] | None = None) -> Verification:
    """Walk the chain in order and recompute every link; stop at the first broken one."""
    result = Verification()
    expected_prev = GENESIS
    with db.snapshot() as session:
        while True:
            rows = (
                session.execute(
                    select(EVENT)
                    .where(EVENT.c.seq > result.last_seq)
                    .order_by(EVENT.c.seq)
                    .limit(VERIFY_BATCH)
                )
                .mappings()
                .all()
            )
            if not rows:
                break
            seqs = [row["seq"] for row in rows]
            derived = _derived_rows(session, seqs[0], seqs[-1])
            for row in rows:
                problem = _problem(row, result.last_seq, expected_prev, derived)
                if problem:
                    result.broken_at, result.problem = row["seq"], problem
                    return result
                result.checked += 1
                result.last_seq, result.last_hash = row["seq"], row["hash"]
                expected_prev = row["hash"]
            if progress is not None:
                progress(len(rows))
        head = session.execute(select(HEAD.c.last_seq, HEAD.c.last_hash)).one()
    if (head.last_seq, head.last_hash) != (result.last_seq, result.last_hash):
        result.broken_at = result.last_seq + 1
        result.problem = (
            f"the chain's head says it ends at {head.last_seq}, the records end at "
            f"{result.last_seq}: records were removed from the end"
        )
    return result


def _derived_rows(session: Session, first: int, last: int) -> dict[int, tuple[list, list]]:
    found: dict[int, tuple[list, list]] = {}
    for seq, patient, person, types in session.execute(
        select(PATIENT.c.audit_seq, PATIENT.c.patient_id, PATIENT.c.person, PATIENT.c.types).where(
            PATIENT.c.audit_seq.between(first, last)
        )
    ):
        found.setdefault(seq, ([], []))[0].append((patient, person, types))
    for seq, resource_type, resource_id in session.execute(
        select(ENTITY.c.audit_seq, ENTITY.c.resource_type, ENTITY.c.resource_id).where(
            ENTITY.c.audit_seq.between(first, last)
        )
    ):
        found.setdefault(seq, ([], []))[1].append((resource_type, resource_id))
    return found


def _problem(
    row: Any, previous_seq: int, expected_prev: str, derived: dict[int, tuple[list, list]]
) -> str | None:
    seq = row["seq"]
    if seq != previous_seq + 1:
        return f"records {previous_seq + 1} to {seq - 1} are missing"
    if row["prev_hash"] != expected_prev:
        return "its link to the record before it does not match"
    content = row["content"]
    if link_hash(seq, row["prev_hash"], content) != row["hash"]:
        return "its content does not match its hash (the record was changed)"
    columns = columns_of(content)
    for name, value in columns.items():
        stored = row[name]
        if name == "recorded":
            stored, value = as_utc(stored), as_utc(value)
        if stored != value:
            return f"its {name} column does not match the record"
    patients, entities = derived.get(seq, ([], []))
    if sorted(patients) != sorted(patients_of(content)):
        return "its patient rows do not match the record"
    if sorted(entities) != sorted(entities_of(content)):
        return "its resource rows do not match the record"
    return None

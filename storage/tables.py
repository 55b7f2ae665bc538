"""SQLModel tables.

* ``resource`` holds the current version of every resource (deleted ones as tombstones),
  ``resource_history`` every version including the current one; the body is JSON (``json``
  on PostgreSQL, the text as written, so decimals keep their digits) and carries its own
  ``meta.versionId`` / ``meta.lastUpdated``.
* ``search_token``, ``search_string``, ``search_reference``, ``search_date``,
  ``search_quantity`` (numbers too) and ``search_uri`` hold the search index rows of each
  resource, one row per value, written in the same transaction as the resource.
* ``outbox_message`` is the transactional outbox relayed by Celery; its ``subject`` names what
  a message belongs to (``Subscription/<id>``), so a subscriber can read its delivery log.
* ``subscription_route`` lists the active Subscriptions by the resource type of their criteria,
  so a write finds the Subscriptions it may trigger with one indexed query.
* ``patient_compartment`` says which patients (and which persons) each resource is about: one
  row per Patient the resource's compartment parameters point at, the ``person`` being the
  national-ID person of that Patient (so a citizen's records posted by several hospitals under
  several Patient resources are one person's). Written with the index rows.
* ``access_grant`` holds why a hospital may see a person's records: a care relationship (a
  visit, a referral, an appointment), the person's Consent (permit or deny) or a
  break-the-glass opening, each with its validity and the resource it comes from.
* ``audit_event`` is the audit trail, apart from clinical data, append-only and hash-chained;
  ``audit_patient`` and ``audit_entity`` index it by patient and by resource.
* ``api_client`` and ``signing_key`` back the OAuth2 token endpoint.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JsonBody = JSON().with_variant(JSONB(), "postgresql")
ResourceBody = JSON()
"""A FHIR resource, kept as the text the hub wrote: ``json`` on PostgreSQL, not ``jsonb``,
whose numeric drops a decimal's exponent and the sign of a negative zero (``1E+2`` reads
back ``100``, ``-0.0`` as ``0.0``) where FHIR keeps them (docs/adr/0010-exact-decimals.md)."""
SerialKey = BigInteger().with_variant(Integer(), "sqlite")


def _tz_column(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index))


class ResourceRow(SQLModel, table=True):
    __tablename__ = "resource"

    resource_type: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: datetime = _tz_column()
    deleted: bool = False
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(ResourceBody))
    owner_org: str | None = Field(default=None, max_length=128, nullable=True)
    """The Organization (``Organization/<id>``) whose client created the resource; None when
    the operator did (the command line, or versions stored before provenance was kept)."""
    restricted: bool = False
    """The current version carries a security label that restricts it (R, V, or a sensitive
    category such as HIV): a care relationship alone does not open it."""

    __table_args__ = (Index("ix_resource_type_updated", "resource_type", "last_updated"),)


class ResourceHistoryRow(SQLModel, table=True):
    __tablename__ = "resource_history"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    id: str = Field(max_length=64)
    version_id: int
    last_updated: datetime = _tz_column(index=True)
    deleted: bool = False
    method: str = Field(max_length=8)
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(ResourceBody))
    author_client: str = Field(default="operator", max_length=128)
    """The API client that wrote this version (``operator`` for the command line)."""
    author_org: str | None = Field(default=None, max_length=128, nullable=True)
    """The client's Organization (``Organization/<id>``); None for the operator."""

    __table_args__ = (
        UniqueConstraint("resource_type", "id", "version_id", name="uq_history_version"),
        Index("ix_history_type_updated", "resource_type", "last_updated"),
    )


class SearchTokenRow(SQLModel, table=True):
    __tablename__ = "search_token"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    code: str = Field(sa_column=Column(Text, nullable=False))

    __table_args__ = (
        Index("ix_token_lookup", "resource_type", "param", "code", "system"),
        # covering: checking a candidate's other token conditions reads the index only
        Index("ix_token_owner", "resource_type", "resource_id", "param", "system", "code"),
    )


class SearchStringRow(SQLModel, table=True):
    """String values, ``normalized`` case- and accent-folded for the default and :contains
    matches, ``exact`` as written for :exact. Token ``:text`` values live here too, under the
    parameter name suffixed with ``:text``."""

    __tablename__ = "search_string"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=80)
    normalized: str = Field(sa_column=Column(Text, nullable=False))
    exact: str = Field(sa_column=Column(Text, nullable=False))

    __table_args__ = (
        # text_pattern_ops lets PostgreSQL serve prefix LIKE (the default string match) by index
        Index(
            "ix_string_lookup",
            "resource_type",
            "param",
            "normalized",
            postgresql_ops={"normalized": "text_pattern_ops"},
        ),
        Index("ix_string_owner", "resource_type", "resource_id"),
    )


class SearchReferenceRow(SQLModel, table=True):
    __tablename__ = "search_reference"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    target_type: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    identifier_system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    identifier_value: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    __table_args__ = (
        Index("ix_reference_lookup", "resource_type", "param", "target_id", "target_type"),
        Index("ix_reference_target", "target_type", "target_id"),
        Index("ix_reference_owner", "resource_type", "resource_id"),
    )


class SearchDateRow(SQLModel, table=True):
    """A date value as the range it covers: ``low`` inclusive, ``high`` exclusive, in UTC."""

    __tablename__ = "search_date"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    low: datetime = _tz_column()
    high: datetime = _tz_column()

    __table_args__ = (
        Index("ix_date_lookup", "resource_type", "param", "low", "high"),
        Index(
            "ix_date_owner",
            "resource_type",
            "resource_id",
            "param",
            postgresql_include=["low", "high"],
        ),
    )


class SearchQuantityRow(SQLModel, table=True):
    """Quantities and numbers: the value and the range its precision implies."""

    __tablename__ = "search_quantity"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    value: Decimal = Field(sa_column=Column(Numeric, nullable=False))
    low: Decimal = Field(sa_column=Column(Numeric, nullable=False))
    high: Decimal = Field(sa_column=Column(Numeric, nullable=False))
    system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    code: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    unit: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    __table_args__ = (
        Index("ix_quantity_lookup", "resource_type", "param", "code", "value"),
        Index("ix_quantity_owner", "resource_type", "resource_id"),
    )


class SearchUriRow(SQLModel, table=True):
    __tablename__ = "search_uri"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))

    __table_args__ = (
        Index("ix_uri_lookup", "resource_type", "param", "value"),
        Index("ix_uri_owner", "resource_type", "resource_id"),
    )


class SearchCompositeRow(SQLModel, table=True):
    """Composite values: a token (``system``, ``code``) paired with a second value of the same
    element, in the columns of its kind (token, quantity, date range or string)."""

    __tablename__ = "search_composite"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    code: str = Field(sa_column=Column(Text, nullable=False))
    second_system: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    second_code: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    second_unit: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    num_low: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    num_high: Decimal | None = Field(default=None, sa_column=Column(Numeric, nullable=True))
    date_low: datetime | None = _tz_column(nullable=True)
    date_high: datetime | None = _tz_column(nullable=True)
    text_normalized: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    text_exact: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    __table_args__ = (
        Index("ix_composite_lookup", "resource_type", "param", "code", "system"),
        Index("ix_composite_owner", "resource_type", "resource_id"),
    )


class PatientCompartmentRow(SQLModel, table=True):
    """A resource is in ``patient_id``'s compartment; ``person`` is that patient's person key
    (:func:`emr_hub.fhir.persons.person_of`). A Patient has a row for itself."""

    __tablename__ = "patient_compartment"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    person: str = Field(max_length=64)

    __table_args__ = (
        Index("ix_compartment_owner", "resource_type", "resource_id", "person"),
        Index("ix_compartment_patient", "patient_id"),
        Index("ix_compartment_person", "person", "resource_type"),
    )


class AccessGrant(SQLModel, table=True):
    """Why ``organization`` may (or, ``kind`` deny, may not) see ``person``'s records.

    ``kind``: ``care`` (a relationship: visit, referral, appointment), ``permit`` and ``deny``
    (the person's Consent; ``organization`` ``*`` for every hospital), ``break-glass``.
    Valid from ``starts`` (None: always) until ``ends`` (None: open). ``purpose`` limits a
    Consent to one purpose of use (None: any). ``source_type``/``source_id`` is the resource
    (or, for break-the-glass, the audit event) the grant comes from.
    """

    __tablename__ = "access_grant"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    organization: str = Field(max_length=128)
    person: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    strength: int
    """How strongly the grant decides (the access policy's order: the strongest applying grant
    wins, an odd rank opens); kept with the row so a check needs no computation."""
    purpose: str | None = Field(default=None, max_length=32, nullable=True)
    patient_id: str = Field(max_length=64)
    source_type: str = Field(max_length=64)
    source_id: str = Field(max_length=64)
    starts: datetime | None = _tz_column(nullable=True)
    ends: datetime | None = _tz_column(nullable=True)

    __table_args__ = (
        Index("ix_grant_lookup", "person", "organization", "kind"),
        Index("ix_grant_source", "source_type", "source_id"),
        Index("ix_grant_patient", "patient_id"),
    )


class AuditEventRow(SQLModel, table=True):
    """One audit record: the FHIR ``AuditEvent`` in ``content`` and the columns searches use.

    ``hash`` is SHA-256 over ``prev_hash`` and the canonical JSON of ``content``; every row
    links to the one before it (by ``seq``), so a changed, removed or inserted row breaks the
    chain (``emr-hub audit verify``). Database triggers refuse UPDATE and DELETE.
    """

    __tablename__ = "audit_event"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    event_id: str = Field(max_length=36, unique=True)
    recorded: datetime = _tz_column(index=True)
    request_id: str | None = Field(default=None, max_length=200, nullable=True)
    client_id: str | None = Field(default=None, max_length=128, nullable=True)
    organization: str | None = Field(default=None, max_length=128, nullable=True)
    person: str | None = Field(default=None, max_length=64, nullable=True)
    action: str = Field(max_length=1)
    subtype: str = Field(max_length=64)
    outcome: str = Field(max_length=2)
    break_glass: bool = False
    content: dict[str, Any] = Field(sa_column=Column(JsonBody, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)

    __table_args__ = (Index("ix_audit_organization", "organization", "seq"),)


class AuditPatientRow(SQLModel, table=True):
    """An audit record touched this patient's data (``types``: the resource types, sorted)."""

    __tablename__ = "audit_patient"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    audit_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    patient_id: str = Field(max_length=64)
    person: str = Field(max_length=64)
    types: str = Field(sa_column=Column(Text, nullable=False))

    __table_args__ = (
        Index("ix_audit_patient_person", "person", "audit_seq"),
        Index("ix_audit_patient_patient", "patient_id", "audit_seq"),
    )


class AuditEntityRow(SQLModel, table=True):
    """An audit record names this resource (read, written, or the target of the request)."""

    __tablename__ = "audit_entity"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    audit_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=64)

    __table_args__ = (Index("ix_audit_entity_resource", "resource_type", "resource_id"),)


class AuditChainHead(SQLModel, table=True):
    """The last link of the audit chain: appenders lock this row, so links never fork."""

    __tablename__ = "audit_chain_head"

    id: int = Field(primary_key=True)
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_hash: str = Field(max_length=64)


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"

    id: str = Field(primary_key=True, max_length=36)
    topic: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_column=Column(JsonBody, nullable=False))
    created_at: datetime = _tz_column()
    available_at: datetime = _tz_column(index=True)
    attempts: int = 0
    delivered_at: datetime | None = _tz_column(nullable=True, index=True)
    failed_at: datetime | None = _tz_column(nullable=True)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    subject: str | None = Field(default=None, max_length=128, nullable=True)
    sequence_key: str | None = Field(default=None, max_length=255, nullable=True)
    """Messages with the same key are sent in the order of ``sequence`` (see outbox)."""
    sequence: int | None = None

    __table_args__ = (
        Index("ix_outbox_subject", "subject", "created_at"),
        Index("ix_outbox_sequence", "sequence_key", "sequence"),
    )


class SubscriptionRoute(SQLModel, table=True):
    """One row per active Subscription: the type its criteria search and the criteria."""

    __tablename__ = "subscription_route"

    subscription_id: str = Field(primary_key=True, max_length=64)
    resource_type: str = Field(max_length=64, index=True)
    criteria: str = Field(sa_column=Column(Text, nullable=False))
    ends_at: datetime | None = _tz_column(nullable=True)
    owner_org: str | None = Field(default=None, max_length=128, nullable=True)
    """The subscriber's Organization: matches are what it may see (None: the operator)."""


class ApiClient(SQLModel, table=True):
    """A client of the token endpoint: a hospital system (or an operator's tool).

    It authenticates with a secret (``secret_hash``, a scrypt hash) or with a JWT signed by a
    key of its public JWK Set, registered as such (``jwks``) or fetched from ``jwks_url``.
    """

    __tablename__ = "api_client"

    client_id: str = Field(primary_key=True, max_length=128)
    secret_hash: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """None for a client that authenticates with its keys only."""
    organization: str = Field(max_length=128)
    scopes: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _tz_column()
    active: bool = True
    role: str = Field(default="hospital", max_length=16)
    """``hospital`` (sees what the access policy allows its Organization) or ``operator``
    (sees and changes everything, audited like any other client)."""
    break_glass: bool = False
    """May open a patient's record in an emergency (``X-Purpose-Of-Use: ETREAT``)."""
    jwks: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(
            JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
            nullable=True,
        ),
    )
    """The client's public JWK Set, as registered."""
    jwks_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """Where the client publishes its public JWK Set (instead of ``jwks``)."""
    generation: int = 1
    """Raised when the client is re-registered or disabled; access tokens carry the value
    they were issued under, so older ones stop working at once."""


class SigningKey(SQLModel, table=True):
    """A key the hub signs access tokens with. The private key is sealed (AES-256-GCM) with a
    key-encryption key kept outside the database; ``public_jwk`` is its public half.

    The signer is the active key without ``retires_at``; a rotated-out key keeps verifying
    until ``retires_at``, then is retired: inactive, its sealed private key removed.
    """

    __tablename__ = "signing_key"

    kid: str = Field(primary_key=True, max_length=64)
    algorithm: str = Field(max_length=16)
    private_jwk: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(
            JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
            nullable=True,
        ),
    )
    """The private key in clear: only in rows written before revision 0007, until the first
    use seals it into ``sealed_private``."""
    created_at: datetime = _tz_column()
    active: bool = True
    sealed_private: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    public_jwk: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(
            JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
            nullable=True,
        ),
    )
    retires_at: datetime | None = _tz_column(nullable=True)


class ClientAssertionRow(SQLModel, table=True):
    """A client assertion (RFC 7523) already used, by its ``jti``: kept until the assertion
    can no longer be accepted, so that none is accepted twice, whichever API process sees it."""

    __tablename__ = "client_assertion"

    client_id: str = Field(primary_key=True, max_length=128)
    jti: str = Field(primary_key=True, max_length=255)
    expires_at: datetime = _tz_column(index=True)


class TokenFailureRow(SQLModel, table=True):
    """A failed token request, counted against the client id it claimed (``kind`` client) and
    its remote address (``kind`` address) to throttle guessing."""

    __tablename__ = "token_failure"

    seq: int | None = Field(default=None, sa_column=Column(SerialKey, primary_key=True))
    kind: str = Field(max_length=8)
    subject: str = Field(max_length=128)
    failed_at: datetime = _tz_column(index=True)

    __table_args__ = (Index("ix_token_failure_subject", "kind", "subject", "failed_at"),)


class ExportJob(SQLModel, table=True):
    """A Bulk Data ``$export``: what was asked, by whom, how far the worker has come, and the
    files written so far (see :mod:`emr_hub.export`).

    ``active_client`` holds the client id while the export is accepted or running and is
    emptied when it ends: its unique index is what refuses a client a second export at a time,
    whichever API process takes the request. ``lease_until`` is the running worker's claim,
    renewed at every checkpoint; a job whose lease has run out is resumed by the sweep from
    ``checkpoint``."""

    __tablename__ = "export_job"

    id: str = Field(primary_key=True, max_length=36)
    client_id: str = Field(max_length=128)
    organization: str | None = Field(default=None, max_length=128, nullable=True)
    principal_kind: str = Field(max_length=16)
    scopes: str = Field(sa_column=Column(Text, nullable=False))
    level: str = Field(max_length=16)
    """``system``, ``patient`` or ``group``."""
    parameters: dict[str, Any] = Field(sa_column=Column(JsonBody, nullable=False))
    request_url: str = Field(sa_column=Column(Text, nullable=False))
    request_id: str | None = Field(default=None, max_length=128, nullable=True)
    transaction_time: datetime = _tz_column()
    status: str = Field(max_length=16, index=True)
    active_client: str | None = Field(default=None, max_length=128, nullable=True, unique=True)
    created_at: datetime = _tz_column()
    updated_at: datetime = _tz_column()
    lease_owner: str | None = Field(default=None, max_length=36, nullable=True)
    lease_until: datetime | None = _tz_column(nullable=True)
    attempts: int = 0
    exported: int = 0
    """Resources written to files that are checkpointed."""
    checkpoint: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(
            JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
            nullable=True,
        ),
    )
    files: list[dict[str, Any]] = Field(sa_column=Column(JsonBody, nullable=False))
    failure: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    polled_at: datetime | None = _tz_column(nullable=True)
    expires_at: datetime | None = _tz_column(nullable=True, index=True)


class HealthCardKey(SQLModel, table=True):
    """A key the hub signs SMART Health Cards with: ES256 on P-256, apart from the access-token
    keys of ``signing_key`` so neither kind of signature can pass for the other.

    The newest key published for long enough signs (``emr_hub.healthbook.card_keys``). A key
    a newer one took over from gets ``rotated_at`` and loses its sealed private key, but its
    public half stays published for good: the cards it signed stay in wallets for years."""

    __tablename__ = "health_card_key"

    kid: str = Field(primary_key=True, max_length=64)
    algorithm: str = Field(max_length=16)
    sealed_private: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    public_jwk: dict[str, Any] = Field(sa_column=Column(JsonBody, nullable=False))
    created_at: datetime = _tz_column()
    rotated_at: datetime | None = _tz_column(nullable=True)


class DicomStudy(SQLModel, table=True):
    """A DICOM study held in the object store, indexed for QIDO-RS (:mod:`emr_hub.imaging`).

    The matching keys are columns (PatientName also as ``patient_name_key``, upper case without
    diacritics, for fuzzy matching); ``attributes`` is the DICOM JSON of the study's newest
    instance for ``includefield``. ``imaging_study_id`` is its ImagingStudy: the study is
    visible to whom that resource is."""

    __tablename__ = "dicom_study"

    study_uid: str = Field(primary_key=True, max_length=64)
    imaging_study_id: str = Field(max_length=64, unique=True)
    patient_id: str | None = Field(default=None, max_length=64, nullable=True, index=True)
    patient_name: str | None = Field(default=None, max_length=324, nullable=True)
    patient_name_key: str | None = Field(default=None, max_length=324, nullable=True)
    patient_birth_date: str | None = Field(default=None, max_length=8, nullable=True)
    patient_sex: str | None = Field(default=None, max_length=16, nullable=True)
    study_date: str | None = Field(default=None, max_length=8, nullable=True, index=True)
    study_time: str | None = Field(default=None, max_length=16, nullable=True)
    accession_number: str | None = Field(default=None, max_length=16, nullable=True, index=True)
    study_id: str | None = Field(default=None, max_length=16, nullable=True)
    study_description: str | None = Field(default=None, max_length=64, nullable=True)
    referring_physician: str | None = Field(default=None, max_length=324, nullable=True)
    modalities: str = Field(default="", max_length=128)
    """The modalities of its series, ``\\``-joined."""
    series_count: int = 0
    instance_count: int = 0
    attributes: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime = _tz_column()


class DicomSeries(SQLModel, table=True):
    """A series of a :class:`DicomStudy`; ``metadata_key`` names the object holding the
    WADO-RS metadata of all its instances, rewritten with each upload to the series."""

    __tablename__ = "dicom_series"

    series_uid: str = Field(primary_key=True, max_length=64)
    study_uid: str = Field(max_length=64, index=True)
    modality: str | None = Field(default=None, max_length=16, nullable=True)
    series_number: int | None = None
    series_description: str | None = Field(default=None, max_length=64, nullable=True)
    body_part: str | None = Field(default=None, max_length=16, nullable=True)
    instance_count: int = 0
    metadata_key: str | None = Field(default=None, max_length=1024, nullable=True)
    attributes: str = Field(sa_column=Column(Text, nullable=False))


class DicomInstance(SQLModel, table=True):
    """A stored DICOM instance: its object, SHA-256, where its native pixel data lies (for
    ``/frames``) and its metadata (DICOM JSON, the pixel data as a BulkDataURI)."""

    __tablename__ = "dicom_instance"

    sop_uid: str = Field(primary_key=True, max_length=64)
    series_uid: str = Field(max_length=64, index=True)
    study_uid: str = Field(max_length=64, index=True)
    sop_class_uid: str = Field(max_length=64)
    instance_number: int | None = None
    transfer_syntax: str = Field(max_length=64)
    object_key: str = Field(max_length=1024)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    frames: int = 1
    rows: int | None = None
    columns: int | None = None
    frame_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    pixel_offset: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    metadata_json: str = Field(sa_column=Column(Text, nullable=False))
    stored_at: datetime = _tz_column()


class CitizenSession(SQLModel, table=True):
    """A citizen's sign-in to the health-book page (:mod:`emr_hub.healthbook.session`).

    Her cookie carries a random secret; the row keeps only its SHA-256, so a copy of the
    database opens no session. Logout sets ``revoked_at``; rows past ``expires_at`` are removed
    at a later sign-in."""

    __tablename__ = "citizen_session"

    id: str = Field(primary_key=True, max_length=64)
    person: str = Field(max_length=36, index=True)
    method: str = Field(max_length=16)
    created_at: datetime = _tz_column()
    expires_at: datetime = _tz_column(index=True)
    revoked_at: datetime | None = _tz_column(nullable=True)


class HealthLink(SQLModel, table=True):
    """A SMART Health Link a citizen made to share her health book (see
    :mod:`emr_hub.healthbook.links`).

    What a copy of the database gives away: nothing that opens the link. The manifest URL's
    secret is kept as its SHA-256 (``token_digest``), the passcode as a scrypt hash, the link's
    encryption key sealed with the key-encryption key (``sealed_key``). ``attempts_left`` is
    the lifetime budget of passcode checks, taken one at a time by a conditional UPDATE before
    each check and given back when the passcode was right."""

    __tablename__ = "health_link"

    id: str = Field(primary_key=True, max_length=36)
    token_digest: str = Field(max_length=64, unique=True)
    patient_id: str = Field(max_length=64)
    person: str = Field(max_length=36, index=True)
    label: str | None = Field(default=None, max_length=80, nullable=True)
    passcode_hash: str = Field(max_length=255)
    sealed_key: str = Field(sa_column=Column(Text, nullable=False))
    attempts_left: int
    created_at: datetime = _tz_column()
    expires_at: datetime = _tz_column()
    revoked_at: datetime | None = _tz_column(nullable=True)


class HealthLinkFile(SQLModel, table=True):
    """A file of a manifest answered with a ``location`` rather than embedded: its JWE (already
    encrypted with the link's key) until it is fetched once or expires."""

    __tablename__ = "health_link_file"

    token_digest: str = Field(primary_key=True, max_length=64)
    link_id: str = Field(max_length=36, index=True)
    content_type: str = Field(max_length=64)
    jwe: str = Field(sa_column=Column(Text, nullable=False))
    expires_at: datetime = _tz_column(index=True)


class WalletPush(SQLModel, table=True):
    """A push of a citizen's health book to the identity wallet (:mod:`emr_hub.healthbook.push`).

    The row is written with the change that owes the push, beside its outbox message (same
    ``id``), which carries when it was owed, the attempts, the next attempt and the last error;
    this row adds what only the delivery knows: the digest and idempotency key sent, when it
    was sent and answered, and how it ended (``outcome``: None while owed)."""

    __tablename__ = "wallet_push"

    id: str = Field(primary_key=True, max_length=36)
    person: str = Field(max_length=64)
    """The citizen's person key (of her CCCD): one push carries all her Patients' cards."""
    changes: int = 1
    """Transactions coalesced into this push."""
    outcome: str | None = Field(default=None, max_length=16, nullable=True)
    digest: str | None = Field(default=None, max_length=64, nullable=True)
    idempotency_key: str | None = Field(default=None, max_length=36, nullable=True)
    generation: int | None = None
    """Which delivered push of the person this is (1, 2 ...): part of the idempotency key."""
    sent_at: datetime | None = _tz_column(nullable=True)
    answered_at: datetime | None = _tz_column(nullable=True)
    answer: int | None = None
    """The wallet's HTTP status to the last attempt."""

    __table_args__ = (
        Index("ix_wallet_push_person", "person", "outcome", "generation"),
        Index("ix_wallet_push_owed", "outcome", "person"),
    )


class DicomAe(SQLModel, table=True):
    """A DICOM application entity (a modality, a PACS) allowed to send to the hub's C-STORE
    receiver, and the hospital whose images it sends (``emr-hub dicom-ae add``)."""

    __tablename__ = "dicom_ae"

    ae_title: str = Field(primary_key=True, max_length=16)
    organization: str = Field(max_length=128)
    created_at: datetime = _tz_column()

"""SQLModel tables.

* ``resource`` holds the current version of every resource (deleted ones as tombstones),
  ``resource_history`` every version including the current one; the body is JSON (JSONB on
  PostgreSQL) and carries its own ``meta.versionId`` / ``meta.lastUpdated``.
* ``search_token``, ``search_string``, ``search_reference``, ``search_date``,
  ``search_quantity`` (numbers too) and ``search_uri`` hold the search index rows of each
  resource, one row per value, written in the same transaction as the resource.
* ``outbox_message`` is the transactional outbox relayed by Celery; its ``subject`` names what
  a message belongs to (``Subscription/<id>``), so a subscriber can read its delivery log.
* ``subscription_route`` lists the active Subscriptions by the resource type of their criteria,
  so a write finds the Subscriptions it may trigger with one indexed query.
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
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(JsonBody))

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
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(JsonBody))

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

    __table_args__ = (Index("ix_outbox_subject", "subject", "created_at"),)


class SubscriptionRoute(SQLModel, table=True):
    """One row per active Subscription: the type its criteria search and the criteria."""

    __tablename__ = "subscription_route"

    subscription_id: str = Field(primary_key=True, max_length=64)
    resource_type: str = Field(max_length=64, index=True)
    criteria: str = Field(sa_column=Column(Text, nullable=False))
    ends_at: datetime | None = _tz_column(nullable=True)


class ApiClient(SQLModel, table=True):
    __tablename__ = "api_client"

    client_id: str = Field(primary_key=True, max_length=128)
    secret_hash: str = Field(sa_column=Column(Text, nullable=False))
    organization: str = Field(max_length=128)
    scopes: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _tz_column()
    active: bool = True


class SigningKey(SQLModel, table=True):
    __tablename__ = "signing_key"

    kid: str = Field(primary_key=True, max_length=64)
    algorithm: str = Field(max_length=16)
    private_jwk: dict[str, Any] = Field(sa_column=Column(JsonBody, nullable=False))
    created_at: datetime = _tz_column()
    active: bool = True

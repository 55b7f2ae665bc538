"""Revision 0007 (backend services): the schema it makes is the models', on SQLite and
PostgreSQL, and a database of revision 0006 (clear signing key, secret clients) carries on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from joserfc.jwk import ECKey
from sqlalchemy import text
from sqlmodel import SQLModel

from emr_hub.hub import Hub
from emr_hub.security.clients import authenticate_client
from emr_hub.security.keys import signing_key, verification_key
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.secrets import hash_secret
from emr_hub.security.tokens import issue_access_token, verify_access_token
from storage.db import Database
from storage.migrate import alembic_config, upgrade
from tests.conftest import make_settings


def test_models_and_database_agree(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        upgrade(db.engine)
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        db.dispose()


def test_upgrade_from_0006_keeps_keys_and_clients(tmp_path: Path, empty_database_url: str) -> None:
    db = Database(empty_database_url)
    legacy = ECKey.generate_key("P-256")
    kid = legacy.thumbprint()
    try:
        with db.engine.begin() as conn:
            config = alembic_config(empty_database_url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0006")
        with db.engine.begin() as conn:  # what the code of revision 0006 wrote
            conn.execute(
                text(
                    "INSERT INTO signing_key (kid, algorithm, private_jwk, created_at, active) "
                    "VALUES (:kid, 'ES256', :jwk, :now, :yes)"
                ),
                {
                    "kid": kid,
                    "jwk": json.dumps(
                        {
                            name: legacy.as_dict(private=True)[name]
                            for name in ("kty", "crv", "x", "y", "d")
                        }
                    ),
                    "now": datetime.now(UTC),
                    "yes": True,
                },
            )
            conn.execute(
                text(
                    "INSERT INTO api_client (client_id, secret_hash, organization, scopes, "
                    "created_at, active, role, break_glass) VALUES ('old', :hash, "
                    "'Organization/old', 'system/*.rs', :now, :yes, 'hospital', :no)"
                ),
                {"hash": hash_secret("s"), "now": datetime.now(UTC), "yes": True, "no": False},
            )
    finally:
        db.dispose()

    hub = Hub.from_settings(make_settings(tmp_path, empty_database_url), migrate=True)
    try:
        assert verification_key(hub, kid) is not None  # verifies before sealing
        assert signing_key(hub).kid == kid  # the old key signs on, now sealed
        with hub.db.engine.connect() as conn:
            row = conn.execute(
                text("SELECT private_jwk, sealed_private FROM signing_key WHERE kid = :kid"),
                {"kid": kid},
            ).one()
            client = conn.execute(
                text("SELECT generation, jwks, jwks_url FROM api_client WHERE client_id = 'old'")
            ).one()
        assert row[0] is None and str(row[1]).startswith("v1.")
        assert tuple(client) == (1, None, None)
        with hub.db.transaction() as session:
            old = authenticate_client(session, "old", "s")  # the secret still works
        assert old is not None and old.generation == 1
        token, _ = issue_access_token(hub, old, ScopeSet.parse("system/*.rs"))
        assert verify_access_token(hub, token).client_id == "old"
    finally:
        hub.close()

"""The database drops the hub's connections under it (as a restart does): the request that
meets a dead connection is answered 503 with Retry-After, never a 500, and the ones after it
are served on new connections. The pool does not ping on checkout, so this is what keeps one
outage from becoming many failed requests; the read paths' prepared statements, which run on
the driver, must report a lost connection the way SQLAlchemy does."""

from __future__ import annotations

from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.token_cache import LISTENER
from tests.conftest import make_settings
from tests.fhir.conftest import Api, token_for


def kill_pooled_backends(hub: Hub) -> int:
    """Every backend of the hub's pool; the token cache's listener is spared, so the next
    read's token is still kept and the read goes straight to its prepared statement."""
    url = hub.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name <> %s",
            (LISTENER,),
        ).fetchall()
    return len(rows)


def test_one_answer_sees_a_database_restart(tmp_path: Path, postgres_url: str) -> None:
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    try:
        with TestClient(create_app(hub)) as client:
            api = Api(client, token_for(hub))
            created = api.post("/Patient", {"resourceType": "Patient", "gender": "female"})
            assert created.status_code == 201, created.text
            path = f"/Patient/{created.json()['id']}"
            assert api.get(path).status_code == 200
            assert api.get(f"{path}/_history/1").status_code == 200
            assert hub.token_cache.cached(api.token or "") is not None
            assert kill_pooled_backends(hub) >= 1
            first = api.get(path)
            assert first.status_code in (200, 503), first.text
            if first.status_code == 503:
                assert first.headers["retry-after"]
            later = [api.get(path).status_code, api.get(f"{path}/_history/1").status_code]
            assert later == [200, 200]
    finally:
        hub.close()


def test_a_prepared_statement_on_a_lost_connection_raises_as_sqlalchemy_does(
    tmp_path: Path, postgres_url: str
) -> None:
    """The read paths' prepared statements run on the driver: a connection lost under one
    is raised as SQLAlchemy's OperationalError (which the API answers 503), marked lost, and
    the pool is renewed, so the next session works."""
    from sqlalchemy import bindparam, select
    from sqlalchemy.exc import OperationalError

    from storage.prepared import Prepared
    from storage.tables import ResourceRow

    table = ResourceRow.__table__
    statement = Prepared(select(table.c.id).where(table.c.id == bindparam("wanted")))
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    try:
        with hub.db.single_read() as session:
            assert statement.first(session, {"wanted": "none"}) is None
        with hub.db.single_read() as session:
            connection = session.connection()
            assert kill_pooled_backends(hub) >= 1
            try:
                statement.first(session, {"wanted": "none"})
            except OperationalError as error:
                assert error.connection_invalidated and connection.invalidated
            else:
                raise AssertionError("a statement on a killed backend succeeded")
        with hub.db.single_read() as session:
            assert statement.first(session, {"wanted": "none"}) is None
    finally:
        hub.close()

"""The verified tokens an API process keeps: used again only while no client has changed.

Changes are made the ways an operator makes them: through the ORM in this process, and with
plain SQL on another connection (another process, a console), which only the PostgreSQL
notification can tell this process about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.security import token_cache
from emr_hub.security.clients import set_client_active
from emr_hub.security.token_cache import LISTENER, TokenCache
from tests.conftest import make_settings
from tests.security.test_tokens import CLIENT_ID, add_client, token_for

WAIT = 10.0  # seconds: a bound on waiting for a notification, never a pause


def on_another_connection(hub: Hub, sql: str, *params: Any) -> None:
    url = hub.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def listening_cache(hub: Hub) -> TokenCache:
    cache = hub.token_cache
    assert cache.wait_listening(WAIT), "the listener did not connect"
    return cache


def test_sqlite_keeps_nothing(tmp_path: Path) -> None:
    """SQLite has no change notifications: every request is verified in full."""
    hub = Hub.from_settings(make_settings(tmp_path), migrate=True)
    try:
        add_client(hub)
        token = token_for(hub)
        cache = hub.token_cache
        assert cache.verify(token).client_id == CLIENT_ID
        assert cache.cached(token) is None
        assert not cache.listening
    finally:
        hub.close()


@pytest.fixture
def pg_hub(tmp_path: Path, postgres_url: str) -> Iterator[Hub]:
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    add_client(hub)
    yield hub
    hub.close()


def test_a_verified_token_is_kept(pg_hub: Hub) -> None:
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    assert cache.cached(token) is None
    principal = cache.verify(token)
    assert cache.cached(token) == principal
    assert cache.cached(token + "x") is None


def test_a_forged_token_is_refused_and_not_kept(pg_hub: Hub) -> None:
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(FhirError):
        cache.verify(forged)
    assert cache.cached(forged) is None


def test_disabling_in_this_process_drops_kept_tokens_at_commit(pg_hub: Hub) -> None:
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    cache.verify(token)
    with pg_hub.db.transaction() as session:
        assert set_client_active(session, CLIENT_ID, False)
    assert cache.cached(token) is None  # no waiting: dropped before the commit returned
    with pytest.raises(FhirError, match="disabled"):
        cache.verify(token)


def test_a_change_made_elsewhere_reaches_the_cache(pg_hub: Hub) -> None:
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    cache.verify(token)
    seen = cache.changes
    on_another_connection(
        pg_hub, "UPDATE api_client SET active = false WHERE client_id = %s", CLIENT_ID
    )
    assert cache.wait_for_change(seen, WAIT), "no notification arrived"
    assert cache.cached(token) is None
    with pytest.raises(FhirError, match="disabled"):
        cache.verify(token)


def test_a_token_verified_while_a_client_changes_is_not_kept(
    pg_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client row read during verification may predate the change: not kept."""
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    verify: Callable[[Hub, str], Any] = token_cache.verify_access_token

    def verify_while_another_client_changes(hub: Hub, text: str) -> Any:
        principal = verify(hub, text)
        seen = cache.changes
        on_another_connection(
            hub, "UPDATE api_client SET generation = generation WHERE client_id = %s", "other"
        )
        assert cache.wait_for_change(seen, WAIT)
        return principal

    monkeypatch.setattr(token_cache, "verify_access_token", verify_while_another_client_changes)
    assert cache.verify(token).client_id == CLIENT_ID
    assert cache.cached(token) is None
    monkeypatch.setattr(token_cache, "verify_access_token", verify)
    cache.verify(token)
    assert cache.cached(token) is not None


def test_a_lost_listener_keeps_nothing_until_it_listens_again(pg_hub: Hub) -> None:
    cache = listening_cache(pg_hub)
    token = token_for(pg_hub)
    cache.verify(token)
    seen = cache.changes
    on_another_connection(
        pg_hub,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = current_database()",
        LISTENER,
    )
    assert cache.wait_for_change(seen, WAIT)
    assert cache.cached(token) is None
    assert cache.wait_listening(WAIT), "the listener did not reconnect"
    cache.verify(token)
    assert cache.cached(token) is not None


def test_the_cache_holds_a_bounded_number_of_tokens(
    pg_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_cache, "MAX_ENTRIES", 3)
    cache = listening_cache(pg_hub)
    tokens = [token_for(pg_hub) for _ in range(5)]
    for token in tokens:
        cache.verify(token)
    assert [cache.cached(t) is not None for t in tokens] == [False, False, True, True, True]

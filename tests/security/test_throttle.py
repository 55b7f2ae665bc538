"""Failed token requests are throttled per client id and per remote address (state in the
database, shared by API processes); what a request claimed and how it ended is left on
request.state for the audit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import Request, Response
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security import throttle
from emr_hub.security.clients import Registration, register_client
from emr_hub.security.scopes import ScopeSet
from storage.db import Database
from storage.tables import TokenFailureRow
from tests.security.conftest import (
    ORGANIZATION,
    ClientKey,
    assert_oauth_error,
    assertion_claims,
    assertion_form,
    jwks_of,
    with_settings,
)

PER_CLIENT = 3
PER_ADDRESS = 5
WINDOW = 300


@pytest.fixture
def limited(hub: Hub) -> Hub:
    return with_settings(
        hub,
        token_failures_per_client=PER_CLIENT,
        token_failures_per_address=PER_ADDRESS,
        token_failure_window_seconds=WINDOW,
    )


@pytest.fixture
def secret(limited: Hub, organization: str) -> str:
    with limited.db.transaction() as session:
        secret = register_client(
            session, "his-a", Registration(ORGANIZATION, ScopeSet.parse("system/Patient.rs"))
        )
    assert secret is not None
    return secret


def client_from(hub: Hub, address: str) -> TestClient:
    return TestClient(create_app(hub), client=(address, 40000))


def by_secret(app: TestClient, client_id: str, secret: str) -> Any:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return app.post("/auth/token", data=form)


def test_per_client_limit_then_429(limited: Hub, secret: str) -> None:
    with client_from(limited, "10.0.0.1") as first, client_from(limited, "10.0.0.2") as second:
        for _ in range(PER_CLIENT):
            assert_oauth_error(by_secret(first, "his-a", "wrong"), 401, "invalid_client")
        # The client id is throttled from any address, even with the right secret.
        throttled = by_secret(second, "his-a", secret)
        description = assert_oauth_error(throttled, 429, "temporarily_unavailable", "retry in")
        retry_after = int(throttled.headers["retry-after"])
        assert 0 < retry_after <= WINDOW
        assert f"retry in {retry_after} s" in description
        # Another client from the same address is not.
        assert_oauth_error(by_secret(first, "his-b", "wrong"), 401, "invalid_client")


def test_per_address_limit_then_429(limited: Hub, secret: str) -> None:
    with client_from(limited, "10.0.0.3") as noisy, client_from(limited, "10.0.0.4") as quiet:
        for number in range(PER_ADDRESS):  # each failure under a new client id
            assert_oauth_error(by_secret(noisy, f"guess-{number}", "x"), 401, "invalid_client")
        assert_oauth_error(by_secret(noisy, "his-a", secret), 429, "temporarily_unavailable")
        assert by_secret(quiet, "his-a", secret).status_code == 200


def test_successes_do_not_count(limited: Hub, secret: str) -> None:
    with client_from(limited, "10.0.0.5") as app:
        for _ in range(PER_CLIENT * 3):
            assert by_secret(app, "his-a", secret).status_code == 200
        for _ in range(PER_CLIENT - 1):
            assert_oauth_error(by_secret(app, "his-a", "wrong"), 401, "invalid_client")
        assert by_secret(app, "his-a", secret).status_code == 200


def test_throttled_requests_do_not_extend_the_lock_out(limited: Hub, secret: str) -> None:
    for _ in range(PER_CLIENT):
        throttle.record_failure(limited, "his-a", None)
    with client_from(limited, "10.0.0.6") as app:
        for _ in range(5):
            assert by_secret(app, "his-a", "wrong").status_code == 429
    with limited.db.snapshot() as session:
        counted = session.scalar(
            select(func.count())
            .select_from(TokenFailureRow)
            .where(TokenFailureRow.kind == throttle.CLIENT)
        )
    assert counted == PER_CLIENT


def test_failures_leave_the_window(limited: Hub, secret: str) -> None:
    """Failures older than the window no longer count, and are pruned."""
    long_ago = datetime.now(UTC) - timedelta(seconds=WINDOW + 1)
    for _ in range(PER_CLIENT):
        throttle.record_failure(limited, "his-a", "10.0.0.7", now=long_ago)
    assert throttle.retry_after(limited, "his-a", "10.0.0.7") is None
    recent = datetime.now(UTC) - timedelta(seconds=WINDOW - 60)
    for _ in range(PER_CLIENT):
        throttle.record_failure(limited, "his-a", None, now=recent)
    wait = throttle.retry_after(limited, "his-a", None)
    assert wait is not None and 55 <= wait <= 61


def test_state_is_shared_by_processes(limited: Hub, secret: str) -> None:
    other = Hub(settings=limited.settings, db=Database(limited.settings.effective_database_url))
    try:
        with client_from(limited, "10.0.0.8") as first, client_from(other, "10.0.0.9") as second:
            for _ in range(PER_CLIENT):
                assert by_secret(first, "his-a", "wrong").status_code == 401
            assert by_secret(second, "his-a", secret).status_code == 429
    finally:
        other.close()


def test_assertion_failures_count_against_the_issuer(limited: Hub, organization: str) -> None:
    key = ClientKey("ES384")
    with limited.db.transaction() as session:
        register_client(
            session,
            "his-k",
            Registration(ORGANIZATION, ScopeSet.parse("system/Patient.rs"), jwks=jwks_of(key)),
        )
    stranger = ClientKey("ES384", kid=key.kid)
    with client_from(limited, "10.0.0.10") as app:
        for _ in range(PER_CLIENT):
            form = assertion_form(stranger.sign(assertion_claims(limited, "his-k")))
            assert_oauth_error(app.post("/auth/token", data=form), 401, "invalid_client")
        good = assertion_form(key.sign(assertion_claims(limited, "his-k")))
        assert_oauth_error(app.post("/auth/token", data=good), 429, "temporarily_unavailable")


# --- what the audit reads -------------------------------------------------------------------


@pytest.fixture
def seen(limited: Hub) -> Iterator[tuple[TestClient, list[tuple[Any, Any]]]]:
    """The real app, with a middleware recording the token request's state (as the audit
    middleware will)."""
    app = create_app(limited)
    recorded: list[tuple[Any, Any]] = []

    @app.middleware("http")
    async def record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        recorded.append(
            (
                getattr(request.state, "token_client_id", "unset"),
                getattr(request.state, "token_outcome", "unset"),
            )
        )
        return response

    with TestClient(app, client=("10.0.0.11", 40000)) as client:
        yield client, recorded


def test_request_state_names_the_claimed_client_and_the_outcome(
    limited: Hub, secret: str, seen: tuple[TestClient, list[tuple[Any, Any]]]
) -> None:
    app, recorded = seen
    by_secret(app, "his-a", secret)
    by_secret(app, "his-a", "wrong")
    by_secret(app, "not a client id!", "x")
    app.post("/auth/token", data={"grant_type": "password", "client_id": "his-a"})
    key = ClientKey("ES384")
    app.post("/auth/token", data=assertion_form(key.sign(assertion_claims(limited, "his-z"))))
    assert recorded == [
        ("his-a", "success"),
        ("his-a", "invalid_client"),
        (None, "invalid_client"),
        ("his-a", "unsupported_grant_type"),
        ("his-z", "invalid_client"),
    ]
    by_secret(app, "his-a", "wrong")  # the third failure of his-a
    by_secret(app, "his-a", secret)
    assert recorded[-1] == ("his-a", "temporarily_unavailable")

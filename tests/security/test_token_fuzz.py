"""No input makes the token endpoint fail: generated forms and assertions get OAuth errors."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.clients import Registration, register_client
from emr_hub.security.scopes import ScopeSet
from tests.security.conftest import (
    ORGANIZATION,
    ClientKey,
    jwks_of,
    store_organization,
    with_settings,
)

FIELDS = [
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
claims = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.just("his-f")
        for name in ("iss", "sub", "aud", "exp", "nbf", "iat", "jti")
    },
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES384", "RS384", "ES256", "HS256", "none"]) | json_values,
        "typ": st.sampled_from(["JWT", "jwt"]) | json_values,
        "kid": st.just("k1") | json_values,
        "jku": json_values,
        "crit": json_values,
    },
)


def part(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


assertions = st.builds(
    lambda header, body, signature: f"{part(header)}.{part(body)}.{signature}",
    headers,
    claims,
    st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=90),
) | st.text(max_size=60)
forms = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10),
    st.text(max_size=40) | st.sampled_from(["client_credentials", ASSERTION_TYPE]),
    max_size=6,
)


def test_no_form_makes_the_endpoint_fail(hub: Hub) -> None:
    roomy = with_settings(hub, token_failures_per_client=100000, token_failures_per_address=100000)
    _register(roomy)
    with TestClient(create_app(roomy)) as app:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(form=forms, assertion=assertions, with_assertion=st.booleans())
        def check(form: dict[str, str], assertion: str, with_assertion: bool) -> None:
            if with_assertion:
                form = {
                    **form,
                    "grant_type": "client_credentials",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                }
            response = app.post("/auth/token", data=form)
            assert response.status_code in (400, 401), response.text
            assert response.json()["error"] in (
                "invalid_request",
                "invalid_client",
                "invalid_scope",
                "unsupported_grant_type",
            )

        check()


def _register(hub: Hub) -> None:
    """A client with keys under the id the generated assertions may name, so they reach the
    signature check."""
    store_organization(hub)
    with hub.db.transaction() as session:
        register_client(
            session,
            "his-f",
            Registration(
                ORGANIZATION,
                ScopeSet.parse("system/Patient.rs"),
                jwks=jwks_of(ClientKey("ES384", kid="k1")),
            ),
        )

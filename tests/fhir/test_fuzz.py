"""No input gets a 500: arbitrary JSON (and non-JSON) bodies against the write endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fhir.conftest import Api

KEYS = st.sampled_from(
    [
        "resourceType",
        "id",
        "meta",
        "name",
        "identifier",
        "reference",
        "system",
        "value",
        "subject",
        "status",
        "code",
        "birthDate",
        "entry",
        "request",
        "method",
        "url",
        "resource",
        "type",
        "extension",
        "contained",
        "given",
        "valueReference",
        "fullUrl",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "Patient",
            "Observation",
            "Bundle",
            "transaction",
            "batch",
            "POST",
            "PUT",
            "Patient/1",
            "urn:uuid:1",
            "Patient?identifier=a|b",
            "http://fhir.hl7.org.vn/core/sid/cccd",
            "",
            "#x",
        ]
    ),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def resource_like() -> st.SearchStrategy[Any]:
    return st.builds(
        lambda rtype, body: {"resourceType": rtype, **body} if isinstance(body, dict) else body,
        st.sampled_from(["Patient", "Observation", "Bundle", "Nope"]),
        JSON,
    )


FUZZ = settings(
    max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@FUZZ
@given(body=st.one_of(JSON, resource_like()))
def test_no_500_on_create(api: Api, body: Any) -> None:
    response = api.post(
        "/Patient",
        raw=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS) if _dumpable(body) else b"{",
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["resourceType"] == "OperationOutcome"


@FUZZ
@given(
    entries=st.lists(
        st.one_of(
            JSON,
            st.fixed_dictionaries(
                {"request": JSON, "resource": resource_like(), "fullUrl": SCALARS}
            ),
        ),
        max_size=4,
    ),
    kind=st.sampled_from(["transaction", "batch", "collection", None]),
)
def test_no_500_on_bundles(api: Api, entries: list[Any], kind: str | None) -> None:
    bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
    response = api.post("", raw=orjson.dumps(bundle) if _dumpable(bundle) else b"[")
    assert response.status_code < 500, response.text


@FUZZ
@given(raw=st.binary(max_size=64))
def test_no_500_on_bytes(api: Api, raw: bytes) -> None:
    assert api.post("/Observation", raw=raw).status_code < 500
    assert api.put("/Observation/x", raw=raw).status_code < 500


def _dumpable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True

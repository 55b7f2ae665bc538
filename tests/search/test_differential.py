"""Differential test: the SQL search must return what the independent oracle returns.

The oracle's hand-made data set is loaded into the hub over the API (both databases); the
stored resources (with the hub's ``meta.lastUpdated``) feed the oracle. Every query pinned in
``test_oracle.py`` and a stream of hypothesis-generated queries run on both, and the ids must
be equal (in order when ``_sort`` is given).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.conftest import fresh_postgres_database, make_settings
from tests.fhir.conftest import Api, token_for
from tests.search import test_oracle as pinned
from tests.search.oracle import Oracle

BASE = pinned.BASE
CASES = [
    *pinned.TOKEN,
    *pinned.STRING,
    *pinned.REFERENCE,
    *pinned.DATE,
    *pinned.QUANTITY,
    *pinned.URI,
    *pinned.CHAINS,
    *pinned.SORT,
]


class Loaded:
    def __init__(self, api: Api, oracle: Oracle) -> None:
        self.api = api
        self.oracle = oracle

    def sql(self, resource_type: str, params: list[tuple[str, str]]) -> tuple[int, list[str]]:
        response = self.api.get(f"/{resource_type}", params=[*params, ("_count", "1000")])
        if response.status_code != 200:
            return response.status_code, []
        bundle = response.json()
        return 200, [
            e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
        ]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("differential")
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp / 'hub.db'}"])
        context = None
    else:
        context = fresh_postgres_database()
        urls = iter([context.__enter__()])
    try:
        hub = Hub.from_settings(
            make_settings(Path(tmp), next(urls), base_url="http://127.0.0.1:8000"), migrate=True
        )
        with TestClient(create_app(hub)) as client:
            api = Api(client, token_for(hub))
            stored = _load(api, copy.deepcopy(pinned.RESOURCES))
            yield Loaded(api, Oracle(stored, base_url=BASE))
        hub.close()
    finally:
        if context is not None:
            context.__exit__(None, None, None)


def _load(api: Api, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for resource in resources:  # R4 requires RiskAssessment.subject; the oracle's data omits it
        if resource["resourceType"] == "RiskAssessment":
            resource.setdefault("subject", {"reference": "Patient/p1"})
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources
    ]
    response = api.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.text
    return [api.get(f"/{r['resourceType']}/{r['id']}").json() for r in resources]


def _params(query: str) -> list[tuple[str, str]]:
    return [tuple(pair.split("=", 1)) for pair in query.split("&")] if query else []  # type: ignore[misc]


@pytest.mark.parametrize(("resource_type", "query", "expected"), CASES)
def test_pinned_queries_agree(
    loaded: Loaded, resource_type: str, query: str, expected: list[str]
) -> None:
    params = _params(query)
    status, found = loaded.sql(resource_type, params)
    assert status == 200, (query, status)
    wanted = loaded.oracle.search(resource_type, params)
    if any(name == "_sort" for name, _ in params):
        assert found == wanted, query
    else:
        assert sorted(found) == sorted(wanted), query


# ------------------------------------------------------------ generated queries
TOKENS = {
    "Observation": ["code", "status", "category", "combo-code"],
    "Patient": ["gender", "identifier", "active", "_tag"],
    "Encounter": ["status", "class"],
}
STRINGS = {"Patient": ["name", "family", "given", "address-city"], "Observation": []}
DATES = {"Observation": ["date"], "Patient": ["birthdate"], "Encounter": ["date"]}
REFERENCES = {
    "Observation": ["subject", "patient", "encounter"],
    "Encounter": ["subject", "patient"],
}
QUANTITIES = {"Observation": ["value-quantity"]}
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


def _token_pool(resources: list[dict[str, Any]], resource_type: str) -> list[str]:
    """Token query values built from what the data holds, so generated queries hit something:
    each coding and identifier as ``system|code``, ``code`` and ``system|``, and simple codes."""
    out: set[str] = {"unknown-code", "true", "false"}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            code = node.get("code", node.get("value"))
            if isinstance(code, str) and isinstance(node.get("system"), str):
                out.update({f"{node['system']}|{code}", code, f"{node['system']}|"})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for resource in resources:
        if resource["resourceType"] == resource_type:
            walk(resource)
            out.update(str(resource[k]) for k in ("status", "gender") if k in resource)
    return sorted(out)


@st.composite
def generated(draw: st.DrawFn, oracle: Oracle) -> tuple[str, list[tuple[str, str]]]:
    resource_type = draw(st.sampled_from(sorted(TOKENS)))
    params: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["token", "string", "date", "reference", "quantity", "missing"])
        )
        if kind == "token" and TOKENS.get(resource_type):
            code = draw(st.sampled_from(TOKENS[resource_type]))
            pool = _token_pool(oracle.resources, resource_type)
            values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2))
            modifier = draw(st.sampled_from(["", ":not"]))
            params.append((code + modifier, ",".join(values)))
        elif kind == "string" and STRINGS.get(resource_type):
            code = draw(st.sampled_from(STRINGS[resource_type]))
            word = draw(st.sampled_from(["ngu", "Nguyễn", "tran", "thi", "an", "Hà", "bac"]))
            modifier = draw(st.sampled_from(["", ":contains", ":exact"]))
            params.append((code + modifier, word))
        elif kind == "date" and DATES.get(resource_type):
            code = draw(st.sampled_from(DATES[resource_type]))
            value = draw(
                st.sampled_from(
                    [
                        "2019",
                        "2020",
                        "2020-03",
                        "2020-03-04",
                        "2020-03-04T10:00:00+07:00",
                        "2024-01-10",
                        "1985",
                        "2021-12-31T23:00:00Z",
                    ]
                )
            )
            params.append((code, draw(st.sampled_from(PREFIXES)) + value))
        elif kind == "reference" and REFERENCES.get(resource_type):
            code = draw(st.sampled_from(REFERENCES[resource_type]))
            value = draw(
                st.sampled_from(
                    ["p1", "Patient/p1", "Patient/p2", "p3", "Encounter/e1", f"{BASE}/Patient/p1"]
                )
            )
            params.append((code, value))
        elif kind == "quantity" and QUANTITIES.get(resource_type):
            code = draw(st.sampled_from(QUANTITIES[resource_type]))
            number = draw(st.sampled_from(["60", "70.5", "100", "5.4", "7"]))
            unit = draw(st.sampled_from(["", "|http://unitsofmeasure.org|kg", "||kg", "||%"]))
            params.append((code, draw(st.sampled_from(PREFIXES)) + number + unit))
        elif kind == "missing":
            pool = TOKENS[resource_type] + DATES.get(resource_type, [])
            params.append(
                (draw(st.sampled_from(pool)) + ":missing", draw(st.sampled_from(["true", "false"])))
            )
    return resource_type, params


def test_generated_queries_agree(loaded: Loaded) -> None:
    @settings(
        max_examples=int(os.environ.get("DIFF_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(generated(loaded.oracle))
    def check(query: tuple[str, list[tuple[str, str]]]) -> None:
        resource_type, params = query
        try:
            wanted = sorted(loaded.oracle.search(resource_type, params))
        except ValueError:
            status, _ = loaded.sql(resource_type, params)
            assert status == 400, params
            return
        status, found = loaded.sql(resource_type, params)
        assert status == 200, params
        assert sorted(found) == wanted, params

    check()
